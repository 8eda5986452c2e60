"""Shared fixtures: a tiny SLAKE written on the fly in any layout, real SLAKE via SLAKE_ROOT, a plain-PyTorch
stand-in for flash attention's variable-length kernel, and a tiny LoRA adapter folder on its base."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from PIL import Image

from launching import TRAIN_FLAGS, launch

REAL_SLAKE = os.environ.get("SLAKE_ROOT")


def slake_row(qid: int, img_id: int = 0, **overrides: object) -> dict:
    """One record with SLAKE's 12 keys; overrides replace fields (or remove them with None)."""
    row = {"img_id": img_id, "img_name": f"xmlab{img_id}/source.jpg", "question": f"Question {qid}?",
           "answer": "Yes" if qid % 2 else "Liver", "q_lang": "en", "location": "Abdomen", "modality": "CT",
           "answer_type": "CLOSED" if qid % 2 else "OPEN", "base_type": "vqa", "content_type": "Organ",
           "triple": ["vhead", "_", "_"], "qid": qid}
    for key, value in overrides.items():
        if value is None:
            row.pop(key)
        else:
            row[key] = value
    return row


def write_image(path: Path, size: int = 16, color: tuple[int, int, int] = (90, 90, 90)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), color).save(path)


def write_mini_slake(root: Path, splits: dict[str, list[dict]] | None = None, image_dir: str = "imgs",
                     validation_name: str = "validate.json") -> Path:
    """Write split files and one image per img_id; returns ``root``."""
    splits = splits if splits is not None else default_splits()
    names = {"train": "train.json", "validation": validation_name, "test": "test.json"}
    root.mkdir(parents=True, exist_ok=True)
    for split, rows in splits.items():
        (root / names[split]).write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
        for row in rows:
            name = row.get("img_name") if isinstance(row, dict) else None
            if isinstance(name, str) and ".." not in name and name.endswith(".jpg") and not name.startswith("/"):
                write_image(root / image_dir / row["img_name"])
    (root / "mask.txt").write_text("70:Liver\n135:Left Kidney", encoding="utf-8")
    return root


def default_splits() -> dict[str, list[dict]]:
    """train: 4 en on 2 images + 2 zh; validation: 2 en; test: 2 en + 1 zh."""
    return {
        "train": [slake_row(0, 0), slake_row(1, 0), slake_row(2, 1), slake_row(3, 1, answer=2, answer_type="OPEN"),
                  slake_row(5, 4, q_lang="zh", question="图片里有肝脏吗?", answer="是"),
                  slake_row(4, 5, q_lang="zh", question="这是什么?", answer="肝脏")],
        "validation": [slake_row(10, 2), slake_row(11, 2)],
        "test": [slake_row(21, 3), slake_row(20, 3), slake_row(22, 4, q_lang="zh", answer="否")],
    }


@pytest.fixture
def mini_slake(tmp_path: Path) -> Path:
    return write_mini_slake(tmp_path / "Slake1.0")


@pytest.fixture
def slake_root() -> Path:
    if not REAL_SLAKE or not Path(REAL_SLAKE).is_dir():
        pytest.skip("real SLAKE not available: set SLAKE_ROOT=../shared/slake/Slake1.0 to run this test")
    return Path(REAL_SLAKE)


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic SLAKE (60 images, ~430 English training questions), written once per session."""
    from slakevqa.data.synth import write_synthetic_slake

    return write_synthetic_slake(tmp_path_factory.mktemp("synth") / "Slake1.0", seed=0, images=60).out


@pytest.fixture
def tiny_model():
    """A fresh tiny LLaVA (BPE tokenizer, 16 image tokens) and its processor, identical for every call."""
    from slakevqa.models.tiny import build_tiny_llava

    return build_tiny_llava("bpe", seed=0)


@pytest.fixture(scope="module")
def tiny_engine(synth_root: Path):
    """An evaluation Engine on its own tiny LLaVA (BPE tokenizer, seed 0), with the synthetic SLAKE's inputs; one per
    test module (tests that change the model put it back)."""
    from slakevqa.data.slake import find_layout, load_split
    from slakevqa.evaluation.engine import Engine
    from slakevqa.inputs.builder import InputBuilder
    from slakevqa.inputs.vocab import build_closed_vocab
    from slakevqa.models.tiny import build_tiny_llava

    model, processor = build_tiny_llava("bpe", seed=0)
    builder = InputBuilder.create(find_layout(synth_root), build_closed_vocab(load_split(synth_root, "train")))
    return Engine(model, processor, builder)


@pytest.fixture(params=[True, False], ids=["boolean-mask", "union-of-positions"])
def mask_slicing(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    """Run a test through both ways of slicing logits (kernels/compat.py), skipping one this transformers lacks."""
    from slakevqa.kernels import compat

    if request.param and not compat.accepts_mask_logits_to_keep():
        pytest.skip("this transformers has no boolean logits_to_keep")
    monkeypatch.setattr(compat, "MASK_SLICING", request.param)
    return request.param


def reference_varlen(q, k, v, cu_q, cu_k, max_q, max_k, scale, causal=True):
    """The flash kernel's contract in plain PyTorch: per sequence, causal aligned at the keys' end (or no mask),
    GQA; returns the output and each query's log-sum-exp ``(H, tokens)``."""
    import torch
    import torch.nn.functional as F

    out, lse = [], []
    for s in range(len(cu_q) - 1):
        qs, ks, vs = (t[int(c[s]):int(c[s + 1])].transpose(0, 1) for t, c in ((q, cu_q), (k, cu_k), (v, cu_k)))
        ks, vs = (t.repeat_interleave(qs.shape[0] // t.shape[0], dim=0) for t in (ks, vs))
        visible = torch.ones(qs.shape[1], ks.shape[1], dtype=torch.bool)
        visible = visible.tril(ks.shape[1] - qs.shape[1]) if causal else visible
        scores = (qs.float() @ ks.float().transpose(-1, -2) * scale).masked_fill(~visible, float("-inf"))
        out.append(F.scaled_dot_product_attention(qs, ks, vs, attn_mask=visible, scale=scale).transpose(0, 1))
        lse.append(torch.logsumexp(scores, dim=-1))
    assert max_q >= max(int(cu_q[i + 1] - cu_q[i]) for i in range(len(cu_q) - 1))  # an upper bound
    assert max_k >= max(int(cu_k[i + 1] - cu_k[i]) for i in range(len(cu_k) - 1))
    # FlashAttention-2 takes max_q == 1 to mean one query per sequence (it then folds query heads into it)
    assert max_q > 1 or q.shape[0] == len(cu_q) - 1, "max_q 1 with sequences of other lengths crashes the kernel"
    return torch.cat(out), torch.cat(lse, dim=1)


@pytest.fixture
def reference_kernel(monkeypatch: pytest.MonkeyPatch) -> list:
    """The reference kernel wherever the flash one would run (kernels/segment_attention.py's ``varlen_kernel``:
    the CUDA kernel cannot run here); returns its calls' ``causal`` flags."""
    import slakevqa.kernels.segment_attention as segment_module

    calls: list[bool] = []

    def kernel(query, dtype):
        def run(*args, causal=True):
            calls.append(causal)
            return reference_varlen(*args, causal=causal)
        return run

    monkeypatch.setattr(segment_module, "varlen_kernel", kernel)
    return calls


@pytest.fixture(scope="session")
def saved_tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny LLaVA (BPE tokenizer, seed 0) saved once as a Hugging Face folder; tests must leave it as it is
    (copy it to change it)."""
    from slakevqa.models.tiny import build_tiny_llava, save_llava

    return save_llava(*build_tiny_llava("bpe", seed=0), tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def lora(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny base folder and a LoRA adapter folder that names it, built once (merge's atomic outputs in
    test_files_atomic.py, damaged weights in test_models_weight_files.py); tests must leave both as they are."""
    from peft import LoraConfig, get_peft_model

    from slakevqa.models import tiny

    root = tmp_path_factory.mktemp("lora")
    base = tiny.save_llava(*tiny.build_tiny_llava("bpe", seed=3), root / "base")
    peft_model = get_peft_model(tiny.build_tiny_llava("bpe", seed=3)[0],
                                LoraConfig(r=4, target_modules=r".*language_model.*\.(q_proj|v_proj)",
                                           init_lora_weights=False))
    adapter = root / "runs" / "lora"
    peft_model.save_pretrained(str(adapter))
    config = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": str(base)}))
    (adapter / "closed_vocab.json").write_text('["left", "right"]\n')
    return {"base": base, "adapter": adapter}


# ---- launched runs shared by the multi-process tests (test_distributed, test_cluster)

@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tiny") / "model"
    launch(["init-tiny", str(folder), "--tokenizer", "bpe"])
    return folder


@pytest.fixture(scope="session")
def single_run(tiny_dir: Path, synth_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One process, batch 4: the reference for training, and the model the evaluations answer with."""
    out = tmp_path_factory.mktemp("single") / "run"
    launch(["train", "--model_id", str(tiny_dir), "--slake_root", str(synth_root), "--output_dir", str(out),
            "--batch_size", "4", "--no-final_eval", *TRAIN_FLAGS])
    return out
