"""`evaluate(cfg)`: answer a SLAKE split with a model and score it, top to bottom.

    data -> vocabulary -> prompts/images -> model -> resume -> batches (appended, flushed)
    -> merge shards in qid order -> results.json (all scorers, intervals, provenance)

The report is drawn from those files afterwards (``slakevqa.reporting.report.write_report``; the
``eval`` and ``train`` commands call it when ``report`` is on): reporting sits above evaluation.

Under ``accelerate launch`` process ``r`` of ``w`` answers the questions of its share of
the images (:func:`shard_by_image`) into ``predictions.rank{r}.jsonl``; the main process
merges them in qid order, so the files equal a single-process run's. ``results.json``'s
``timing`` says how fast the answering went (questions per second, all processes).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Callable

from tqdm import tqdm

from slakevqa.config import config_to_dict
from slakevqa.data.slake import find_layout, load_split, require_questions
from slakevqa.distributed import barrier, init_process_group, largest_first
from slakevqa.errors import UserError
from slakevqa.evaluation.config import EvalConfig
from slakevqa.evaluation.engine import Engine, GenerationSettings
from slakevqa.evaluation.store import PredictionWriter, recover_predictions
from slakevqa.files import make_output_dir, write_json_atomic
from slakevqa.inputs.builder import InputBuilder
from slakevqa.inputs.image_prefetch import worker_count
from slakevqa.inputs.vocab import ClosedVocab, load_or_build_vocab
from slakevqa.locks import refuse_if_being_written
from slakevqa.models.image_features import kept_pixel_dtype
from slakevqa.models.model_files import check_not_half_saved
from slakevqa.records import Prediction, VQASample
from slakevqa.runs.results import (
    PREDICTIONS_NAME,
    RESULTS_NAME,
    build_results,
    make_provenance,
    write_predictions,
    write_results,
)

log = logging.getLogger(__name__)


def evaluate(cfg: EvalConfig, model=None, processor=None, replace_changed: bool = False) -> dict:
    """Run the evaluation ``cfg`` describes; returns the results dict (also in ``results.json``).

    A folder that already holds answers is resumed only when its run fingerprint (model weights,
    split file, answer-changing settings) matches; ``cfg.overwrite`` starts afresh, and
    ``replace_changed`` (training's final evaluation) starts afresh only when the fingerprint differs.
    """
    import torch

    check_not_half_saved(cfg.model_id_or_ckpt)  # before the folder is claimed (load_model checks again)
    refuse_if_being_written(cfg.model_id_or_ckpt, "--model_id_or_ckpt")  # a training extending it, say
    rank, world = init_process_group()  # under a launcher the shards need a process group for the barrier
    torch.manual_seed(cfg.seed)

    root = cfg.data.root()
    layout = find_layout(root)
    samples = load_split(root, cfg.split, cfg.data.language, cfg.data.missing_images)
    samples = require_questions(samples[: cfg.limit] if cfg.limit > 0 else samples, root, cfg.split, cfg.data.language)
    out = make_output_dir(cfg.output_dir, "--output_dir")  # after the data: a refusal there leaves no folder
    vocab = resolve_vocab(cfg, root)
    builder = InputBuilder.create(layout, vocab, settings=cfg.inputs, route_source=cfg.route,
                                  candidates=cfg.closed_candidates)
    claimed = claim_eval_folder(cfg, out, layout.split_file(cfg.split), builder.style.tag, vocab, rank, world,
                                replace_changed)  # before the model loads: a refusal costs nothing
    loaded = None
    if model is None:
        model, processor, loaded = load_for_eval(cfg, rank)
    used = model_provenance(cfg, loaded)  # fingerprinted now, not at the end: the weights that answer
    refuse_changed_weights(cfg, claimed)
    model.eval()
    builder.pixel_dtype = kept_pixel_dtype(model)  # bf16 pixels for a bf16 tower: half the memory, the same values
    settings = GenerationSettings(cfg.max_new_tokens_open_default, cfg.max_new_tokens_open_abnormality,
                                  cfg.temperature, cfg.do_sample)
    engine = Engine(model, processor, builder, settings=settings, closed_answering=cfg.closed_answering,
                    share_prefix=cfg.share_prefix, prefix_attention=cfg.prefix_attention,
                    # bitsandbytes' quantised matmuls were never captured in a CUDA graph on our GPUs: launched eagerly
                    cuda_graphs=cfg.cuda_graphs and not (cfg.load_in_4bit or cfg.load_in_8bit),
                    attention=cfg.attention)
    used["model_family"] = engine.family.name
    used["eval_backend"] = "fast" if engine.fast is not None else "plain"

    # ---- answer what is missing, appending as we go
    shard_file = out / (PREDICTIONS_NAME if world == 1 else f"predictions.rank{rank}.jsonl")
    done = {p.qid for p in recover_predictions(out / PREDICTIONS_NAME)}
    done |= {p.qid for p in recover_predictions(shard_file)} if world > 1 else set()
    by_size = image_size if engine.family.images.tokens_follow_size else None  # Qwen2.5-VL: one prefix per size
    pending = answer_order([s for s in shard_by_image(samples, rank, world) if s.qid not in done], settings, by_size)
    if done:
        log.info("resuming: %d questions already answered, %d to go", len(done), len(pending))
    began, to_answer = time.perf_counter(), len(samples) - len(done)  # every rank's share, for the timing
    answer_all(engine, pending, cfg.batch_size, shard_file, rank, worker_count(cfg.prefetch_workers, engine.device.type))
    if world > 1:
        barrier()
        if rank != 0:
            return {}
        merge_shards(out, world)
    timing = answer_timing(to_answer, time.perf_counter() - began, world)

    # ---- score, record provenance
    rows = finalise_predictions(out / PREDICTIONS_NAME, samples)
    provenance = make_provenance(config=config_to_dict(cfg), prompt_version=builder.style.tag,
                                 split_file=layout.split_file(cfg.split), route_source=cfg.route,
                                 batch_size=cfg.batch_size, device=device_name(model))
    provenance.update({"world_size": world, **used,
                       "closed_candidates": cfg.closed_candidates, "closed_answering": cfg.closed_answering,
                       "closed_vocab": {"version": vocab.version, "answers": len(vocab.answers),
                                        "source_sha256": vocab.source_sha256},
                       "mask_stats": builder.mask_stats.as_dict()})
    results = build_results(rows, provenance, predictions_file=out / PREDICTIONS_NAME)
    results["timing"] = timing
    if cfg.check_batch_invariance > 0:
        results["batch_invariance"] = check_batch_invariance(engine, samples[: cfg.check_batch_invariance],
                                                             {r.qid: r for r in rows}, out)
    write_results(out / RESULTS_NAME, results)
    if cfg.mode == "diagnose":
        from slakevqa.evaluation.diagnose import run_diagnose

        run_diagnose(engine, samples, rows, out / "diagnose")
    return results


def claim_eval_folder(cfg: EvalConfig, out: Path, split_file: Path, prompt_version: str, vocab: ClosedVocab,
                      rank: int, world: int, replace_changed: bool) -> dict:
    """Record this run's fingerprint in ``out``, or refuse a folder that holds another run's answers.

    Returns the fingerprint's values (the model's weights fingerprint among them).
    """
    from slakevqa.evaluation.config import RESULT_FIELDS
    from slakevqa.models.loading import pick_device, pick_dtype
    from slakevqa.runs.fingerprint import claim_folder, config_values, make_fingerprint, model_values, vocab_sha256
    from slakevqa.runs.results import sha256_file

    values = {**model_values(cfg.model_id_or_ckpt, cfg.model_base), "split_file": split_file.name,
              "split_sha256": sha256_file(split_file), "prompt_version": prompt_version,
              "closed_vocab_sha256": vocab_sha256(vocab.answers), **config_values(cfg, RESULT_FIELDS)}
    # auto is bf16 on a GPU and fp32 on a CPU: a run resumed on the other kind would mix the two
    values["precision"] = pick_dtype(cfg.precision, pick_device(cfg.device))
    claim_folder(out, make_fingerprint("eval", values), lambda: has_eval_results(out), lambda: clear_eval_outputs(out),
                 overwrite=cfg.overwrite, replace_changed=replace_changed, write=rank == 0)
    if world > 1:
        barrier()  # the main process may have cleared the folder: nobody reads it before that is done
    return values


def refuse_changed_weights(cfg: EvalConfig, claimed: dict) -> None:
    """A UserError when the model folder's weights changed between the claim and the end of loading.

    The answers would come from weights that neither fingerprint describes (a training publishing into
    the folder it is read from); both fingerprints are milliseconds (models/fingerprint.py).
    """
    from slakevqa.runs.fingerprint import model_values

    now = model_values(cfg.model_id_or_ckpt, cfg.model_base)["model_weights"]
    if claimed.get("model_weights") and now != claimed["model_weights"]:
        raise UserError(f"{cfg.model_id_or_ckpt}: its weights changed while they were being loaded (a training "
                        "writing into it?); evaluate it once nothing writes it")


# What an evaluation writes into its folder; --overwrite deletes these and nothing else.
EVAL_OUTPUTS = (PREDICTIONS_NAME, RESULTS_NAME, "report.md", "report.html", "batch_invariance.json")


def has_eval_results(out: Path) -> bool:
    files = [out / PREDICTIONS_NAME, *out.glob("predictions.rank*.jsonl")]
    return any(f.is_file() and f.stat().st_size > 0 for f in files) or (out / RESULTS_NAME).is_file()


def clear_eval_outputs(out: Path) -> None:
    import shutil

    for name in EVAL_OUTPUTS:
        (out / name).unlink(missing_ok=True)
    for shard in out.glob("predictions.rank*.jsonl"):
        shard.unlink()
    shutil.rmtree(out / "diagnose", ignore_errors=True)


def answer_order(samples: list[VQASample], settings: GenerationSettings,
                 size_of: Callable[[VQASample], tuple] | None = None) -> list[VQASample]:
    """The order questions are answered in (the file is rewritten in qid order at the end).

    Image by image (SLAKE asks ~11 questions per image), so a batch's packed forward holds each
    image's prefix once; the images that hold a long-budget question (the 48-token abnormality
    questions, on 41 of the English test split's 96 images) first, so the few rows that decode
    48 steps fall into the first batches only. Ordering by budget first instead kept 48-step
    decodes out of most batches, but brought those 41 images back for a second prefill: on the
    7B shape at batch 256, 115 q/s against 93 (benchmarks/RESULTS.md, issue 15). ``size_of``: within each
    of the two groups, images of one size together (a family whose token count follows the size: the
    fast backend runs one prefill and one decoding call per distinct prefix in a batch).
    """
    long = {s.image_key for s in samples if settings.budget(s) > settings.max_new_tokens_open_default}
    sizes: dict = {}
    if size_of is not None:
        for s in samples:  # once per image, not per question
            if s.image_key not in sizes:
                sizes[s.image_key] = size_of(s)
    return sorted(samples, key=lambda s: (s.image_key not in long, sizes.get(s.image_key, ()), s.image_key,
                                          settings.budget(s), s.qid))


def image_size(sample: VQASample) -> tuple[int, int]:
    """``(width, height)`` of the sample's image file (its header only: ~50 us, no pixels decoded)."""
    from PIL import Image

    with Image.open(sample.image_path) as image:
        return image.size


def shard_by_image(samples: list[VQASample], rank: int, world: int) -> list[VQASample]:
    """Process ``rank``'s questions: whole images, balanced by question count (largest first, to the least loaded).

    An image's questions stay on one process, so its prefix (vision tower + the image's
    578 prompt tokens, shared by its ~11 questions) is computed once in the whole run,
    as on one GPU; a round-robin split would compute it on every process.

    >>> from types import SimpleNamespace as Q
    >>> qs = [Q(qid=i, image_key=k) for i, k in enumerate("aaabbc")]
    >>> [q.qid for q in shard_by_image(qs, 0, 2)], [q.qid for q in shard_by_image(qs, 1, 2)]
    ([0, 1, 2], [3, 4, 5])
    """
    if world == 1:
        return samples
    by_image: dict[str, list[VQASample]] = {}
    for sample in samples:
        by_image.setdefault(sample.image_key, []).append(sample)
    images = sorted(by_image, key=str)  # ties between equal images go by name
    owner = largest_first([len(by_image[key]) for key in images], world)
    return sorted((s for key, process in zip(images, owner) if process == rank for s in by_image[key]),
                  key=lambda s: s.qid)


def answer_timing(answered: int, seconds: float, world: int) -> dict:
    """``results.json``'s ``timing``: this run's answering, model loading excluded (all processes, to the last one)."""
    return {"questions_answered": answered, "answer_seconds": round(seconds, 3), "world_size": world,
            "questions_per_second": round(answered / seconds, 3) if answered and seconds > 0 else None}


def answer_all(engine: Engine, pending: list[VQASample], batch_size: int, path: Path, rank: int,
               workers: int = 0) -> None:
    """Answer ``pending`` batch by batch, each batch's predictions appended to ``path`` and flushed as it is done."""
    writer = PredictionWriter(path)
    try:
        with tqdm(total=len(pending), desc="evaluate", unit="q", disable=rank != 0 or not pending) as bar:
            for answered in engine.answer_batches(pending, batch_size, workers):
                writer.write(answered)
                bar.update(len(answered))
    finally:
        writer.close()


def finalise_predictions(path: Path, samples: list[VQASample]) -> list[Prediction]:
    """All predictions in qid order, rewritten atomically; a missing or unexpected qid is an error."""
    rows = sorted(recover_predictions(path), key=lambda r: r.qid)
    expected = {s.qid for s in samples}
    got = {r.qid for r in rows}
    if got - expected:
        raise UserError(f"{path}: holds answers to questions outside this split/limit "
                        f"(qids {sorted(got - expected)[:5]}); use a fresh --output_dir")
    if expected - got:
        raise UserError(f"{path}: {len(expected - got)} questions have no answer; run the same command again")
    write_predictions(path, rows)
    return rows


def merge_shards(out: Path, world: int) -> None:
    rows = {r.qid: r for r in recover_predictions(out / PREDICTIONS_NAME)}
    for rank in range(world):
        shard = out / f"predictions.rank{rank}.jsonl"
        rows.update({r.qid: r for r in recover_predictions(shard)})
    write_predictions(out / PREDICTIONS_NAME, [rows[q] for q in sorted(rows)])
    for rank in range(world):
        (out / f"predictions.rank{rank}.jsonl").unlink(missing_ok=True)


def check_batch_invariance(engine: Engine, samples: list[VQASample], batched: dict[int, Prediction],
                           out: Path) -> dict:
    """Answer ``samples`` one at a time and list every answer that differs from the batched run."""
    differences, worst = [], 0.0
    for sample in tqdm(samples, desc="batch invariance", unit="q"):
        single, batch = engine.answer([sample])[0], batched[sample.qid]
        gaps = [abs(a - b) for a, b in zip(single.scores, batch.scores)]
        worst = max([worst, *gaps])
        if single.prediction != batch.prediction or single.raw_output != batch.raw_output:
            differences.append({"qid": sample.qid, "batched": batch.prediction, "single": single.prediction,
                                "batched_raw": batch.raw_output, "single_raw": single.raw_output})
    report = {"questions": len(samples), "differences": len(differences), "max_score_gap": worst,
              "items": differences}
    write_json_atomic(out / "batch_invariance.json", report)
    print(f"batch invariance: {len(differences)} differences on {len(samples)} questions "
          f"(largest candidate-score gap {worst:.2e})")
    return {k: v for k, v in report.items() if k != "items"}


def resolve_vocab(cfg: EvalConfig, root: Path) -> ClosedVocab:
    """``--closed_vocab_path``, else the one saved beside the model, else built (``--allow_build_vocab``), else empty.

    An empty vocabulary is only an error for a question that needs it (neither
    yes/no nor listing options); real SLAKE test and validation have none.
    """
    path = cfg.closed_vocab_path
    beside_model = Path(cfg.model_id_or_ckpt or "") / "closed_vocab.json"
    if path is None and beside_model.is_file():
        path = str(beside_model)
    if path is None and not cfg.allow_build_vocab:
        return ClosedVocab.empty()
    return load_or_build_vocab(path, root, cfg.allow_build_vocab, cfg.data.missing_images)


def model_provenance(cfg: EvalConfig, loaded) -> dict:
    """``model`` (one line) and ``model_fingerprint`` (see :mod:`slakevqa.models.fingerprint`) of the run.

    A model given in process (training's final evaluation) was saved to
    ``cfg.model_id_or_ckpt`` first, so that folder is what gets fingerprinted.
    """
    from slakevqa.models.fingerprint import model_fingerprint

    if loaded is not None:
        folders = [loaded.folder, loaded.adapter]
        if loaded.converted_from:  # the converted folder is ours; the original may name a hub commit
            folders.insert(0, loaded.converted_from)
        return {"model": loaded.describe(), "model_fingerprint": model_fingerprint(*folders)}
    saved = Path(cfg.model_id_or_ckpt or "")
    if cfg.model_id_or_ckpt and saved.is_dir():
        return {"model": f"given in process; fingerprint of its saved folder {saved}",
                "model_fingerprint": model_fingerprint(saved)}
    return {"model": "given in process (not saved: no fingerprint)", "model_fingerprint": None}


def load_for_eval(cfg: EvalConfig, rank: int):
    from slakevqa.models.loading import load_model

    if not cfg.model_id_or_ckpt:
        raise UserError("no model given: pass --model_id_or_ckpt (a model folder, hub id or training output dir)")
    import torch

    device = cfg.device
    if device == "auto" and int(os.environ.get("WORLD_SIZE", 1)) > 1 and torch.cuda.is_available():
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', rank))}"  # one card per process, not all on cuda:0
    quantized = cfg.load_in_4bit or cfg.load_in_8bit  # merging LoRA into quantised weights would round it away
    loaded = load_model(cfg.model_id_or_ckpt, device=device, dtype=cfg.precision, base=cfg.model_base,
                        merge_adapter=cfg.merge_adapter and not quantized, trust_remote_code=cfg.trust_remote_code,
                        load_in_4bit=cfg.load_in_4bit, load_in_8bit=cfg.load_in_8bit, log=log.info)
    log.info("loaded %s", loaded.describe())
    return loaded.model, loaded.processor, loaded


def device_name(model) -> str:
    import torch

    device = next(model.parameters()).device
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)

