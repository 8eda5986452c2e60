"""One writer per output folder, nothing overwritten that is not ours, provenance of what was used.

Another process holds a folder's lock (a child that takes it the way every verb does, then waits);
each verb pointed at that folder is refused in one line naming the holder, before anything is
loaded or written. Training refuses an output that is, holds or lies inside its model, ``--overwrite``
or not; an eval into a training folder is refused; an evaluation whose model folder changes while it
loads is refused; training stops on non-finite numbers and publishes nothing.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import write_mini_slake
from slakevqa.cli import main
from slakevqa.locks import current_holder, lock_path, writing
from test_bad_inputs_runs import PREDICTION, snapshot

HOLDER = textwrap.dedent("""
    import os, sys, time
    if os.environ.get("READ_ONLY_FOR_TEST"):  # the same view of permissions as the test's own process
        real_access = os.access
        os.access = lambda path, mode: os.fspath(path) != os.environ["READ_ONLY_FOR_TEST"] and real_access(path, mode)
    from slakevqa.locks import writing
    with writing(sys.argv[1], "train"):
        print("held", flush=True)
        time.sleep(120)
""")


def hold(folder: Path) -> subprocess.Popen:
    """A second process holding ``folder``'s lock until killed."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    child = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], stdout=subprocess.PIPE, text=True, env=env)
    assert child.stdout.readline().strip() == "held"
    return child


def stop(child: subprocess.Popen) -> None:
    child.kill()
    child.wait(timeout=30)


# every verb that writes a folder, pointed at the held one (OUT)
VERBS = {
    "eval": lambda w, m: ["eval", "--model_id_or_ckpt", str(m), "--slake_root", str(w / "Slake1.0"),
                          "--output_dir", str(w / "out"), "--device", "cpu"],
    "train": lambda w, m: ["train", "--model_id", str(m), "--slake_root", str(w / "Slake1.0"),
                           "--output_dir", str(w / "out"), "--max_steps", "1"],
    "merge": lambda w, m: ["merge", str(w / "adapter"), str(w / "out")],
    "init-tiny": lambda w, m: ["init-tiny", str(w / "out"), "--overwrite"],
    "synth": lambda w, m: ["synth", "--out", str(w / "out"), "--images", "3"],
    "report": lambda w, m: ["report", str(w / "out")],
    "demo": lambda w, m: ["demo", "--out", str(w / "out")],
    "convert-checkpoint": lambda w, m: ["convert-checkpoint", str(m), str(w / "out"), "--overwrite"],
    "score": lambda w, m: ["score", str(w / "answers" / "predictions.jsonl"), "--output_dir", str(w / "out")],
    "convert-sft": lambda w, m: ["convert-sft", "--data_root", str(w / "Slake1.0"), "--output_dir", str(w / "out")],
    "masks": lambda w, m: ["masks", "--qid", "20", "--slake_root", str(w / "Slake1.0"), "--out", str(w / "out")],
}


@pytest.mark.parametrize("verb", list(VERBS))
def test_a_second_writer_is_refused_naming_the_holder(verb: str, tmp_path: Path, saved_tiny: Path,
                                                      capsys: pytest.CaptureFixture) -> None:
    write_mini_slake(tmp_path / "Slake1.0")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "predictions.jsonl").write_text("{}\n")  # something of the first writer's
    (tmp_path / "answers").mkdir()
    (tmp_path / "answers" / "predictions.jsonl").write_text(json.dumps(PREDICTION) + "\n")
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(saved_tiny)}))
    child = hold(tmp_path / "out")
    try:
        before = snapshot(tmp_path)
        code = main(VERBS[verb](tmp_path, saved_tiny))
        err = capsys.readouterr().err
        assert code == 2, err
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
        assert f"is being written by `slakevqa train` (pid {child.pid} on {socket.gethostname()}" in err
        assert snapshot(tmp_path) == before  # the lock file is the holder's, unchanged too
    finally:
        stop(child)


def test_a_dead_holders_lock_is_free_and_a_finished_writer_leaves_none(tmp_path: Path) -> None:
    child = hold(tmp_path / "out")
    assert current_holder(tmp_path / "out")["pid"] == child.pid
    child.send_signal(signal.SIGKILL)  # a kill -9 leaves the file; the kernel dropped the lock with the process
    child.wait(timeout=30)
    assert lock_path(tmp_path / "out").exists() and current_holder(tmp_path / "out") is None
    assert main(["synth", "--out", str(tmp_path / "out"), "--images", "3"]) == 0
    assert not lock_path(tmp_path / "out").exists()


def test_the_same_process_may_take_its_own_lock_again(tmp_path: Path) -> None:
    with writing(tmp_path / "run", "train"):
        with writing(tmp_path / "run" / ".." / "run", "eval"):  # another spelling, the same folder
            assert lock_path(tmp_path / "run").exists()
        assert lock_path(tmp_path / "run").exists()
    assert not lock_path(tmp_path / "run").exists()


def test_a_long_valid_folder_name_gets_a_lock_name_that_fits(tmp_path: Path) -> None:
    folder = tmp_path / ("é" * 120)  # 240 bytes: valid, but ".<name>.slakevqa-lock" would be 255 + 15
    with writing(folder, "eval"):
        (lock,) = [p for p in tmp_path.iterdir() if p.name.endswith(".slakevqa-lock")]
        assert len(os.fsencode(lock.name)) <= 255 and lock == lock_path(folder)


OVER_THE_MODEL = {"is": ".", "is inside": "run", "contains": ".."}


@pytest.mark.parametrize("relation", list(OVER_THE_MODEL))
def test_train_never_writes_over_its_model_overwrite_or_not(relation: str, tmp_path: Path, saved_tiny: Path,
                                                            capsys: pytest.CaptureFixture) -> None:
    import shutil

    write_mini_slake(tmp_path / "Slake1.0")
    model = tmp_path / "models" / "tiny"
    shutil.copytree(saved_tiny, model)
    before = snapshot(tmp_path)
    out = (model / OVER_THE_MODEL[relation]).resolve() if relation != "is inside" else model / "run"
    code = main(["train", "--model_id", str(model), "--slake_root", str(tmp_path / "Slake1.0"),
                 "--output_dir", str(out), "--overwrite", "--max_steps", "1"])
    err = capsys.readouterr().err
    assert code == 2 and f"--output_dir {out} {relation} --model_id {model}" in err, err
    assert snapshot(tmp_path) == before


def test_eval_into_a_training_folder_is_refused_overwrite_or_not(tmp_path: Path, saved_tiny: Path,
                                                                 capsys: pytest.CaptureFixture) -> None:
    from slakevqa.runs.fingerprint import FINGERPRINT_NAME, make_fingerprint

    write_mini_slake(tmp_path / "Slake1.0")
    run = tmp_path / "lora"
    run.mkdir()
    (run / FINGERPRINT_NAME).write_text(json.dumps(make_fingerprint("train", {"model": "m"})))
    (run / "checkpoint-5").mkdir()
    (run / "checkpoint-5" / "trainer_state.json").write_text("{}")
    before = snapshot(tmp_path)
    code = main(["eval", "--model_id_or_ckpt", str(saved_tiny), "--slake_root", str(tmp_path / "Slake1.0"),
                 "--output_dir", str(run), "--overwrite", "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and "this folder holds a train run; a eval run writes into a folder of its own" in err, err
    assert snapshot(tmp_path) == before


def test_evaluating_a_model_folder_another_process_writes_is_refused(tmp_path: Path, saved_tiny: Path,
                                                                     capsys: pytest.CaptureFixture) -> None:
    import shutil

    write_mini_slake(tmp_path / "Slake1.0")
    model = tmp_path / "lora"
    shutil.copytree(saved_tiny, model)
    child = hold(model)
    try:
        code = main(["eval", "--model_id_or_ckpt", str(model), "--slake_root", str(tmp_path / "Slake1.0"),
                     "--output_dir", str(tmp_path / "eval"), "--device", "cpu"])
    finally:
        stop(child)
    err = capsys.readouterr().err
    assert code == 2 and f"--model_id_or_ckpt {model} is being written by `slakevqa train` (pid {child.pid}" in err
    assert not (tmp_path / "eval" / "predictions.jsonl").exists()


def test_weights_that_change_while_loading_are_refused(tmp_path: Path, saved_tiny: Path,
                                                       monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture) -> None:
    import shutil

    import slakevqa.evaluation.evaluate as E

    write_mini_slake(tmp_path / "Slake1.0")
    model = tmp_path / "lora"
    shutil.copytree(saved_tiny, model)
    load = E.load_for_eval

    def load_then_change(cfg, rank):  # a training publishing new weights while this one loads
        loaded = load(cfg, rank)
        config = json.loads((model / "config.json").read_text())
        (model / "config.json").write_text(json.dumps({**config, "published_later": True}))
        return loaded

    monkeypatch.setattr(E, "load_for_eval", load_then_change)
    code = main(["eval", "--model_id_or_ckpt", str(model), "--slake_root", str(tmp_path / "Slake1.0"),
                 "--output_dir", str(tmp_path / "eval"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and "its weights changed while they were being loaded" in err, err
    assert not (tmp_path / "eval" / "results.json").exists()


NONFINITE = {  # what goes wrong -> where training stops
    "weights": "step 1: trainable weights are not finite",  # NaN weights after step 1: caught before its checkpoint
    "loss": "step 2: the loss is nan",  # lr 1e30: finite but huge weights after step 1, a NaN loss at step 2
}


@pytest.mark.parametrize("where", list(NONFINITE))
def test_training_stops_on_nonfinite_numbers_and_publishes_nothing(where: str, tmp_path: Path, synth_root: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from torch.optim.optimizer import register_optimizer_step_post_hook

    from slakevqa.config import make_config
    from slakevqa.errors import UserError
    from slakevqa.models.tiny import build_tiny_llava
    from slakevqa.training.config import TrainConfig
    from slakevqa.training.train import train

    def poison(optimizer, args, kwargs) -> None:  # after every optimiser step: one NaN in the first trainable weight
        optimizer.param_groups[0]["params"][0].data.view(-1)[0] = float("nan")

    if where == "weights":
        handle = register_optimizer_step_post_hook(poison)
    model, processor = build_tiny_llava("bpe", seed=0)
    cfg = make_config(TrainConfig, model_id="tiny", slake_root=synth_root, output_dir=tmp_path / "run",
                      max_steps=3, save_steps=1 if where == "weights" else 50, batch_size=4,
                      lr=2e-4 if where == "weights" else 1e30, max_grad_norm=0.0, warmup_ratio=0.0,
                      final_eval=False, tb=False)
    try:
        with pytest.raises(UserError, match=NONFINITE[where]):
            train(cfg, model, processor)
    finally:
        if where == "weights":
            handle.remove()
    assert not list((tmp_path / "run").glob("checkpoint-*"))
    assert not list((tmp_path / "run").glob("adapter_model*")) and not list((tmp_path / "run").glob("*.safetensors"))


def test_overwrite_removes_only_what_a_run_wrote(tmp_path: Path, synth_root: Path) -> None:
    from slakevqa.config import make_config
    from slakevqa.models.tiny import build_tiny_llava
    from slakevqa.runs.fingerprint import FINGERPRINT_NAME, make_fingerprint
    from slakevqa.training.config import TrainConfig
    from slakevqa.training.train import train

    run = tmp_path / "run"
    for name in ("checkpoint-3", ".checkpoint-4.tmp", "checkpoint-best", "notes"):
        (run / name).mkdir(parents=True)
        (run / name / "trainer_state.json").write_text("{}")
    (run / FINGERPRINT_NAME).write_text(json.dumps(make_fingerprint("train", {"model": "another"})))
    cfg = make_config(TrainConfig, model_id="tiny", slake_root=synth_root, output_dir=run, max_steps=1,
                      batch_size=2, final_eval=False, tb=False, overwrite=True)
    train(cfg, *build_tiny_llava("bpe", seed=0))
    kept = sorted(p.name for p in run.iterdir() if p.is_dir())
    assert kept == ["checkpoint-1", "checkpoint-best", "notes"]


def test_score_never_writes_into_another_runs_folder(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from slakevqa.runs.fingerprint import FINGERPRINT_NAME, make_fingerprint

    run = tmp_path / "eval"
    run.mkdir()
    (run / FINGERPRINT_NAME).write_text(json.dumps(make_fingerprint("eval", {"model": "m"})))
    (run / "predictions.jsonl").write_text(json.dumps({**PREDICTION, "prediction": "No"}) + "\n")
    (tmp_path / "answers").mkdir()
    (tmp_path / "answers" / "predictions.jsonl").write_text(json.dumps(PREDICTION) + "\n")
    before = snapshot(tmp_path)
    for flags in (["--output_dir", str(run)], ["--out", str(run / "results.json")]):
        assert main(["score", str(tmp_path / "answers" / "predictions.jsonl"), *flags]) == 2
        assert "is another eval or train run's folder" in capsys.readouterr().err
    assert snapshot(tmp_path) == before
    assert main(["score", str(run / "predictions.jsonl")]) == 0  # a run's own folder is rescored in place


def test_the_sigterm_line_of_train_names_what_a_rerun_resumes_from(tmp_path: Path) -> None:
    from slakevqa.commands.train import kept_checkpoint

    assert "no checkpoint was written yet" in kept_checkpoint(str(tmp_path))
    for step in (4, 8):
        (tmp_path / f"checkpoint-{step}").mkdir()
        (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
    assert kept_checkpoint(str(tmp_path)) == f"the last checkpoint, {tmp_path / 'checkpoint-8'}, is kept"


def test_the_processes_of_one_launch_read_what_its_main_process_holds(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29511")
    child = hold(tmp_path / "run")  # rank 0 of this launch (it inherits the launch's variables)
    try:
        assert current_holder(tmp_path / "run") is None  # rank 1's final evaluation reads the folder
        monkeypatch.setenv("MASTER_PORT", "29512")  # another launch
        assert current_holder(tmp_path / "run")["pid"] == child.pid
    finally:
        stop(child)


def test_two_eval_processes_into_one_folder_the_second_is_refused(saved_tiny: Path, synth_root: Path,
                                                                  tmp_path: Path) -> None:
    """Two real `slakevqa eval` processes, as two jobs of a cluster would start them."""
    import time

    out = tmp_path / "eval"
    argv = [sys.executable, "-m", "slakevqa", "eval", "--model_id_or_ckpt", str(saved_tiny), "--slake_root",
            str(synth_root), "--output_dir", str(out), "--device", "cpu", "--batch_size", "1", "--no-report"]
    with (tmp_path / "first.err").open("w") as err:
        first = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err)
        try:
            deadline = time.monotonic() + 120
            while not (out / "predictions.jsonl").is_file() and first.poll() is None:  # it is answering
                assert time.monotonic() < deadline
                time.sleep(0.05)
            second = subprocess.run([*argv, "--prompt_style", "plain"], capture_output=True, text=True, timeout=120)
        finally:
            first.send_signal(signal.SIGTERM)
            first.wait(timeout=60)
    assert second.returncode == 2, second.stderr[-2000:]
    line = second.stderr.strip().splitlines()[-1]
    assert line.startswith(f"error: {out} is being written by `slakevqa eval` (pid {first.pid} on "
                           f"{socket.gethostname()}, since "), line
    assert json.loads((out / "run_fingerprint.json").read_text())["values"]["prompt_style"] != "plain"


def test_an_output_whose_parent_we_cannot_write_keeps_its_lock_inside(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                      capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "home" / "me").mkdir(parents=True)  # ours, inside a folder we may only read (/home on a cluster)
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != tmp_path / "home" and real_access(path, mode))
    monkeypatch.setenv("READ_ONLY_FOR_TEST", str(tmp_path / "home"))
    out = tmp_path / "home" / "me"
    assert lock_path(out) == out / ".slakevqa-lock"
    child = hold(out)  # another process finds it by the same rule
    try:
        assert main(["synth", "--out", str(out)]) == 2
        assert f"is being written by `slakevqa train` (pid {child.pid}" in capsys.readouterr().err
    finally:
        stop(child)
    assert main(["synth", "--out", str(out), "--images", "3"]) == 0
    assert not (out / ".slakevqa-lock").exists() and list((tmp_path / "home").iterdir()) == [out]
