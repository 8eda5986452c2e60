"""Held-out diagnostics during training: a fixed probe answered by the evaluation engine, and an eval loss.

The probe is ``tb_probe_size`` questions picked once, round-robin over the
(answer_type, content_type) groups, so OPEN and CLOSED and every kind of
question are all represented however skewed the split is. They come from
``cfg.eval_split`` (SLAKE's validation split) when it loads: the training
questions are being fitted, so a probe on them climbs towards 100% and hides
overfitting, while held-out questions show whether the model generalises. When
the eval split is absent the probe falls back to the training questions and
says so (``probe/source``); ``eval/loss`` is then not logged.

Probe answers come from :class:`~slakevqa.evaluation.engine.Engine` with the
run's own prompt builder and are scored by the scoring layer, so the numbers mean
what ``slakevqa eval`` numbers mean. ``eval/loss`` is the answer-token loss of
:func:`~slakevqa.training.loss.answer_loss` on at most ``EVAL_LOSS_RECORDS``
records of the same split.

Both run under :func:`held_out_mode`: eval mode, no gradients, and every random
generator saved and restored, so a run with diagnostics trains on exactly the
same random stream as one without (and resumes exactly).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from slakevqa.data.masks import MaskStats, region_mask
from slakevqa.data.slake import load_split
from slakevqa.errors import UserError
from slakevqa.inputs.builder import InputBuilder
from slakevqa.kernels.attention import AttentionSettings
from slakevqa.records import ANSWER_TYPES, Prediction, VQASample
from slakevqa.training.examples import ExampleEncoder
from slakevqa.training.grid import Thumbnail

if TYPE_CHECKING:
    import torch

    from slakevqa.training.config import TrainConfig

log = logging.getLogger(__name__)
PROBE_SCORERS: tuple[str, ...] = ("llava_med", "exact", "token_f1", "choice")  # choice = CLOSED accuracy
EVAL_LOSS_RECORDS = 256  # enough for a stable mean, cheap enough to run every eval_steps
GRID_SIZE = 8  # thumbnails in the probe image
DRY_RUN_LIMIT = 8  # probe questions and loss records of a --dry_run, which checks plumbing, not numbers


def balanced_subset(samples: list[VQASample], size: int, seed: int) -> list[VQASample]:
    """``size`` samples taken round-robin over (answer_type, content_type) groups, each group shuffled by ``seed``.

    >>> from slakevqa.records import VQASample
    >>> rows = [VQASample(i, 0, "a.jpg", "q", "a", "en", "", "CT", "OPEN" if i < 6 else "CLOSED", "vqa",
    ...                   "Organ", ("", "", ""), Path("a.jpg")) for i in range(8)]
    >>> sorted(s.answer_type for s in balanced_subset(rows, 4, seed=0))
    ['CLOSED', 'CLOSED', 'OPEN', 'OPEN']
    """
    rng = random.Random(seed)  # a private generator: picking the probe must not move the global streams
    groups: dict[tuple[str, str], list[VQASample]] = {}
    for sample in samples:
        groups.setdefault((sample.answer_type, sample.content_type), []).append(sample)
    queues = [rng.sample(groups[key], len(groups[key])) for key in sorted(groups)]
    picked: list[VQASample] = []
    while len(picked) < size and any(queues):
        for queue in queues:
            if queue and len(picked) < size:
                picked.append(queue.pop())
    return picked


def held_out_samples(root: Path, split: str, language: str, missing_images: str = "error") -> list[VQASample]:
    """The eval split's samples, or ``[]`` (with a warning) when it is absent or unreadable."""
    try:
        return load_split(root, split, language, missing_images)
    except UserError as error:
        log.warning("split '%s' not usable (%s): the probe uses training questions, no eval loss", split, error)
        return []


@contextlib.contextmanager
def held_out_mode(model: torch.nn.Module) -> Iterator[None]:
    """Eval mode and no gradients inside; the previous mode and every RNG state restored on exit."""
    import torch

    from slakevqa.training.checkpoint import rng_state, set_rng_state

    state, was_training = rng_state(), model.training  # the same generators a checkpoint saves
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)
        set_rng_state(state)


@dataclass
class Probe:
    """Fixed held-out questions (answered and scored) and eval-loss records for one run."""

    questions: list[VQASample]
    loss_records: list[VQASample]
    source: str  # the split the questions come from
    builder: InputBuilder
    encoder: ExampleEncoder
    processor: object
    batch_size: int
    attention: AttentionSettings
    family: object  # slakevqa.models.families.ModelFamily

    def answer(self, model: torch.nn.Module) -> list[Prediction]:
        """The probe questions answered by the evaluation engine, in probe order."""
        from slakevqa.evaluation.engine import Engine

        engine = Engine(model, self.processor, self.builder, attention=self.attention, family=self.family)
        predictions: list[Prediction] = []
        with held_out_mode(model):
            for at in range(0, len(self.questions), self.batch_size):
                predictions += engine.answer(self.questions[at:at + self.batch_size])
        return predictions

    def loss(self, model: torch.nn.Module) -> float:
        """Token-mean answer loss over ``loss_records`` (every token weighs the same, as in training)."""
        from slakevqa.training.loss import answer_loss

        device = next(model.parameters()).device
        total, tokens = 0.0, 0
        with held_out_mode(model):
            for at in range(0, len(self.loss_records), self.batch_size):
                batch, _ = self.encoder.batch(self.loss_records[at:at + self.batch_size])
                parts = answer_loss(model, {k: v.to(device) for k, v in batch.items()})
                total, tokens = total + float(parts.loss) * parts.tokens, tokens + parts.tokens
        return total / max(tokens, 1)

    def thumbnails(self, predictions: list[Prediction]) -> list[Thumbnail]:
        """The first ``GRID_SIZE`` probe questions with their image, answers and (mask modes) region."""
        from slakevqa.data.images import load_rgb
        from slakevqa.scoring import score_one

        items = []
        for sample, prediction in list(zip(self.questions, predictions))[:GRID_SIZE]:
            image = load_rgb(sample.image_path)
            region = region_mask(sample, self.builder.layout).region if self.builder.settings.mask_mode != "none" else None
            correct = score_one("exact", prediction.prediction, sample.answer, sample.answer_type) == 1.0
            items.append(Thumbnail(image, sample.question, sample.answer, prediction.prediction, correct, region))
        return items


def build_probe(cfg: TrainConfig, root: Path, train_samples: list[VQASample], builder: InputBuilder,
                processor: object, accelerator: object, family) -> Probe | None:
    """The run's probe: questions and loss records from ``cfg.eval_split``, else from the training samples.

    None where nothing would use it (no TensorBoard and no ``eval_steps``) or this
    process cannot run the model alone (:func:`runs_alone`).
    """
    if not (cfg.trackers() or cfg.eval_steps) or not runs_alone(accelerator):
        return None
    held_out = held_out_samples(root, cfg.eval_split, cfg.data.language, cfg.data.missing_images)
    source = cfg.eval_split if held_out else f"{cfg.split} ({cfg.eval_split} unavailable)"
    pool = held_out or train_samples
    # A builder of its own: probe images must not count in the training run's mask statistics.
    own = dataclasses.replace(builder, mask_stats=MaskStats())
    size = min(cfg.tb_probe_size, cfg.tb_eval_generate_size, DRY_RUN_LIMIT if cfg.dry_run else cfg.tb_probe_size)
    # No eval loss without held-out records: a loss on training questions under that name would mislead.
    records = held_out[: DRY_RUN_LIMIT if cfg.dry_run else EVAL_LOSS_RECORDS]
    return Probe(balanced_subset(pool, size, cfg.seed), records, source, own,
                 ExampleEncoder(own, processor, cfg.inputs.max_prompt_len, cfg.max_answer_len, family=family,
                                device=accelerator.device),  # one row per question: a batch's images joined there
                 processor, cfg.batch_size, cfg.attention, family)


def runs_alone(accelerator: object) -> bool:
    """Whether this process may run the model by itself: the main process, with weights not sharded.

    Under FSDP or DeepSpeed each process holds a shard, so a forward on one rank
    alone would wait forever for the others; the held-out diagnostics are skipped there.
    """
    from accelerate.utils import DistributedType

    sharded = accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)
    return accelerator.is_main_process and not sharded


def probe_metrics(predictions: list[Prediction]) -> dict[str, float]:
    """``{"probe/{scorer}/{OPEN,CLOSED}": mean}`` for every scorer that covers a group present in the probe."""
    import numpy as np

    from slakevqa.scoring.aggregate import score_rows

    types = np.array([p.answer_type for p in predictions])
    metrics = {}
    for scorer, values in score_rows(predictions, PROBE_SCORERS).items():
        for group in ANSWER_TYPES:
            picked = values[(types == group) & ~np.isnan(values)]
            if picked.size:
                metrics[f"probe/{scorer}/{group}"] = float(picked.mean())
    return metrics


def answers_table(predictions: list[Prediction]) -> str:
    """A markdown table of the probe answers (TensorBoard renders markdown in text summaries)."""
    rows = [f"| {p.qid} | {p.answer_type} | {p.route} | {_cell(p.question)} | {_cell(p.answer)} | "
            f"{_cell(p.prediction)} |" for p in predictions]
    return "| qid | type | route | question | target | prediction |\n|---|---|---|---|---|---|\n" + "\n".join(rows)


def prompt_previews(samples: list[VQASample], builder: InputBuilder, chat) -> str:
    """The exact training texts of ``samples`` (prompt and supervised answer) in the family's chat format
    ``chat``, as markdown code blocks."""
    blocks = []
    for sample in samples:
        view = builder.view(sample)
        head = f"**qid {sample.qid}** · {sample.answer_type} · route `{view.route.kind}`"
        blocks.append(f"{head}\n\n```\n{chat.training_text(view.user_text, sample.answer)}\n```")
    return "\n\n".join(blocks)


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")
