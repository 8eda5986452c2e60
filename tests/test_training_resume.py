"""A training run killed with SIGKILL between checkpoints resumes exactly: same loss at every step."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

# The child builds the same tiny model every time (seeded), trains 24 steps with a checkpoint
# every 8, and, when asked, SIGKILLs itself in the middle of step 13 (after checkpoint-8,
# before checkpoint-16). Every loss it computes is appended to a file as it happens.
CHILD = textwrap.dedent("""
    import json, logging, os, signal, sys
    logging.basicConfig(level=logging.INFO)
    import slakevqa.training.train as T
    from slakevqa.models.tiny import build_tiny_llava
    from slakevqa.config import make_config
    from slakevqa.training.config import TrainConfig

    root, out, kill_at = sys.argv[1], sys.argv[2], int(sys.argv[3])
    calls = {"n": 0}
    original = T.answer_loss

    def answer_loss(model, batch):
        calls["n"] += 1
        if calls["n"] == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return original(model, batch)

    T.answer_loss = answer_loss
    model, processor = build_tiny_llava("bpe", seed=0)
    cfg = make_config(TrainConfig, model_id="tiny", slake_root=root, output_dir=out, max_steps=24, save_steps=8,
                      batch_size=4, grad_accum=2, lr=5e-3, warmup_ratio=0.1, lora_dropout=0.1, seed=3, final_eval=False,
                      tb=False, save_total_limit=3)
    result = T.train(cfg, model, processor)
    json.dump(result.losses, open(os.path.join(out, "losses.json"), "w"))
""")


def run_child(synth_root: Path, out: Path, kill_at: int = 0) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", CHILD, str(synth_root), str(out), str(kill_at)],
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_sigkill_then_rerun_gives_identical_losses(synth_root: Path, tmp_path: Path) -> None:
    uninterrupted = run_child(synth_root, tmp_path / "a")
    assert uninterrupted.returncode == 0, uninterrupted.stderr[-2000:]
    reference = json.loads((tmp_path / "a" / "losses.json").read_text())

    killed = run_child(synth_root, tmp_path / "b", kill_at=2 * 12 + 1)  # first micro-batch of step 13
    assert killed.returncode == -signal.SIGKILL
    assert sorted(p.name for p in (tmp_path / "b").glob("checkpoint-*")) == ["checkpoint-8"]
    assert not (tmp_path / "b" / "adapter_model.safetensors").exists()

    resumed = run_child(synth_root, tmp_path / "b")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from" in resumed.stderr and "at step 8 of 24" in resumed.stderr
    losses = json.loads((tmp_path / "b" / "losses.json").read_text())
    assert [s for s, _ in losses] == list(range(1, 25))
    for (step, loss), (_, expected) in zip(losses, reference):
        assert abs(loss - expected) <= 1e-6, f"step {step}: {loss} vs {expected}"
