"""Data text in report.md, report.html and the terminal cannot become markup or control sequences, and the
report embeds images only from the dataset the answers were made from (issue 25, point 5).

The hostile text holds an HTML tag, an <img onerror>, a newline followed by a heading, table pipes, a
javascript: link, emphasis, a code fence, terminal escape sequences (colour, window title), a C1 CSI and
a bidi override. Legitimate text, real SLAKE's included, comes through unchanged.
"""

from __future__ import annotations

import dataclasses
import doctest
import json
import logging
import re
import shutil
from pathlib import Path

import pytest
from PIL import Image

import slakevqa.escaping
import slakevqa.reporting.images
from conftest import slake_row, write_mini_slake
from scoring_fixtures import synthetic_rows
from slakevqa.cli import main
from slakevqa.escaping import md_cell, md_code, md_code_block, md_text, one_line, printable
from slakevqa.reporting.images import safe_name
from slakevqa.runs.results import build_results, sha256_file, write_predictions, write_results

HOSTILE = ("<script>alert(1)</script>\n# Heading\r\n| a | b |\n[x](javascript:alert(1)) "
           "<img src=x onerror=alert(1)> \x1b[31mred\x1b[0m \x1b]0;title\x07 \x9b2J \u202eevil\u202c "
           "*b* _i_ ~~s~~ ``` &amp; \\")
# Bytes that must never reach a terminal or a Markdown file raw (report.md keeps only its own newlines).
CONTROL = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


# ------------------------------------------------------------------------------------- the functions

def test_printable_makes_every_control_character_visible() -> None:
    out = printable(HOSTILE)
    assert not CONTROL.search(out) and "\n" not in out
    assert "\\x1b[31mred\\x1b[0m" in out and "\\x9b2J" in out and "\\u202eevil\\u202c" in out
    assert "\\n# Heading\\r\\n" in out
    assert printable("a\nb\rc", keep_newlines=True) == "a\nb\\rc"


@pytest.mark.parametrize("text", [
    "What modality is used to take this image?", "Which organ is abnormal, heart or lung?", "Yes",
    "T2-weighted (MRI)", "llava_med", "model_fingerprint", "xmlab102/source.jpg",
    "/data/Slake1.0/test.json", "hf model from /models/llava-med (bfloat16 on cuda, sdpa)",
    "左肺", "Café", "0.8308", "3.5 cm", "answers from a reference answer file, joined with SLAKE's test split",
])
def test_legitimate_text_is_unchanged(text: str) -> None:
    assert md_text(text) == text and printable(text) == text and md_cell(text) == text
    assert md_code(text) == f"`{text}`"


def test_md_text_neutralises_every_construct() -> None:
    out = md_text(HOSTILE)
    assert "\n" not in out and "\r" not in out and not CONTROL.search(out)
    assert "<" not in out and ">" not in out and "&lt;script&gt;" in out and "&amp;amp;" in out
    for special in "#|[]*`~":
        assert re.search(rf"(?<!\\)(\\\\)*{re.escape(special)}", out) is None, special  # each one escaped
    assert md_text("_i_") == "\\_i\\_" and md_text("a_b") == "a_b"
    assert md_text("- x") == "\\- x" and md_text("12) x") == "12\\) x" and md_text("=== x").startswith("\\=")


def test_cells_code_spans_and_blocks_keep_their_bounds() -> None:
    assert md_cell("a|b\\|c\nd") == "a\\|b\\|c d" and md_cell(md_text("a|b")) == md_text("a|b")
    assert md_code("x ``` y") == "````x ``` y````"
    block = md_code_block("[INST] <image>\n````\nq\x1b[2J [/INST]")
    assert block[0] == "`````text" and block[-1] == "`````" and block[3] == "q\\x1b[2J [/INST]"
    assert one_line("a\r\nb\u2028c") == "a b c"


@pytest.mark.parametrize("module", [slakevqa.escaping, slakevqa.reporting.images])
def test_docstring_examples_hold(module: object) -> None:
    failed, attempted = doctest.testmod(module, verbose=False)
    assert attempted > 0 and failed == 0


@pytest.mark.parametrize("name, safe", [("xmlab1/source.jpg", True), ("../x.png", False), ("a/../../x", False),
                                        ("/etc/passwd", False), ("", False), ("a\0b", False)])
def test_image_names_that_climb_out_are_never_joined(name: str, safe: bool) -> None:
    assert safe_name(name) is safe


# ------------------------------------------------------------------------------------- report.md / .html

def hostile_run(tmp_path: Path, dataset: Path | None = None) -> tuple[Path, list]:
    """A run folder whose answers, questions, slices, prompt and provenance carry HOSTILE."""
    dataset = dataset or tmp_path / "slake"
    rows = synthetic_rows(14, seed=3, image_dir=dataset / "imgs")
    for i in range(0, 14, 2):  # every other row: a miss with hostile text everywhere a report shows data
        rows[i] = dataclasses.replace(
            rows[i], question=f"Q{i} {HOSTILE}", answer=f"{HOSTILE} {i}", prediction=f"no {HOSTILE}",
            modality=HOSTILE, location=f"{HOSTILE} L", content_type=HOSTILE, route=HOSTILE,
            prompt=f"[INST] <image>\n{HOSTILE} [/INST]", img_name=f"xmlab{i % 7}/{HOSTILE}.jpg")
    (dataset / "test.json").write_text("[]", encoding="utf-8")
    run = tmp_path / f"run{HOSTILE[:8]}".replace("/", "_").replace("<", "_")
    write_predictions(run / "predictions.jsonl", rows)
    provenance = {"model": HOSTILE, "note": HOSTILE, "device": HOSTILE, "split_file": str(dataset / "test.json"),
                  "split_sha256": sha256_file(dataset / "test.json")}
    write_results(run / "results.json", build_results(rows, provenance, resamples=10))
    return run, rows


def fenced_and_plain(markdown: str) -> tuple[list[str], list[str]]:
    """(lines inside fenced code blocks, lines outside them)."""
    inside, outside, fence = [], [], None
    for line in markdown.split("\n"):
        if fence is None and re.fullmatch(r"`{3,}\w*", line):
            fence = re.match("`+", line).group()
        elif fence is not None and line == fence:
            fence = None
        else:
            (inside if fence else outside).append(line)
    return inside, outside


def test_hostile_text_stays_text_in_report_md(tmp_path: Path) -> None:
    run, _ = hostile_run(tmp_path)
    assert main(["report", str(run), "--worst", "14"]) == 0
    md = (run / "report.md").read_text(encoding="utf-8")
    assert not CONTROL.search(md) and "\r" not in md
    inside, outside = fenced_and_plain(md)
    # Code spans and fences show their text verbatim (CommonMark), so the prompt keeps "[INST] <image>" as the
    # model saw it and a gold answer shows as typed; only there may a tag's characters stand raw.
    assert any("<script>" in line for line in inside)
    plain = "\n".join(outside)
    outside_code = re.sub(r"(`+)(?!`).*?(?<!`)\1(?!`)", "", plain)
    for raw in ("<script", "<img", "</"):
        assert raw not in outside_code
    assert not re.search(r"(?<!\\)\]\(", outside_code)  # no link: every ']' before '(' is escaped
    headings = [line for line in outside if line.startswith("#")]
    assert all(re.match(r"(# SLAKE evaluation report: |## |### qid \d+: )", h) for h in headings), headings
    shown = int(re.search(r"## Worst errors \((\d+) shown\)", md).group(1))
    assert shown >= 7 and sum(h.startswith("### qid") for h in headings) == shown
    assert sum(h.startswith("# ") for h in headings) == 1
    # every table row has its header's number of cells (an unescaped pipe would add one)
    for table in re.findall(r"(?:^\|.*\|$\n?)+", plain, flags=re.M):
        widths = {len(re.findall(r"(?<!\\)(?:\\\\)*\|", line)) for line in table.strip().split("\n")}
        assert len(widths) == 1, table


def test_report_md_renders_no_markup_from_data(tmp_path: Path) -> None:
    import markdown_it  # the dev extra: CommonMark + GFM tables, as renderers read report.md

    run, _ = hostile_run(tmp_path)
    assert main(["report", str(run), "--worst", "14"]) == 0
    parser = markdown_it.MarkdownIt("commonmark").enable(["table", "strikethrough"])
    text = (run / "report.md").read_text(encoding="utf-8")
    tokens = parser.parse(text)
    kinds = {t.type for t in tokens} | {c.type for t in tokens for c in (t.children or [])}
    assert not kinds & {"html_block", "html_inline", "link_open", "image", "s_open", "em_open", "strong_open"}
    assert [t.tag for t in tokens if t.type == "heading_open"].count("h1") == 1
    shown = int(re.search(r"## Worst errors \((\d+) shown\)", text).group(1))
    assert [t.tag for t in tokens if t.type == "heading_open"].count("h3") == shown
    assert all("<script>" in t.content for t in tokens + [c for t in tokens for c in t.children or []]
               if t.type in ("fence", "code_inline") and "<script" in t.content)
    rendered = parser.render(text)
    assert "<script" not in rendered and "<img" not in rendered and "javascript:alert(1)</a>" not in rendered
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in rendered


def test_report_html_stays_escaped(tmp_path: Path) -> None:
    run, _ = hostile_run(tmp_path)
    assert main(["report", str(run), "--worst", "14"]) == 0
    html = (run / "report.html").read_text(encoding="utf-8")
    assert "<script" not in html and "<img src=x" not in html and not CONTROL.search(html.replace("\n", ""))
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "\\x1b[31mred" in html
    assert html.count("data:image/jpeg;base64,") == html.count('<div class="card">') >= 7  # all inside the dataset


def test_legitimate_report_keeps_its_text(tmp_path: Path) -> None:
    dataset = tmp_path / "slake"
    rows = synthetic_rows(30, seed=2, image_dir=dataset / "imgs")
    run = tmp_path / "run"
    write_predictions(run / "predictions.jsonl", rows)
    write_results(run / "results.json", build_results(rows, {"model": "hf model from /m/llava_med-7b"}, resamples=10))
    assert main(["report", str(run), "--worst", "30"]) == 0
    md = (run / "report.md").read_text(encoding="utf-8")
    assert "| model | hf model from /m/llava_med-7b |" in md and "| llava_med |" in md
    for row in rows:
        if f"### qid {row.qid}:" in md:
            assert f"### qid {row.qid}: {row.question}\n" in md
            assert f"- gold: `{row.answer}`; prediction: `{row.prediction}`;" in md
            assert f"```text\n{row.prompt}\n```" in md


@pytest.mark.real_data
def test_real_slake_text_needs_no_escaping(slake_root: Path) -> None:
    for name in ("train.json", "validate.json", "test.json"):
        for record in json.loads((slake_root / name).read_text(encoding="utf-8")):
            for key in ("question", "answer", "modality", "location", "content_type", "img_name"):
                assert md_text(record[key]) == str(record[key]) == printable(record[key])


# ------------------------------------------------------------------------------------- images

def image_run(tmp_path: Path) -> tuple[Path, Path]:
    """A run of 10 rows whose images and split file lie in tmp/slake, recorded in results.json."""
    dataset, run = tmp_path / "slake", tmp_path / "run"
    rows = synthetic_rows(10, seed=2, accuracy=0.0, image_dir=dataset / "imgs")
    (dataset / "test.json").write_text("[1]", encoding="utf-8")
    write_predictions(run / "predictions.jsonl", rows)
    write_results(run / "results.json", build_results(rows, {"split_file": str(dataset / "test.json"),
                                                             "split_sha256": sha256_file(dataset / "test.json")},
                                                      resamples=10))
    return dataset, run


def edit_provenance(run: Path, **changes: object) -> None:
    results = json.loads((run / "results.json").read_text())
    results["provenance"].update(changes)
    (run / "results.json").write_text(json.dumps(results))


def edit_rows(run: Path, **changes: str) -> None:
    lines = [json.loads(line) for line in (run / "predictions.jsonl").read_text().splitlines()]
    (run / "predictions.jsonl").write_text("".join(json.dumps({**row, **changes}) + "\n" for row in lines))


def report_of(run: Path, caplog: pytest.LogCaptureFixture, *extra: str) -> tuple[str, str]:
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert main(["report", str(run), "--worst", "10", *extra]) == 0
    return (run / "report.html").read_text(encoding="utf-8"), (run / "report.md").read_text(encoding="utf-8")


def assert_no_images(html: str, md: str, caplog: pytest.LogCaptureFixture, why: str) -> None:
    assert "data:image" not in html
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and warnings[0].startswith("No images embedded: ") and why in warnings[0]
    assert f'<p class="note">{warnings[0]}</p>' in html.replace("&#x27;", "'")
    assert md_text(warnings[0]) in md


def test_images_come_from_the_recorded_dataset(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _, run = image_run(tmp_path)
    html, _ = report_of(run, caplog)
    assert html.count("data:image/jpeg;base64,") == 10 and not caplog.records


def test_results_json_naming_another_dataset_embeds_nothing(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    dataset, run = image_run(tmp_path)
    other = tmp_path / "other"
    shutil.copytree(dataset / "imgs", other / "imgs")  # the same images, so only the check can refuse them
    (other / "test.json").write_text("[2]", encoding="utf-8")
    edit_provenance(run, split_file=str(other / "test.json"))
    predictions = run / "predictions.jsonl"  # and the rows point into it
    predictions.write_text(predictions.read_text().replace(str(dataset), str(other)))
    html, md = report_of(run, caplog)
    assert_no_images(html, md, caplog, "no longer has the sha256 results.json records")


@pytest.mark.parametrize("change, why", [
    ({"split_sha256": None}, "records no split_sha256"),
    ({"split_file": "/nonexistent/test.json"}, "cannot be read"),
    ({"split_file": ["not", "a", "path"]}, "split_file is not a path"),
], ids=["no-sha", "missing-file", "not-a-path"])
def test_an_unverifiable_dataset_embeds_nothing(change: dict, why: str, tmp_path: Path,
                                                caplog: pytest.LogCaptureFixture) -> None:
    _, run = image_run(tmp_path)
    edit_provenance(run, **change)
    html, md = report_of(run, caplog)
    assert_no_images(html, md, caplog, why)


def test_a_changed_split_file_embeds_nothing(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    dataset, run = image_run(tmp_path)
    (dataset / "test.json").write_text("[1, 2]", encoding="utf-8")
    html, md = report_of(run, caplog)
    assert_no_images(html, md, caplog, "the dataset changed since the answers were made")


def test_names_that_climb_out_of_the_image_folder_are_refused(tmp_path: Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    dataset, run = image_run(tmp_path)
    private = tmp_path / "private"
    private.mkdir()
    Image.new("RGB", (8, 8), (200, 0, 0)).save(private / "secret.png")
    # inside the dataset root but outside its image folder, through '..' in image_path
    (dataset / "root_only.png").write_bytes((private / "secret.png").read_bytes())
    edit_rows(run, image_path=str(dataset / "imgs" / ".." / "root_only.png"), img_name="../../private/secret.png")
    html, _ = report_of(run, caplog)
    assert "data:image" not in html and html.count("image outside the dataset folder<br>") == 10
    edit_rows(run, image_path="", img_name="../../private/secret.png")  # never joined to the image folder
    html, _ = report_of(run, caplog, "--image_root", str(dataset))
    assert "data:image" not in html and html.count("image not found<br>") == 10


def test_a_symlinked_image_folder_is_a_legitimate_layout(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    dataset, run = image_run(tmp_path)
    disk = tmp_path / "other_disk" / "imgs"
    disk.parent.mkdir()
    shutil.move(dataset / "imgs", disk)
    (dataset / "imgs").symlink_to(disk, target_is_directory=True)
    html, _ = report_of(run, caplog)
    assert html.count("data:image/jpeg;base64,") == 10 and not caplog.records
    # one image file that the dataset's owner linked to another disk is read, as the loader reads it
    elsewhere = tmp_path / "third_disk" / "source.png"
    elsewhere.parent.mkdir()
    shutil.move(disk / "xmlab0" / "source.png", elsewhere)
    (disk / "xmlab0" / "source.png").symlink_to(elsewhere)
    html, _ = report_of(run, caplog)
    assert html.count("data:image/jpeg;base64,") == 10 and "image outside the dataset folder" not in html


def test_image_root_must_hold_the_recorded_split(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                 capsys: pytest.CaptureFixture) -> None:
    dataset, run = image_run(tmp_path)
    moved = tmp_path / "moved"
    shutil.move(dataset, moved)  # the run moved machines: image_path and split_file are stale
    for folder in (moved / "imgs").iterdir():
        Image.open(folder / "source.png").save(folder / "source.jpg")  # img_name says .jpg
    html, _ = report_of(run, caplog, "--image_root", str(moved))
    assert html.count("data:image/jpeg;base64,") == 10 and not caplog.records
    (moved / "test.json").write_text("[3]", encoding="utf-8")  # not the split the answers were made from
    html, md = report_of(run, caplog, "--image_root", str(moved))
    assert_no_images(html, md, caplog, f"--image_root {moved} has no test.json with the sha256")
    capsys.readouterr()
    assert main(["report", str(run), "--image_root", str(tmp_path / "absent")]) == 2
    err = capsys.readouterr().err
    assert err.strip() == f"error: --image_root {tmp_path / 'absent'}: no such folder" and "Traceback" not in err


def test_diagnostics_tables_escape_data_text() -> None:
    from slakevqa.evaluation.diagnose_markdown import table

    row = table(["qid", "question", "gold"], [[7, "<img src=x onerror=alert(1)>\n# Owned | x", "Yes\x1b[2J"]])[-1]
    assert "<img" not in row and "\n" not in row and "\x1b" not in row
    assert row.count(" | ") == 2  # three cells: the pipe inside the question is escaped


def test_an_error_quoting_data_prints_no_terminal_escape(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = write_mini_slake(tmp_path / "Slake1.0")
    rows = [slake_row(21, 3, img_name="xmlab3/\x1b]0;pwned\x07\u202esource.jpg")]
    (root / "test.json").write_text(json.dumps(rows), encoding="utf-8")
    assert main(["stats", "--slake_root", str(root)]) == 2
    err = capsys.readouterr().err
    assert "\x1b" not in err and "\u202e" not in err and "\\x1b]0;pwned\\x07\\u202e" in err, err
