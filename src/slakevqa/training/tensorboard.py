"""TensorBoard diagnostics of a training run, plus a progress bar (loss, ETA) in the terminal.

Every scalar tag also goes to the other trackers of ``--report_to`` (wandb, mlflow, ...:
:mod:`slakevqa.training.trackers`); text, histograms and images are TensorBoard's alone.

Tags (a superset of the reference toolkit's, so dashboards carry over):

* at the start: ``run/config`` (text), ``data/{field}/{value}`` counts and
  ``data/{field}_table`` (text) for answer_type, modality, content_type,
  base_type, q_lang; ``train/params/{component}/{total,trainable}``;
  ``data/prompt_preview`` (text: rendered training prompts with their targets);
  ``probe/source`` and ``probe/questions`` (text);
* every ``logging_steps`` (and step 1): ``train/loss``, ``train/loss/{OPEN,CLOSED}``
  (mean per-sample loss of each answer type since the last log), ``train/learning_rate``,
  ``train/grad_norm``, ``train/samples_per_sec``, ``train/tokens_per_sec`` (this
  process's questions and non-padding tokens, image tokens included; ``run_config.json``'s
  ``throughput`` has all processes'), ``train/supervised_tokens``,
  ``data/prompt_len_{mean,max}``, ``data/answer_len_{mean,max}``,
  ``data/{prompt,answer}_truncated_pct``, ``data/closed_ratio``,
  ``gpu/memory_{allocated,reserved}_mb`` on CUDA;
* every ``tb_hist_every``: histograms ``data/prompt_len_hist``,
  ``data/answer_len_hist``, ``train/loss_per_sample`` (since the last histogram),
  and scalars ``train/param_norm/{projector,lora}``;
* every ``eval_steps``: ``eval/loss`` (answer tokens, eval split; also in the bar and the log);
* every ``tb_log_text_every`` and ``tb_log_images_every`` step and at the end, the probe
  (:mod:`slakevqa.training.probe`): ``probe/{llava_med,exact,token_f1}/{OPEN,CLOSED}``,
  ``probe/choice/CLOSED`` (CLOSED accuracy), histogram ``probe/closed_margin``, text
  ``probe/answers``; on ``tb_log_images_every`` steps and at the end the image ``probe/grid``
  (:mod:`slakevqa.training.grid`);
* at the end: ``run/summary`` (text: encoding caches, mask statistics).

Text tags appear in the event file with TensorBoard's ``/text_summary`` suffix.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from tqdm import tqdm

from slakevqa.config import config_to_dict
from slakevqa.data.stats import split_stats
from slakevqa.inputs.builder import InputBuilder
from slakevqa.records import ANSWER_TYPES, Prediction, VQASample
from slakevqa.training.grid import probe_grid
from slakevqa.training.params import parts_of
from slakevqa.training.probe import Probe, answers_table, balanced_subset, probe_metrics, prompt_previews

if TYPE_CHECKING:
    import torch

    from slakevqa.training.config import TrainConfig

log = logging.getLogger(__name__)
TABLE_FIELDS = ("answer_type", "modality", "content_type", "base_type", "q_lang")
PREVIEW_SIZE = 4  # rendered training prompts shown at the start


class TrainLogger:
    """Writes the tags of the module docstring; ``enabled=False`` keeps only the progress bar and eval loss.

    ``main`` is whether this is the process that shows the bar and computes the
    held-out diagnostics (the others train silently).
    """

    def __init__(self, cfg: TrainConfig, out: Path, enabled: bool = True, main: bool = True) -> None:
        self.cfg, self.enabled, self.main = cfg, enabled, main
        self.writer = None  # TensorBoard and the other --report_to trackers (slakevqa.training.trackers)
        if enabled and cfg.trackers():
            from slakevqa.training.trackers import LogWriters, start_trackers

            tensorboard = None
            if cfg.tensorboard:
                from torch.utils.tensorboard import SummaryWriter

                tensorboard = SummaryWriter(log_dir=str(cfg.tb_logdir or out / "tb"))
            self.writer = LogWriters(tensorboard, start_trackers(cfg, out, config_to_dict(cfg)))
        self.bar, self.postfix, self.total_steps, self.probe = None, {}, 0, None
        self.lengths: dict[str, list[float]] = {"prompt": [], "answer": []}
        self.tokens = self.samples = 0  # non-padding tokens and questions of this process since the last step
        self.rows: list[tuple[str, float]] = []  # (answer_type, loss) since the last scalar log
        self.hist_rows: list[float] = []  # per-sample losses since the last histogram
        self.gridded_at = -1
        self.answered: tuple[int, list[Prediction]] = (-1, [])  # (step, probe predictions): reused by a final grid

    def start(self, samples: list[VQASample], counts: dict, total_steps: int, builder: InputBuilder | None = None,
              probe: Probe | None = None, chat=None) -> None:
        """Log the run's configuration, data and parameters; remember the probe for later steps."""
        self.total_steps, self.probe = total_steps, probe
        if self.writer is None:
            return
        self.writer.add_text("run/config", "```\n" + json.dumps(config_to_dict(self.cfg), indent=1) + "\n```")
        self._data_tables(samples)
        for component, entry in counts.items():
            for kind, n in entry.items():
                self.writer.add_scalar(f"train/params/{component}/{kind}", n, 0)
        if builder is not None and chat is not None:
            preview = balanced_subset(samples, PREVIEW_SIZE, self.cfg.seed)
            self.writer.add_text("data/prompt_preview", prompt_previews(preview, builder, chat))
        if probe is not None and probe.questions:
            self.writer.add_text("probe/source", f"{len(probe.questions)} questions from split `{probe.source}`")
            self.writer.add_text("probe/questions", prompt_previews(probe.questions, probe.builder, probe.family.chat))

    def _data_tables(self, samples: list[VQASample]) -> None:
        stats = split_stats(samples)
        for name in TABLE_FIELDS:
            for value, n in stats[name].items():
                self.writer.add_scalar(f"data/{name}/{value}", n, 0)
            rows = "\n".join(f"| {value} | {n} |" for value, n in stats[name].items())
            self.writer.add_text(f"data/{name}_table", f"| {name} | count |\n|---|---|\n{rows}")

    def record_rows(self, samples: list[VQASample], row_losses: torch.Tensor, attention_mask: torch.Tensor) -> None:
        """Per-sample losses and token count of one micro-batch (``row_losses`` from ``answer_loss``)."""
        if self.writer is None:
            return
        self.tokens += int(attention_mask.sum())
        self.samples += len(samples)  # under several processes not always --batch_size (whole images per process)
        for sample, value in zip(samples, row_losses.float().tolist()):
            if value != value:  # NaN: a row with no answer tokens (CLOSED under --closed_train_objective mc)
                continue
            self.rows.append((sample.answer_type, value))
            self.hist_rows.append(value)

    def step(self, step: int, loss: float, lr: float, grad_norm: torch.Tensor | float | None,
             batch_stats: list[dict], seconds: float, model: torch.nn.Module) -> None:
        """After optimiser step ``step``: eval loss if due, the bar, then whatever tags are due."""
        if self.cfg.eval_steps and step % self.cfg.eval_steps == 0:
            self._eval_loss(step, model)
        self._progress(step, loss, lr)
        for stats in batch_stats:
            self.lengths["prompt"].append(stats["prompt_len_mean"])
            self.lengths["answer"].append(stats["answer_len_mean"])
        (tokens, self.tokens), (samples, self.samples) = (self.tokens, 0), (self.samples, 0)
        if self.writer is None:
            return
        if step % self.cfg.logging_steps == 0 or step == 1:
            self._scalars(step, loss, lr, grad_norm, batch_stats, seconds, tokens, samples)
        if step % self.cfg.tb_hist_every == 0:
            self._histograms(step, model)
        images = step % self.cfg.tb_log_images_every == 0
        if images or step % self.cfg.tb_log_text_every == 0:
            self._probe(step, model, images)

    def _progress(self, step: int, loss: float, lr: float) -> None:
        """The bar: its total is known, so tqdm shows the ETA (eval and probe time count in the rate, as they should)."""
        if self.bar is None:
            self.bar = tqdm(total=self.total_steps, initial=step - 1, desc="train", unit="step", leave=True,
                            disable=not self.main)
        self.postfix.update(loss=f"{loss:.4f}", lr=f"{lr:.2e}")
        self.bar.set_postfix(self.postfix, refresh=False)
        self.bar.update(1)

    def _scalars(self, step: int, loss: float, lr: float, grad_norm: torch.Tensor | float | None,
                 batch_stats: list[dict], seconds: float, tokens: int, samples: int) -> None:
        import torch

        write = self.writer.add_scalar
        write("train/loss", loss, step)
        write("train/learning_rate", lr, step)
        if grad_norm is not None:
            write("train/grad_norm", float(grad_norm), step)
        write("train/samples_per_sec", samples / max(seconds, 1e-9), step)
        write("train/tokens_per_sec", tokens / max(seconds, 1e-9), step)
        for key in batch_stats[0]:
            values = [s[key] for s in batch_stats if s.get(key) == s.get(key)]  # NaN: nothing measured
            if not values:
                continue
            value = sum(values) / len(values)
            write(("train/" if key == "supervised_tokens" or key.startswith("mc_") else "data/") + key, value, step)
        self._loss_by_type(step)
        if torch.cuda.is_available():
            write("gpu/memory_allocated_mb", torch.cuda.memory_allocated() / 2**20, step)
            write("gpu/memory_reserved_mb", torch.cuda.max_memory_reserved() / 2**20, step)

    def _loss_by_type(self, step: int) -> None:
        """Mean per-sample loss of OPEN and of CLOSED questions since the last log (each sample weighs the same)."""
        for group in ANSWER_TYPES:
            values = [value for kind, value in self.rows if kind == group]
            if values:
                self.writer.add_scalar(f"train/loss/{group}", sum(values) / len(values), step)
        self.rows = []

    def _histograms(self, step: int, model: torch.nn.Module) -> None:
        import torch

        for name, values in self.lengths.items():
            if values:
                self.writer.add_histogram(f"data/{name}_len_hist", torch.tensor(values), step)
        if self.hist_rows:
            self.writer.add_histogram("train/loss_per_sample", torch.tensor(self.hist_rows), step)
            self.hist_rows = []
        norms: dict[str, float] = {}
        parts = parts_of(model)
        for name, parameter in model.named_parameters():
            if parameter.requires_grad and parts.component_of(name) in ("projector", "lora"):
                key = parts.component_of(name)
                norms[key] = norms.get(key, 0.0) + float(parameter.detach().float().norm()) ** 2
        for key, squared in norms.items():
            self.writer.add_scalar(f"train/param_norm/{key}", squared ** 0.5, step)

    def _eval_loss(self, step: int, model: torch.nn.Module) -> None:
        """``eval/loss`` on the probe's loss records (main process only; the bar shows it too)."""
        if self.probe is None or not self.probe.loss_records:
            return
        value = self.probe.loss(model)
        log.info("step %d: eval loss %.4f on %d %s records", step, value, len(self.probe.loss_records),
                 self.probe.source)
        self.postfix["eval_loss"] = f"{value:.4f}"
        if self.writer is not None:
            self.writer.add_scalar("eval/loss", value, step)

    def _probe(self, step: int, model: torch.nn.Module, images: bool) -> None:
        """Answer the probe; write its metrics, CLOSED margins, answers and (``images``) the grid."""
        if self.probe is None or not self.probe.questions:
            return
        if self.answered[0] == step:  # already answered and logged (the last step was also a probe step)
            if images and self.gridded_at != step:
                self._grid(step, self.answered[1])
            return
        predictions = self.probe.answer(model)
        self.answered = (step, predictions)
        for tag, value in probe_metrics(predictions).items():
            self.writer.add_scalar(tag, value, step)
        margins = [p.margin for p in predictions if p.answer_type == "CLOSED" and p.margin is not None]
        if margins:
            import torch

            self.writer.add_histogram("probe/closed_margin", torch.tensor(margins), step)
        self.writer.add_text("probe/answers", answers_table(predictions), step)
        if images:
            self._grid(step, predictions)

    def _grid(self, step: int, predictions: list[Prediction]) -> None:
        grid = probe_grid(self.probe.thumbnails(predictions))
        self.writer.add_image("probe/grid", grid, step, dataformats="HWC")
        self.gridded_at = step

    def close(self, summary: dict | None = None, step: int | None = None,
              model: torch.nn.Module | None = None) -> None:
        """A final probe (grid included) when ``model`` is given, then close bar and writer."""
        if model is not None and step is not None and self.writer is not None:
            self._probe(step, model, images=True)
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            if summary:
                self.writer.add_text("run/summary", "```\n" + json.dumps(summary, indent=1) + "\n```")
            self.writer.close()
