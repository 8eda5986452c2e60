"""The evaluation engine and run (src/slakevqa/evaluation/engine.py, evaluate.py): exact candidate scores from
one prompt encoding, ``--closed_answering generate``, answer extraction, batch invariance, resumable predictions
after SIGKILL, and the run files. That every evaluation path gives the same answers: tests/test_evaluation_paths.py."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from slakevqa.config import make_config
from slakevqa.data.slake import find_layout, load_split
from slakevqa.evaluation.config import EvalConfig
from slakevqa.evaluation.engine import Engine
from slakevqa.evaluation.evaluate import evaluate
from slakevqa.evaluation.extract import extract_answer, match_candidate
from slakevqa.inputs.builder import InputBuilder
from slakevqa.inputs.vocab import build_closed_vocab
from slakevqa.reporting.report import write_report


def engine_for(root: Path, model, processor, candidates: str = "auto", closed_answering: str = "score") -> Engine:
    vocab = build_closed_vocab(load_split(root, "train"))
    builder = InputBuilder.create(find_layout(root), vocab, candidates=candidates)
    return Engine(model, processor, builder, closed_answering=closed_answering)


def naive_scores(engine: Engine, item) -> list[float]:
    """One full forward per candidate, no cache, no padding: the reference the fast path must equal."""
    scores = []
    for variants in engine.candidate_ids([item])[0]:
        best = float("-inf")
        for candidate in variants:
            ids = torch.tensor([item.prompt_ids + candidate])
            with torch.no_grad():
                logprobs = engine.model(input_ids=ids, pixel_values=item.pixel_values[None]).logits[0].log_softmax(-1)
            start = len(item.prompt_ids) - 1
            best = max(best, sum(float(logprobs[start + j, t]) for j, t in enumerate(candidate)) / len(candidate))
        scores.append(best)
    return scores


def test_candidate_scores_equal_one_forward_per_candidate(synth_root: Path, tiny_model) -> None:
    engine = engine_for(synth_root, *tiny_model)
    closed = [s for s in load_split(synth_root, "test") if s.is_closed][:8]
    items = [engine.prepare(s) for s in closed]
    fast = engine.score_candidates(items)
    assert {len(i.view.route.candidates) for i in items} >= {2}
    assert any(len(variants) > 1 for i in items for variants in engine.candidate_ids([i])[0])  # "left" and "Left"
    for item, scores in zip(items, fast):
        assert scores == pytest.approx(naive_scores(engine, item), abs=1e-5)


def test_nan_candidate_scores_are_a_named_error_not_an_answer(synth_root: Path, tiny_model) -> None:
    from slakevqa.errors import UserError

    model, processor = tiny_model
    with torch.no_grad():
        model.lm_head.weight.fill_(float("nan"))  # what an fp16 overflow leaves in the logits
    engine = engine_for(synth_root, model, processor)
    closed = [s for s in load_split(synth_root, "test") if s.is_closed][:2]
    with pytest.raises(UserError, match=rf"qid {closed[0].qid}: the model's candidate scores are NaN"):
        engine.answer(closed)


def test_generate_mode_maps_free_text_onto_candidates(synth_root: Path, tiny_model,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """``closed_answering="generate"``: CLOSED questions are generated, not scored, and the extracted free text
    becomes the candidate it names; text naming no candidate is kept as extracted."""
    engine = engine_for(synth_root, *tiny_model, closed_answering="generate")
    closed = [s for s in load_split(synth_root, "test") if s.is_closed][:6]
    candidates = [engine.builder.view(s).route.candidates for s in closed]
    assert candidates == [("CT", "MRI"), ("Yes", "No"), ("Yes", "No"), ("left", "right"), ("Yes", "No"), ("Yes", "No")]
    scripted = {  # qid -> (the model's raw output, the prediction it becomes)
        closed[0].qid: ("Answer: mri\nT2 weighted, axial.", "MRI"),  # answer prefix, first line, another case
        closed[1].qid: ("yes, it does.", "Yes"),  # the candidate's words inside a sentence
        closed[2].qid: ("I cannot tell.", "I cannot tell."),  # no candidate: the extracted text is kept
        closed[3].qid: ("It is on the RIGHT side.\n", "right"),  # the candidate's own spelling
        closed[4].qid: ("Answer:\n\n  Unclear on this slice.  ", "Unclear on this slice."),  # the first non-empty line
    }  # closed[5] keeps the tiny model's own output
    generated: dict[int, str] = {}
    real_generate = engine.generate

    def generate(items, max_new_tokens, *args):
        texts = real_generate(items, max_new_tokens, *args)
        generated.update({item.sample.qid: text for item, text in zip(items, texts)})
        return [scripted.get(item.sample.qid, (text,))[0] for item, text in zip(items, texts)]

    monkeypatch.setattr(engine, "generate", generate)
    monkeypatch.setattr(engine, "score_candidates", lambda *_: pytest.fail("generate mode scored candidates"))
    predictions = engine.answer(closed)
    assert sorted(generated) == sorted(s.qid for s in closed)  # every CLOSED question was generated
    for sample, prediction, route_candidates in zip(closed, predictions, candidates):
        raw, expected = scripted.get(sample.qid, (generated[sample.qid], None))
        if expected is None:  # the model's own free text: mapped the same way
            expected = match_candidate(extract_answer(raw), route_candidates) or extract_answer(raw)
        assert prediction.qid == sample.qid and prediction.raw_output == raw
        assert prediction.prediction == expected, raw
        assert prediction.scores == () and prediction.margin is None
        assert prediction.candidates == route_candidates and prediction.route == engine.builder.view(sample).route.kind
    assert predictions[-1].raw_output != "" or predictions[-1].prediction == ""


def test_forced_candidate_modes(synth_root: Path, tiny_model) -> None:
    sample = next(s for s in load_split(synth_root, "test") if s.is_closed and " or " in s.question)
    yesno = engine_for(synth_root, *tiny_model, candidates="yesno").builder.view(sample).route
    vocab = engine_for(synth_root, *tiny_model, candidates="vocab").builder.view(sample).route
    assert yesno.kind == "yesno" and yesno.candidates == ("Yes", "No")
    assert vocab.kind == "vocab" and len(vocab.candidates) > 2


def test_extraction() -> None:
    assert extract_answer("\n\nAnswer: Left Lung\nmore") == "Left Lung"
    assert extract_answer("answer - CT") == "CT"
    assert extract_answer("   ") == ""
    assert match_candidate("the left lung", ("Lung", "Left Lung")) == "Left Lung"
    assert match_candidate("T2", ("T1", "T2")) == "T2"
    assert match_candidate("both", ("T1", "T2")) is None


def test_run_files_and_invariance_report(synth_root: Path, tmp_path: Path, tiny_model) -> None:
    cfg = make_config(EvalConfig, model_id_or_ckpt="tiny", slake_root=str(synth_root), output_dir=str(tmp_path), limit=20,
                     batch_size=8, check_batch_invariance=20)
    results = evaluate(cfg, *tiny_model)
    lines = (tmp_path / "predictions.jsonl").read_text().splitlines()
    qids = [json.loads(line)["qid"] for line in lines]
    assert qids == sorted(qids) and len(qids) == 20
    assert set(json.loads(lines[0])) >= {"qid", "prompt", "raw_output", "prediction", "route", "candidates",
                                         "scores", "margin", "answer"}
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert on_disk["metrics"]["exact"]["overall"]["n"] == 20
    assert on_disk["provenance"]["prompt_version"] == "short@v1" and on_disk["provenance"]["split_sha256"]
    assert results["batch_invariance"]["differences"] == 0
    assert not (tmp_path / "report.html").exists() and not (tmp_path / "report.md").exists()  # the commands write it
    write_report(tmp_path)
    assert (tmp_path / "report.html").is_file() and (tmp_path / "report.md").is_file()


CHILD = textwrap.dedent("""
    import os, signal, sys
    import slakevqa.evaluation.engine as E
    from slakevqa.config import make_config
    from slakevqa.evaluation.config import EvalConfig
    from slakevqa.evaluation.evaluate import evaluate
    from slakevqa.models.tiny import build_tiny_llava

    root, out, kill_after = sys.argv[1], sys.argv[2], int(sys.argv[3])
    calls = {"n": 0}
    original = E.Engine.answer

    def answer(self, samples):
        calls["n"] += 1
        if calls["n"] == kill_after + 1:
            os.kill(os.getpid(), signal.SIGKILL)
        return original(self, samples)

    E.Engine.answer = answer
    evaluate(make_config(EvalConfig, model_id_or_ckpt="tiny", slake_root=root, output_dir=out, limit=30,
                         batch_size=4, report=False), *build_tiny_llava("bpe", seed=0))
""")


@pytest.mark.slow
def test_sigkill_and_rerun_loses_and_repeats_nothing(synth_root: Path, tmp_path: Path) -> None:
    def child(out: Path, kill_after: int) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", CHILD, str(synth_root), str(out), str(kill_after)],
                              capture_output=True, text=True, timeout=300)

    assert child(tmp_path / "a", 10_000).returncode == 0
    killed = child(tmp_path / "b", 3)
    assert killed.returncode == -signal.SIGKILL
    partial = (tmp_path / "b" / "predictions.jsonl").read_text().splitlines()
    assert len(partial) == 12 and not (tmp_path / "b" / "results.json").exists()
    # a torn last line, as a kill in the middle of a write would leave
    with (tmp_path / "b" / "predictions.jsonl").open("a") as handle:
        handle.write('{"qid": 99999, "question": "half')
    assert child(tmp_path / "b", 10_000).returncode == 0
    # The resumed run's batches hold other questions, and a CPU matmul of another shape may round a
    # candidate's score differently in its last digits: answers must match exactly, floats to 1e-6.
    a, b = ([json.loads(line) for line in (tmp_path / run / "predictions.jsonl").read_text().splitlines()]
            for run in ("a", "b"))
    assert [r["qid"] for r in a] == [r["qid"] for r in b] and len(a) == 30
    assert all(equal_up_to_rounding(x, y) for x, y in zip(a, b))
    metrics = [json.loads((tmp_path / run / "results.json").read_text())["metrics"] for run in ("a", "b")]
    assert equal_up_to_rounding(metrics[0], metrics[1])


def equal_up_to_rounding(a: object, b: object) -> bool:
    """Equal JSON values, floats within 1e-6 (relative or absolute)."""
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(a, (int, float)) and isinstance(b, (int, float)) and a == pytest.approx(b, rel=1e-6, abs=1e-6)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(equal_up_to_rounding(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(equal_up_to_rounding(x, y) for x, y in zip(a, b))
    return a == b


@pytest.mark.real_data
@pytest.mark.slow
def test_tiny_model_on_the_real_test_split(slake_root: Path, tmp_path: Path) -> None:
    from slakevqa.models.tiny import build_tiny_llava

    cfg = make_config(EvalConfig, model_id_or_ckpt="tiny", slake_root=str(slake_root), output_dir=str(tmp_path), batch_size=64,
                     max_new_tokens_open_default=4, max_new_tokens_open_abnormality=4)
    results = evaluate(cfg, *build_tiny_llava("bpe", seed=0))
    assert results["counts"]["total"] == 1061 and results["counts"]["OPEN"] == 645
    assert results["counts"]["routes"] == {"open": 645, "options": 61, "yesno": 355}
    assert results["metrics"]["llava_med"]["CLOSED"]["n"] == 416
    assert len((tmp_path / "predictions.jsonl").read_text().splitlines()) == 1061
    assert not (tmp_path / "report.html").exists() and not (tmp_path / "report.md").exists()  # the commands write it
    write_report(tmp_path)
    assert (tmp_path / "report.html").stat().st_size > 10_000 and (tmp_path / "report.md").is_file()


def test_answer_order_keeps_each_images_questions_together_long_budget_images_first(slake_root) -> None:
    from slakevqa.evaluation.engine import GenerationSettings
    from slakevqa.evaluation.evaluate import answer_order

    settings = GenerationSettings()
    samples = load_split(slake_root, "test", "en")
    order = answer_order(samples, settings)
    assert sorted(s.qid for s in order) == sorted(s.qid for s in samples)
    images = [s.image_key for s in order]
    assert sum(a != b for a, b in zip(images, images[1:])) == len(set(images)) - 1  # each image's questions together
    long = {s.image_key for s in samples if settings.budget(s) > settings.max_new_tokens_open_default}
    holds_long = [s.image_key in long for s in order]
    assert 0 < len(long) < len(set(images)) and holds_long == sorted(holds_long, reverse=True)


def test_answer_order_by_size_puts_each_size_together_within_each_group(slake_root) -> None:
    """Qwen2.5-VL (token count follows the image size): one size after another, long-budget images still first;
    batches of 64 of the English test split hold 23 distinct prefixes, not 27."""
    from slakevqa.evaluation.engine import GenerationSettings
    from slakevqa.evaluation.evaluate import answer_order, image_size

    settings = GenerationSettings()
    samples = load_split(slake_root, "test", "en")
    plain, by_size = answer_order(samples, settings), answer_order(samples, settings, image_size)
    assert sorted(s.qid for s in by_size) == sorted(s.qid for s in samples)
    long = {s.image_key for s in samples if settings.budget(s) > settings.max_new_tokens_open_default}
    assert [s.image_key in long for s in by_size] == [s.image_key in long for s in plain]
    keys = [(s.image_key in long, image_size(s)) for s in by_size]
    assert sum(a != b for a, b in zip(keys, keys[1:])) == len(set(keys)) - 1  # each (group, size) in one run

    def prefixes(order: list) -> int:
        return sum(len({image_size(s) for s in order[i:i + 64]}) for i in range(0, len(order), 64))

    assert (prefixes(plain), prefixes(by_size)) == (27, 23)
