"""TensorBoard diagnostics of a training run, plus a progress bar in the terminal.

Tags (a superset of the reference toolkit's, so dashboards carry over):

* at the start: ``run/config`` (text), ``data/{field}/{value}`` counts and
  ``data/{field}_table`` (text) for answer_type, modality, content_type,
  base_type, q_lang; ``train/params/{component}/{total,trainable}``;
* every ``logging_steps``: ``train/loss``, ``train/learning_rate``,
  ``train/grad_norm``, ``train/samples_per_sec``, ``train/supervised_tokens``,
  ``data/prompt_len_{mean,max}``, ``data/answer_len_{mean,max}``,
  ``data/{prompt,answer}_truncated_pct``, ``data/closed_ratio``,
  ``gpu/memory_{allocated,reserved}_mb`` on CUDA;
* every ``tb_hist_every``: histograms ``data/prompt_len_hist``,
  ``data/answer_len_hist``, and ``train/param_norm/{projector,lora}``.
"""

from __future__ import annotations

import json
from pathlib import Path

from tqdm import tqdm

from slakevqa.config import config_to_dict
from slakevqa.data.stats import split_stats
from slakevqa.training.params import component_of

TABLE_FIELDS = ("answer_type", "modality", "content_type", "base_type", "q_lang")


class TrainLogger:
    def __init__(self, cfg, out: Path, enabled: bool = True) -> None:
        self.cfg, self.enabled = cfg, enabled
        self.writer = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(cfg.tb_logdir or out / "tb"))
        self.bar, self.total_steps = None, 0
        self.lengths: dict[str, list[float]] = {"prompt": [], "answer": []}

    def start(self, samples: list, counts: dict, total_steps: int) -> None:
        self.total_steps = total_steps
        if self.writer is None:
            return
        self.writer.add_text("run/config", "```\n" + json.dumps(config_to_dict(self.cfg), indent=1) + "\n```")
        stats = split_stats(samples)
        for name in TABLE_FIELDS:
            for value, n in stats[name].items():
                self.writer.add_scalar(f"data/{name}/{value}", n, 0)
            rows = "\n".join(f"| {value} | {n} |" for value, n in stats[name].items())
            self.writer.add_text(f"data/{name}_table", f"| {name} | count |\n|---|---|\n{rows}")
        for component, entry in counts.items():
            for kind, n in entry.items():
                self.writer.add_scalar(f"train/params/{component}/{kind}", n, 0)

    def step(self, step: int, loss: float, lr: float, grad_norm, batch_stats: list[dict], seconds: float,
             model) -> None:
        if self.bar is None:
            self.bar = tqdm(total=self.total_steps, initial=step - 1, desc="train", unit="step", leave=True)
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}")
        for stats in batch_stats:
            self.lengths["prompt"].append(stats["prompt_len_mean"])
            self.lengths["answer"].append(stats["answer_len_mean"])
        if self.writer is None:
            return
        if step % self.cfg.logging_steps == 0 or step == 1:
            self._scalars(step, loss, lr, grad_norm, batch_stats, seconds)
        if step % self.cfg.tb_hist_every == 0:
            self._histograms(step, model)

    def _scalars(self, step: int, loss: float, lr: float, grad_norm, batch_stats: list[dict],
                 seconds: float) -> None:
        import torch

        write = self.writer.add_scalar
        write("train/loss", loss, step)
        write("train/learning_rate", lr, step)
        if grad_norm is not None:
            write("train/grad_norm", float(grad_norm), step)
        write("train/samples_per_sec", self.cfg.batch_size * self.cfg.grad_accum / max(seconds, 1e-9), step)
        for key in batch_stats[0]:
            value = sum(s[key] for s in batch_stats) / len(batch_stats)
            write(("train/" if key == "supervised_tokens" else "data/") + key, value, step)
        if torch.cuda.is_available():
            write("gpu/memory_allocated_mb", torch.cuda.memory_allocated() / 2**20, step)
            write("gpu/memory_reserved_mb", torch.cuda.max_memory_reserved() / 2**20, step)

    def _histograms(self, step: int, model) -> None:
        import torch

        for name, values in self.lengths.items():
            if values:
                self.writer.add_histogram(f"data/{name}_len_hist", torch.tensor(values), step)
        norms: dict[str, float] = {}
        for name, parameter in model.named_parameters():
            if parameter.requires_grad and component_of(name) in ("projector", "lora"):
                key = component_of(name)
                norms[key] = norms.get(key, 0.0) + float(parameter.detach().float().norm()) ** 2
        for key, squared in norms.items():
            self.writer.add_scalar(f"train/param_norm/{key}", squared ** 0.5, step)

    def close(self, summary: dict | None = None) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            if summary:
                self.writer.add_text("run/summary", "```\n" + json.dumps(summary, indent=1) + "\n```")
            self.writer.close()
