"""`slakevqa merge` writes a folder plain transformers loads, with the adapter model's exact logits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from slakevqa.cli import main
from slakevqa.config import make_config
from slakevqa.errors import UserError
from slakevqa.models.loading import load_model
from slakevqa.models.tiny import build_tiny_llava, save_llava
from slakevqa.training.config import TrainConfig
from slakevqa.training.train import train


@pytest.fixture(scope="module")
def trained_adapter(synth_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LoRA + projector run of 3 steps on a tiny base saved to disk (so the adapter can name it)."""
    base = save_llava(*build_tiny_llava("bpe", seed=0), tmp_path_factory.mktemp("base") / "tiny")
    out = tmp_path_factory.mktemp("run") / "lora"
    cfg = make_config(TrainConfig, model_id=str(base), slake_root=str(synth_root), output_dir=str(out), max_steps=3,
                      batch_size=4, lr=5e-2, warmup_ratio=0.0, final_eval=False, tb=False, eval_steps=0)
    train(cfg, *load_model(base, device="cpu", dtype="fp32", log=lambda _: None))
    return out


def logits(model: torch.nn.Module, processor: object) -> torch.Tensor:
    """Logits of one fixed prompt with one fixed image (seeded pixels)."""
    import numpy as np
    from PIL import Image

    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    inputs = processor(images=[image], text=["[INST] <image>\nWhich organ is this? [/INST]"], return_tensors="pt")
    with torch.no_grad():
        return model(**inputs).logits


def test_adapter_names_its_base(trained_adapter: Path) -> None:
    config = json.loads((trained_adapter / "adapter_config.json").read_text())
    assert Path(config["base_model_name_or_path"]).is_absolute()
    assert (Path(config["base_model_name_or_path"]) / "config.json").is_file()


def test_merged_folder_loads_with_plain_transformers_and_gives_the_same_logits(trained_adapter: Path,
                                                                                tmp_path: Path) -> None:
    from transformers import AutoModelForImageTextToText, AutoProcessor

    assert main(["merge", str(trained_adapter), str(tmp_path / "merged")]) == 0
    merged_dir = tmp_path / "merged"
    assert (merged_dir / "model.safetensors").is_file() and not (merged_dir / "adapter_config.json").exists()
    assert (merged_dir / "closed_vocab.json").read_text() == (trained_adapter / "closed_vocab.json").read_text()

    plain = AutoModelForImageTextToText.from_pretrained(str(merged_dir), dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(str(merged_dir))
    adapter_model, adapter_processor = load_model(trained_adapter, device="cpu", dtype="fp32", log=lambda _: None)
    base_model, _ = load_model(json.loads((trained_adapter / "adapter_config.json").read_text())
                               ["base_model_name_or_path"], device="cpu", dtype="fp32", log=lambda _: None)
    expected = logits(adapter_model, adapter_processor)
    assert torch.allclose(logits(plain, processor), expected, atol=1e-5)
    assert not torch.allclose(logits(base_model, processor), expected, atol=1e-3)  # training did change them


def test_merge_refuses_what_it_cannot_do(trained_adapter: Path, tmp_path: Path) -> None:
    from slakevqa.commands.merge import merge_adapter

    with pytest.raises(UserError, match="not a LoRA adapter folder"):
        merge_adapter(tmp_path, tmp_path / "out")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    with pytest.raises(UserError, match="--overwrite"):
        merge_adapter(trained_adapter, tmp_path / "full")


def test_adapter_trained_on_an_in_memory_model_asks_for_base(trained_adapter: Path, tmp_path: Path) -> None:
    """A run given a model object records its --model_id; when that is no folder, merge says to pass --base."""
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    for path in trained_adapter.iterdir():
        if path.is_file():
            (adapter / path.name).write_bytes(path.read_bytes())
    config = json.loads((adapter / "adapter_config.json").read_text())
    base = config["base_model_name_or_path"]
    (adapter / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": "tiny"}))
    with pytest.raises(UserError, match="tiny: no such model folder"):
        load_model(adapter, device="cpu", log=lambda _: None)
    assert main(["merge", str(adapter), str(tmp_path / "merged"), "--base", base]) == 0
    assert (tmp_path / "merged" / "model.safetensors").is_file()
