"""Every verb has --help, unknown verbs get a suggestion, and the package runs as a module."""

from __future__ import annotations

import pytest

from slakevqa.cli import COMMANDS, main


@pytest.mark.parametrize("verb", sorted(COMMANDS))
def test_every_verb_has_help(verb: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as done:
        main([verb, "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: slakevqa {verb}") and "--debug" in out


def test_top_level_help_lists_every_verb(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert all(verb in out for verb in COMMANDS)


def test_unknown_verb_suggests_the_nearest(capsys: pytest.CaptureFixture) -> None:
    assert main(["stat"]) == 2
    assert "Did you mean: stats" in capsys.readouterr().err
