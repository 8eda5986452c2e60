"""Diagnose mode: why a run scored what it did, written next to its results.

``slakevqa eval --mode diagnose`` answers and scores the split as usual, then calls
:func:`run_diagnose`, which writes ``<output_dir>/diagnose/``::

    diagnostics.json                 every section below, summarised (schema: run_diagnose)
    diagnostics.md                   the same, short, for reading
    prompts.jsonl                    one line per question: the exact prompt, candidates, KG facts
    errors_by_slice.json             the worst exact misses of every slice value
    kg_ablation_predictions.jsonl    kvqa questions answered again with the KG context flipped
    mask_debug/                      {qid}_original.png, {qid}_overlay.png, {qid}_{mode}.png

The analyses are pure functions of the predictions (:mod:`.diagnose_analysis`);
the one model call here is the KG ablation, which answers every kvqa question
that gets KG facts a second time with the opposite ``triples_mode``.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

from slakevqa.data.images import load_rgb
from slakevqa.data.masks import MaskStats, apply_mask, region_mask
from slakevqa.evaluation.diagnose_analysis import (
    MARGIN_EDGES,
    TINY_MARGINS,
    distribution,
    errors_by_slice,
    generic_answers,
    kg_ablation,
    routing_errors,
    yes_no_bias,
)
from slakevqa.evaluation.diagnose_markdown import render_markdown
from slakevqa.evaluation.engine import Engine
from slakevqa.files import write_json_atomic, write_text_atomic
from slakevqa.inputs.builder import InputBuilder
from slakevqa.inputs.encoding import encode_prompt
from slakevqa.records import Prediction, VQASample
from slakevqa.runs.results import write_predictions

FORMAT = "slakevqa.diagnostics"
# Bump when a section's meaning or keys change.
VERSION = 1
SUMMARY_FILE = "diagnostics.json"
MARKDOWN_FILE = "diagnostics.md"
PROMPTS_FILE = "prompts.jsonl"
ERRORS_FILE = "errors_by_slice.json"
ABLATION_FILE = "kg_ablation_predictions.jsonl"
MASK_DIR = "mask_debug"


@dataclass(frozen=True)
class DiagnoseOptions:
    """How much diagnose mode shows; the defaults suit a full SLAKE split."""

    examples: int = 10                  # examples per section in diagnostics.json
    errors_per_slice: int = 10          # worst misses kept per slice value
    mask_debug_per_modality: int = 4    # questions (on distinct images) per modality
    tiny_margins: tuple[float, ...] = TINY_MARGINS
    margin_edges: tuple[float, ...] = MARGIN_EDGES
    batch_size: int = 16                # for the KG ablation's second pass


def run_diagnose(engine: Engine, samples: list[VQASample], rows: list[Prediction], out_dir: Path,
                 options: DiagnoseOptions = DiagnoseOptions()) -> dict:
    """Write every diagnostic of one run into ``out_dir``; return what ``diagnostics.json`` holds.

    ``rows`` are the run's predictions of ``samples`` (any order). Top-level keys::

        {"format": "slakevqa.diagnostics", "version": 1, "questions": 27, "options": {...},
         "files": {"prompts": "prompts.jsonl", ...},
         "prompts":         {"written", "tokens": {distribution}, "truncated", "with_kg_facts",
                             "differ_from_run", "differ_qids"},
         "mask_debug":      {"mode", "written", "status": {"applied": 3}, "items": [...], "note"?},
         "errors_by_slice": {"scorer": "exact", "slices": {field: {value: {"questions", "errors", "exact"}}}},
         "yes_no":          diagnose_analysis.yes_no_bias,
         "generic_answers": diagnose_analysis.generic_answers,
         "kg_ablation":     {"kvqa_questions", "with_facts", "run_triples_mode", "other_triples_mode",
                             + diagnose_analysis.kg_ablation},
         "routing":         diagnose_analysis.routing_errors}
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = sorted(rows, key=lambda r: r.qid)
    summary: dict = {"format": FORMAT, "version": VERSION, "questions": len(rows),
                     "options": {k: getattr(options, k) for k in options.__dataclass_fields__},
                     "files": {"prompts": PROMPTS_FILE, "errors_by_slice": ERRORS_FILE,
                               "kg_ablation": ABLATION_FILE, "mask_debug": MASK_DIR, "markdown": MARKDOWN_FILE}}
    summary["prompts"] = write_prompts(engine, samples, rows, out_dir / PROMPTS_FILE)
    summary["mask_debug"] = write_mask_debug(engine.builder, samples, out_dir / MASK_DIR,
                                             options.mask_debug_per_modality)
    summary["errors_by_slice"] = write_slice_errors(rows, out_dir / ERRORS_FILE, options.errors_per_slice)
    summary["yes_no"] = yes_no_bias(rows, options.tiny_margins, options.margin_edges, options.examples)
    summary["generic_answers"] = generic_answers(rows, options.examples)
    summary["kg_ablation"] = run_kg_ablation(engine, samples, rows, out_dir / ABLATION_FILE, options)
    summary["routing"] = routing_errors(rows, options.examples)
    write_json_atomic(out_dir / SUMMARY_FILE, summary)
    write_text_atomic(out_dir / MARKDOWN_FILE, render_markdown(summary))
    print(f"diagnostics: {out_dir / MARKDOWN_FILE}")
    return summary


# ---------------------------------------------------------------- prompts

def prompt_record(engine: Engine, sample: VQASample, row: Prediction | None) -> dict:
    """One ``prompts.jsonl`` line, rendered now by the run's builder::

        {"qid": 359, "answer_type": "OPEN", "route": "open", "route_source": "answer_type",
         "route_source_text": "", "candidates": [], "kg_facts": ["Liver function: make bile, ..."],
         "prompt": "[INST] <image>\\n...", "tokens": 61, "truncated": false, "matches_run": true}

    ``tokens`` counts the image tokens too; ``matches_run`` is false when the run's
    prediction was made from another prompt (a resumed run with other settings).
    """
    item = engine.prepare(sample)
    view, prompt = item.view, engine.prompt_text(item)
    ids, cut = encode_prompt(engine.tokenizer, view.user_text, item.image.tokens,
                             engine.builder.settings.max_prompt_len, chat=engine.family.chat)
    return {"qid": sample.qid, "answer_type": sample.answer_type, **view.route.to_json(),
            "kg_facts": list(view.kg_facts), "prompt": prompt, "tokens": len(ids), "truncated": cut,
            "matches_run": row is not None and row.prompt == prompt}


def write_prompts(engine: Engine, samples: list[VQASample], rows: list[Prediction], path: Path) -> dict:
    """Write ``prompts.jsonl`` (every question, qid order) and summarise it."""
    by_qid = {r.qid: r for r in rows}
    records = [prompt_record(engine, s, by_qid.get(s.qid)) for s in sorted(samples, key=lambda s: s.qid)]
    write_text_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    differ = [r["qid"] for r in records if not r["matches_run"]]
    return {"file": path.name, "written": len(records), "tokens": distribution([r["tokens"] for r in records]),
            "truncated": sum(r["truncated"] for r in records),
            "with_kg_facts": sum(bool(r["kg_facts"]) for r in records),
            "differ_from_run": len(differ), "differ_qids": differ[:20]}


# ---------------------------------------------------------------- mask debug images

def pick_mask_examples(samples: list[VQASample], per_modality: int) -> list[VQASample]:
    """Up to ``per_modality`` questions of each modality, in qid order.

    Questions on images not yet shown come first; when a modality has fewer
    images than slots, further questions on its images fill them (a different
    question can select a different region of the same image).
    """
    ordered = sorted(samples, key=lambda s: s.qid)
    picked: list[VQASample] = []
    taken: Counter = Counter()
    seen: set[str] = set()
    for fresh_images_only in (True, False):
        for sample in ordered:
            if taken[sample.modality] >= per_modality or sample in picked:
                continue
            if fresh_images_only and sample.image_key in seen:
                continue
            picked.append(sample)
            seen.add(sample.image_key)
            taken[sample.modality] += 1
    return sorted(picked, key=lambda s: s.qid)


def write_mask_example(builder: InputBuilder, sample: VQASample, folder: Path) -> dict:
    """The three PNGs of one question, and what region was chosen for it.

    Region and conditioning are computed as :func:`~slakevqa.data.masks.condition_image`
    does, without recording into the run's ``mask_stats``.
    """
    from slakevqa.data.masks import overlay  # the same picture `slakevqa masks` draws

    image = load_rgb(sample.image_path)  # the pixels the model sees (16-bit scans scaled, not clipped)
    result = region_mask(sample, builder.layout)
    mode, pad_ratio = builder.settings.mask_mode, builder.settings.mask_pad_ratio
    conditioned = apply_mask(image, result.region, mode, pad_ratio)
    pictures = {"original": image, "overlay": overlay(image, result, pad_ratio), mode: conditioned}
    files = []
    for name, picture in pictures.items():
        files.append(f"{sample.qid}_{name}.png")
        picture.save(folder / files[-1])
    coverage = float(result.region.mean()) if result.region is not None else None
    return {"qid": sample.qid, "modality": sample.modality, "question": sample.question,
            "status": result.status, "source": result.source, "classes": list(result.classes),
            "rule": result.rule, "coverage": coverage, "original_size": list(image.size),
            "conditioned_size": list(conditioned.size), "files": files}


def write_mask_debug(builder: InputBuilder, samples: list[VQASample], folder: Path, per_modality: int) -> dict:
    """``mask_debug/`` for a few questions per modality; only a note when masks are off.

    Output::

        {"mode": "crop", "pad_ratio": 0.1, "dir": "mask_debug", "written": 6,
         "status": {"applied": 5, "empty": 1}, "run_mask_stats": {...MaskStats.as_dict()},
         "items": [{"qid": 352, "modality": "CT", "status": "applied", "classes": ["Liver"],
                    "coverage": 0.04, "original_size": [64, 64], "conditioned_size": [20, 18],
                    "files": ["352_original.png", "352_overlay.png", "352_crop.png"], ...}]}
    """
    if builder.settings.mask_mode == "none":
        return {"mode": "none", "written": 0, "items": [],
                "note": "mask_mode is none: images are not conditioned, so no mask debug images were written"}
    folder.mkdir(parents=True, exist_ok=True)
    items = [write_mask_example(builder, s, folder) for s in pick_mask_examples(samples, per_modality)]
    return {"mode": builder.settings.mask_mode, "pad_ratio": builder.settings.mask_pad_ratio, "dir": folder.name,
            "written": len(items), "status": dict(Counter(i["status"] for i in items)),
            "run_mask_stats": builder.mask_stats.as_dict(), "items": items}


# ---------------------------------------------------------------- errors per slice

def write_slice_errors(rows: list[Prediction], path: Path, limit: int) -> dict:
    """Write ``errors_by_slice.json`` (examples included); return its counts only."""
    table = errors_by_slice(rows, limit=limit)
    write_json_atomic(path, table)
    counts = {name: {value: {k: cell[k] for k in ("questions", "errors", "exact")}
                     for value, cell in values.items()} for name, values in table["slices"].items()}
    return {"file": path.name, "scorer": table["scorer"], "limit": limit, "slices": counts}


# ---------------------------------------------------------------- KG ablation

def flipped_builder(builder: InputBuilder) -> InputBuilder:
    """The run's builder with the KG context flipped: ``off`` if it had facts, else ``real_only``.

    ``dataclasses.replace`` would share the run's :class:`MaskStats` (the second
    pass would count every image twice), so it gets its own; the KG cache
    (``graphs``) is read-only and is shared on purpose.
    """
    mode = "off" if builder.settings.triples_mode != "off" else "real_only"
    return replace(builder, settings=replace(builder.settings, triples_mode=mode), mask_stats=MaskStats())


def answer_in_batches(engine: Engine, samples: list[VQASample], batch_size: int) -> list[Prediction]:
    """Predictions of ``samples`` in input order, ``batch_size`` questions per call."""
    rows: list[Prediction] = []
    for start in range(0, len(samples), batch_size):
        rows.extend(engine.answer(samples[start: start + batch_size]))
    return rows


def run_kg_ablation(engine: Engine, samples: list[VQASample], rows: list[Prediction], path: Path,
                    options: DiagnoseOptions) -> dict:
    """Answer the kvqa questions that get KG facts again with the KG context flipped, and compare.

    Only questions whose prompt the flip changes are answered again: a kvqa
    question without facts would get the very same prompt. The second pass's
    predictions go to ``path``.
    """
    other = flipped_builder(engine.builder)
    with_facts_builder = other if other.settings.triples_mode != "off" else engine.builder
    by_qid = {r.qid: r for r in rows}
    kvqa = [s for s in sorted(samples, key=lambda s: s.qid) if s.is_kvqa and s.qid in by_qid]
    affected = [s for s in kvqa if with_facts_builder.kg_facts(s)]
    head = {"kvqa_questions": len(kvqa), "with_facts": len(affected),
            "run_triples_mode": engine.builder.settings.triples_mode, "other_triples_mode": other.settings.triples_mode}
    if engine.settings.do_sample:
        head["note"] = "answers are sampled (--do_sample): some changes are sampling noise"
    if not affected:
        write_predictions(path, [])  # the file is listed in diagnostics.json, so it always exists
        return {**head, "questions": 0, "note": "no kvqa question gets KG facts (no KG/ folder, or no fact "
                                                "matches): nothing to compare"}
    second = Engine(engine.model, engine.processor, other, settings=engine.settings,
                    closed_answering=engine.closed_answering, share_prefix=engine.share_prefix,
                    prefix_attention=engine.prefix_attention, cuda_graphs=engine.cuda_graphs,
                    attention=engine.attention, family=engine.family)
    again = answer_in_batches(second, affected, options.batch_size)
    write_predictions(path, again)
    first = [by_qid[s.qid] for s in affected]
    with_kg, without_kg = (first, again) if other.settings.triples_mode == "off" else (again, first)
    return {**head, "file": path.name, **kg_ablation(with_kg, without_kg, options.examples)}
