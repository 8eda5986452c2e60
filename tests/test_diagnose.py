"""Diagnose mode: the analyses on hand-made predictions (exact numbers), then one run with the tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from slakevqa.evaluation.diagnose import flipped_builder, pick_mask_examples, write_mask_debug
from slakevqa.evaluation.diagnose_analysis import (
    errors_by_slice,
    generic_answers,
    generic_word,
    histogram,
    kg_ablation,
    routing_errors,
    yes_no_bias,
)
from slakevqa.records import Prediction, VQASample


def closed(qid: int, answer: str, candidates: tuple[str, ...], scores: tuple[float, ...] = (),
           prediction: str = "", route: str = "yesno", question: str = "Is there a lesion?") -> Prediction:
    """A CLOSED row; with scores, the prediction is the best candidate and the margin best minus second."""
    if scores:
        ranked = sorted(scores, reverse=True)
        prediction = candidates[scores.index(ranked[0])]
        margin = ranked[0] - ranked[1]
    else:
        margin = None
    return Prediction(qid=qid, question=question, answer=answer, answer_type="CLOSED", prediction=prediction,
                      route=route, candidates=candidates, scores=scores, margin=margin)


def open_row(qid: int, answer: str, prediction: str, **fields: object) -> Prediction:
    return Prediction(qid=qid, question=fields.pop("question", "What is shown?"), answer=answer,
                      answer_type="OPEN", prediction=prediction, route="open", **fields)


# ---------------------------------------------------------------- yes/no bias

YES_NO_ROWS = [
    closed(1, "Yes", ("Yes", "No"), (-0.10, -0.15)),   # yes, signed +0.05
    closed(2, "Yes", ("Yes", "No"), (-1.00, -0.30)),   # no,  signed -0.70
    closed(3, "No", ("Yes", "No"), (-0.20, -0.50)),    # yes, signed +0.30
    closed(4, "No", ("Yes", "No"), (-2.00, -0.80)),    # no,  signed -1.20
    closed(5, "No", ("Yes", "No"), (-0.40, -0.42)),    # yes, signed +0.02
    closed(6, "Liver", ("Liver", "Heart"), (-1.0, -2.0), route="options"),   # gold not yes/no: left out
    open_row(7, "Yes", "yes"),                                              # OPEN: left out
    closed(8, "no", ("Yes", "No"), prediction="No."),                      # generated: confusion only
    closed(9, "Yes", ("CT", "MRI"), (-1.0, -2.0), route="options"),         # neither yes nor no: "other"
]


def test_yes_no_confusion_rates_and_accuracy() -> None:
    bias = yes_no_bias(YES_NO_ROWS)
    assert bias["questions"] == 7
    assert bias["gold"] == {"yes": 3, "no": 4}
    assert bias["confusion"] == {"yes": {"yes": 1, "no": 1, "other": 1}, "no": {"yes": 2, "no": 2, "other": 0}}
    assert bias["accuracy"]["yes"] == pytest.approx(1 / 3)
    assert bias["accuracy"]["no"] == pytest.approx(0.5)
    assert bias["accuracy"]["overall"] == pytest.approx(3 / 7)
    assert bias["accuracy"]["balanced"] == pytest.approx((1 / 3 + 0.5) / 2)
    assert bias["predicted_yes_rate"] == pytest.approx(3 / 7)
    assert bias["gold_yes_rate"] == pytest.approx(3 / 7)
    assert bias["yes_bias"] == pytest.approx(0.0)


def test_yes_no_margins_histogram_and_tiny_share() -> None:
    margins = yes_no_bias(YES_NO_ROWS, tiny=(0.1, 0.5))["margins"]
    assert margins["scored"] == 5  # the generated row and the options rows have no yes/no scores
    assert margins["signed"]["median"] == pytest.approx(0.02)
    assert margins["signed"]["min"] == pytest.approx(-1.2)
    assert margins["by_gold"]["yes"]["n"] == 2 and margins["by_gold"]["no"]["n"] == 3
    assert margins["tiny"] == {"0.1": {"count": 2, "share": pytest.approx(0.4)},
                               "0.5": {"count": 3, "share": pytest.approx(0.6)}}
    counts = {(b["low"], b["high"]): b["count"] for b in margins["histogram"]}
    assert counts[(-2.0, -1.0)] == 1 and counts[(-1.0, -0.5)] == 1
    assert counts[(0.0, 0.1)] == 2 and counts[(0.1, 0.5)] == 1
    assert sum(counts.values()) == 5


def test_yes_no_confident_errors_most_confident_first() -> None:
    errors = yes_no_bias(YES_NO_ROWS)["confident_errors"]
    assert [e["qid"] for e in errors] == [9, 2, 3, 5]


def test_yes_no_without_any_yes_no_question() -> None:
    bias = yes_no_bias([open_row(1, "Liver", "liver")])
    assert bias["questions"] == 0 and bias["predicted_yes_rate"] is None
    assert bias["margins"]["signed"]["median"] is None and bias["margins"]["tiny"]["0.1"]["share"] is None


def test_histogram_open_ended_bins() -> None:
    bins = histogram([-5.0, -1.0, 0.0, 9.0], (-1.0, 0.0))
    assert [(b["low"], b["high"], b["count"]) for b in bins] == [(None, -1.0, 1), (-1.0, 0.0, 1), (0.0, None, 2)]


# ---------------------------------------------------------------- generic answers

def test_generic_answer_rate_examples_and_gold_exception() -> None:
    rows = [open_row(1, "Liver", "Image", content_type="Organ"),
            open_row(2, "Liver", "image 1", content_type="Organ"),
            open_row(3, "CT", "scan.", content_type="Modality"),
            open_row(4, "X-Ray", "xray", content_type="Modality"),   # right answer, not generic
            open_row(5, "Liver", "liver", content_type="Organ"),
            closed(6, "Yes", ("Yes", "No"), prediction="image")]      # CLOSED: not counted
    generic = generic_answers(rows)
    assert (generic["open_questions"], generic["generic"], generic["generic_but_gold"]) == (5, 3, 1)
    assert generic["rate"] == pytest.approx(0.6)
    assert generic["by_word"] == {"image": 2, "scan": 1}
    assert generic["by_content_type"]["Organ"] == {"open": 3, "generic": 2, "rate": pytest.approx(2 / 3)}
    assert [e["qid"] for e in generic["examples"]] == [1, 2, 3]
    assert generic_word("Picture 12") == "picture" and generic_word("imaging") is None


# ---------------------------------------------------------------- routing errors

ROUTING_ROWS = [
    closed(1, "T2", ("T1 weighted", "T2 weighted"), (-1.0, -2.0), route="options",
           question="Is this a T1 weighted or T2 weighted image?"),
    closed(2, "Liver", ("the liver", "heart"), (-1.0, -2.0), route="options",
           question="Which is bigger, the liver or heart?"),
    closed(3, "Yes", ("Yes", "No"), (-1.0, -2.0), question="Does the picture contain liver?"),
    closed(4, "Liver", ("Lung", "Liver", "Heart"), (-3.0, -1.0, -2.0), route="vocab",
           question="Which organ is the largest?"),
    open_row(5, "Yes", "yes", question="Is this a CT image?"),
    open_row(6, "Liver", "liver", question="Which organ is this?"),
]


def test_gold_not_in_candidates_uses_match_key() -> None:
    missing = routing_errors(ROUTING_ROWS)["gold_not_in_candidates"]
    assert (missing["count"], missing["of"]) == (2, 4)
    assert missing["by_route"] == {"options": 2}
    # "the liver" keeps its article under match_key, but the exact scorer's normaliser drops it
    assert missing["exact_reachable"] == 1
    assert [(i["qid"], i["exact_reachable"]) for i in missing["items"]] == [(1, False), (2, True)]


def test_answer_type_disagreement_and_routes() -> None:
    routing = routing_errors(ROUTING_ROWS)
    disagree = routing["answer_type_disagreement"]
    assert disagree["matrix"] == {"OPEN": {"OPEN": 1, "CLOSED": 1}, "CLOSED": {"OPEN": 1, "CLOSED": 3}}
    assert sorted((i["qid"], i["predicted_answer_type"]) for i in disagree["items"]) == [(4, "OPEN"), (5, "CLOSED")]
    assert routing["routes"] == {"CLOSED": {"options": 2, "yesno": 1, "vocab": 1}, "OPEN": {"open": 2}}
    assert routing["vocab_routed"]["count"] == 1
    assert routing["vocab_routed"]["gold_in_vocab"] == 1 and routing["vocab_routed"]["correct"] == 1


# ---------------------------------------------------------------- errors per slice

def test_errors_by_slice_counts_and_worst_order() -> None:
    rows = [open_row(1, "left lung", "lung", modality="CT"), open_row(2, "liver", "heart", modality="CT"),
            open_row(3, "liver", "liver", modality="CT"), open_row(4, "spleen", "kidney", modality="MRI"),
            closed(5, "Yes", ("Yes", "No"), (-3.0, -1.0))]
    table = errors_by_slice(rows, fields=("modality", "answer_type"), limit=1)
    ct = table["slices"]["modality"]["CT"]
    assert (ct["questions"], ct["errors"]) == (3, 2) and ct["exact"] == pytest.approx(1 / 3)
    assert [w["qid"] for w in ct["worst"]] == [2]  # no word overlap is worse than a partial one
    assert set(ct["worst"][0]) >= {"qid", "question", "answer", "prediction", "prompt", "token_f1", "margin"}
    assert table["slices"]["answer_type"]["CLOSED"]["errors"] == 1
    assert set(table["slices"]["modality"]) == {"CT", "MRI", ""}  # the CLOSED row has no modality


# ---------------------------------------------------------------- KG ablation (pure part)

def test_kg_ablation_paired_counts() -> None:
    with_kg = [open_row(1, "Liver", "Liver"), open_row(2, "Heart", "Heart"), open_row(3, "left lung", "lung")]
    without = [open_row(3, "left lung", "left lung"), open_row(1, "Liver", "lung"), open_row(2, "Heart", "Heart")]
    result = kg_ablation(with_kg, without)
    exact = result["scores"]["exact"]
    assert (exact["fixed"], exact["broken"], exact["unchanged"]) == (1, 1, 1)
    assert exact["with"] == pytest.approx(2 / 3) and exact["without"] == pytest.approx(2 / 3)
    assert exact["delta"] == pytest.approx(0.0)
    recall = result["scores"]["llava_med"]  # unigram recall: "lung" recalls half of "left lung"
    assert recall["with"] == pytest.approx((1 + 1 + 0.5) / 3) and recall["broken"] == 1
    assert result["changed_answers"] == 2
    assert [(e["qid"], e["with_kg"], e["without_kg"], e["exact"]) for e in result["examples"]] == [
        (1, "Liver", "lung", [1.0, 0.0]), (3, "lung", "left lung", [0.0, 1.0])]


# ---------------------------------------------------------------- builder and mask selection

def test_flipped_builder_keeps_run_stats_apart(mini_slake: Path) -> None:
    from slakevqa.data.slake import find_layout
    from slakevqa.inputs.builder import InputBuilder
    from slakevqa.inputs.settings import InputSettings
    from slakevqa.inputs.vocab import ClosedVocab

    builder = InputBuilder.create(find_layout(mini_slake), ClosedVocab.empty(), settings=InputSettings(mask_mode="crop"))
    other = flipped_builder(builder)
    assert (builder.settings.triples_mode, other.settings.triples_mode) == ("real_only", "off")
    assert other.mask_stats is not builder.mask_stats and other.graphs is builder.graphs
    assert other.settings.mask_mode == "crop" and other.style == builder.style
    assert flipped_builder(other).settings.triples_mode == "real_only"


def sample(qid: int, image: int, modality: str) -> VQASample:
    return VQASample(qid=qid, img_id=image, img_name=f"xmlab{image}/source.jpg", question="Q?", answer="A",
                     q_lang="en", location="Abdomen", modality=modality, answer_type="OPEN", base_type="vqa",
                     content_type="Organ", triple=("vhead", "_", "_"), image_path=Path(f"/x/xmlab{image}/s.jpg"))


def test_mask_examples_prefer_new_images_then_fill() -> None:
    samples = [sample(5, 1, "CT"), sample(1, 1, "CT"), sample(2, 2, "CT"), sample(3, 3, "MRI"), sample(4, 3, "MRI")]
    assert [s.qid for s in pick_mask_examples(samples, 2)] == [1, 2, 3, 4]
    assert [s.qid for s in pick_mask_examples(samples, 3)] == [1, 2, 3, 4, 5]


def test_mask_debug_with_masks_off_only_says_so(mini_slake: Path, tmp_path: Path) -> None:
    from slakevqa.data.slake import find_layout
    from slakevqa.inputs.builder import InputBuilder
    from slakevqa.inputs.vocab import ClosedVocab

    builder = InputBuilder.create(find_layout(mini_slake), ClosedVocab.empty())
    summary = write_mask_debug(builder, [sample(1, 1, "CT")], tmp_path / "mask_debug", 4)
    assert summary["mode"] == "none" and summary["written"] == 0 and "mask_mode is none" in summary["note"]
    assert not (tmp_path / "mask_debug").exists()


class FactEcho:
    """Stands in for :class:`Engine`: answers right exactly when the prompt carries KG facts."""

    def __init__(self, model, processor, builder, *, settings=None, closed_answering: str = "score",
                 share_prefix: bool = True, prefix_attention: bool = True, cuda_graphs: bool = True,
                 attention=None, family=None) -> None:
        from slakevqa.evaluation.engine import GenerationSettings
        from slakevqa.kernels.attention import AttentionSettings
        from slakevqa.models.families import family_named

        self.family = family or family_named("llava_med")
        self.model, self.processor, self.builder = model, processor, builder
        self.settings = settings or GenerationSettings()
        self.closed_answering, self.share_prefix = closed_answering, share_prefix
        self.prefix_attention, self.cuda_graphs = prefix_attention, cuda_graphs
        self.attention = attention or AttentionSettings()

    def answer(self, samples: list[VQASample]) -> list[Prediction]:
        views = [self.builder.view(s) for s in samples]
        return [Prediction.from_sample(s, s.answer if v.kg_facts else "unknown",
                                       prompt=self.family.chat.generation_prompt(v.user_text))
                for s, v in zip(samples, views)]


def test_kg_ablation_of_a_run_without_facts_answers_again_with_them(tmp_path: Path, monkeypatch) -> None:
    from slakevqa.data.slake import find_layout, load_split
    from slakevqa.data.synth import write_synthetic_slake
    from slakevqa.evaluation import diagnose
    from slakevqa.inputs.builder import InputBuilder
    from slakevqa.inputs.vocab import ClosedVocab

    root = write_synthetic_slake(tmp_path / "Slake1.0", seed=0, images=20).out
    samples = [s for s in load_split(root, "test", "en") if s.is_kvqa]
    from slakevqa.inputs.settings import InputSettings

    builder = InputBuilder.create(find_layout(root), ClosedVocab.empty(), settings=InputSettings(triples_mode="off"))
    engine = FactEcho(None, None, builder)
    monkeypatch.setattr(diagnose, "Engine", FactEcho)
    kg = diagnose.run_kg_ablation(engine, samples, engine.answer(samples), tmp_path / "again.jsonl",
                                  diagnose.DiagnoseOptions())
    assert (kg["run_triples_mode"], kg["other_triples_mode"]) == ("off", "real_only")
    assert kg["questions"] == len(samples) == 6
    exact = kg["scores"]["exact"]
    assert (exact["with"], exact["without"], exact["fixed"], exact["broken"]) == (1.0, 0.0, 6, 0)
    assert all(e["without_kg"] == "unknown" for e in kg["examples"])


# ---------------------------------------------------------------- end to end with the tiny model

@pytest.fixture(scope="module")
def diagnosed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One ``--mode diagnose`` run on a synthetic SLAKE (27 English test questions, 6 kvqa)."""
    from slakevqa.config import make_config
    from slakevqa.data.synth import write_synthetic_slake
    from slakevqa.evaluation.config import EvalConfig
    from slakevqa.evaluation.evaluate import evaluate
    from slakevqa.models.tiny import build_tiny_llava

    base = tmp_path_factory.mktemp("diagnose")
    root = write_synthetic_slake(base / "Slake1.0", seed=0, images=20).out
    model, processor = build_tiny_llava("bpe")
    cfg = make_config(EvalConfig, model_id_or_ckpt="tiny", slake_root=root, output_dir=base / "run",
                      mode="diagnose", mask_mode="crop", limit=40, report=False)
    evaluate(cfg, model, processor)
    return base / "run"


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_run_writes_every_file_with_its_keys(diagnosed: Path) -> None:
    folder = diagnosed / "diagnose"
    summary = json.loads((folder / "diagnostics.json").read_text(encoding="utf-8"))
    assert {"format", "version", "questions", "options", "files", "prompts", "mask_debug", "errors_by_slice",
            "yes_no", "generic_answers", "kg_ablation", "routing"} <= set(summary)
    assert summary["questions"] == len(read_jsonl(diagnosed / "predictions.jsonl")) == 27
    assert {"confusion", "accuracy", "predicted_yes_rate", "gold_yes_rate", "margins"} <= set(summary["yes_no"])
    assert {"signed", "abs", "histogram", "tiny"} <= set(summary["yes_no"]["margins"])
    assert {"open_questions", "generic", "rate", "examples"} <= set(summary["generic_answers"])
    assert {"routes", "gold_not_in_candidates", "answer_type_disagreement", "vocab_routed"} <= set(summary["routing"])
    errors = json.loads((folder / "errors_by_slice.json").read_text(encoding="utf-8"))
    assert set(errors["slices"]) == {"content_type", "modality", "answer_type", "base_type", "location"}
    assert all(sum(c["questions"] for c in values.values()) == 27 for values in errors["slices"].values())
    markdown = (folder / "diagnostics.md").read_text(encoding="utf-8")
    for heading in ("## Yes/no bias", "## Generic answers", "## KG context ablation", "## Routing",
                    "## Errors by slice", "## Inputs"):
        assert heading in markdown


def test_run_prompts_match_the_predictions(diagnosed: Path) -> None:
    prompts = read_jsonl(diagnosed / "diagnose" / "prompts.jsonl")
    predictions = {p["qid"]: p for p in read_jsonl(diagnosed / "predictions.jsonl")}
    assert [p["qid"] for p in prompts] == sorted(predictions)
    for line in prompts:
        assert line["matches_run"] and line["prompt"] == predictions[line["qid"]]["prompt"]
        assert line["candidates"] == predictions[line["qid"]]["candidates"]
        assert all(fact in line["prompt"] for fact in line["kg_facts"])
    assert sum(bool(p["kg_facts"]) for p in prompts) == 6


def test_run_mask_debug_images(diagnosed: Path) -> None:
    folder = diagnosed / "diagnose"
    masks = json.loads((folder / "diagnostics.json").read_text(encoding="utf-8"))["mask_debug"]
    assert masks["mode"] == "crop" and masks["written"] == len(masks["items"]) > 0
    assert {i["modality"] for i in masks["items"]} == {"CT", "MRI"}  # the synthetic test split has no X-ray
    for item in masks["items"]:
        assert item["files"] == [f"{item['qid']}_original.png", f"{item['qid']}_overlay.png",
                                 f"{item['qid']}_crop.png"]
        assert all((folder / "mask_debug" / name).is_file() for name in item["files"])
        if item["status"] == "applied":
            assert item["conditioned_size"] != item["original_size"]


def test_run_kg_ablation_covers_every_kvqa_question(diagnosed: Path) -> None:
    folder = diagnosed / "diagnose"
    kg = json.loads((folder / "diagnostics.json").read_text(encoding="utf-8"))["kg_ablation"]
    kvqa = {p["qid"] for p in read_jsonl(diagnosed / "predictions.jsonl") if p["base_type"] == "kvqa"}
    assert (kg["kvqa_questions"], kg["with_facts"], kg["questions"]) == (len(kvqa), 6, 6)
    assert (kg["run_triples_mode"], kg["other_triples_mode"]) == ("real_only", "off")
    assert {"exact", "llava_med"} == set(kg["scores"])
    for cell in kg["scores"].values():
        assert cell["fixed"] + cell["broken"] + cell["unchanged"] == 6
    again = read_jsonl(folder / "kg_ablation_predictions.jsonl")
    facts = {p["qid"]: p["kg_facts"] for p in read_jsonl(folder / "prompts.jsonl")}
    assert {p["qid"] for p in again} == kvqa
    for row in again:  # the second pass saw the same question without its facts
        assert row["question"] in row["prompt"]
        assert not any(fact in row["prompt"] for fact in facts[row["qid"]])
