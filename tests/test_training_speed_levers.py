"""Speed levers (training/speed_levers.py) on the tiny Mistral-based LLaVA, on CPU.

Liger's kernels are Triton/CUDA: here only its refusals and the plain fallback can run (the
GPU benchmark, benchmarks/train_packing.py ``+liger``, measures the kernels themselves).
Regional compilation runs on CPU: with inductor (a C compiler is needed) and with aot_eager
(traced, no code generated), each against the eager model in fp32, gradient checkpointing on.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest
import torch

from slakevqa.data.slake import load_split
from slakevqa.errors import UserError
from slakevqa.training.examples import ExampleEncoder
from slakevqa.training.params import configure_trainable
from slakevqa.training.speed_levers import apply_speed_levers, language_model, liger_unavailable, resolve_kernels
from test_training_packing import assert_same, builder_for, image_ordered, loss_and_grads


def lora_model(tiny_model, checkpointing: bool = True):
    model, processor = tiny_model
    # dropout 0: compiled code draws its own random numbers, so losses compare only without dropout
    model = configure_trainable(model, use_lora=True, lora_r=4, lora_alpha=8, lora_dropout=0.0,
                                lora_target_modules="all-linear")
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    return model, processor


def packed_batch(root: Path, processor, count: int = 12, start: int = 0) -> dict:
    samples = image_ordered(load_split(root, "train"), start + count)[start:]
    return ExampleEncoder(builder_for(root), processor, 512, 64, pack=True).batch(samples)[0]


def instance_forwards(model) -> list[str]:
    return [name for name, module in model.named_modules() if "forward" in vars(module)]


def test_auto_on_cpu_is_the_plain_model(synth_root: Path, tiny_model) -> None:
    model, processor = lora_model(tiny_model)
    batch = packed_batch(synth_root, processor)
    before = loss_and_grads(model, batch)
    forwards, classes = instance_forwards(model), [type(m) for m in model.modules()]

    applied, undo = apply_speed_levers(model, "auto", False, "cpu")

    assert applied == {"kernels": "plain", "compile_layers": False}
    assert instance_forwards(model) == forwards and [type(m) for m in model.modules()] == classes
    after = loss_and_grads(model, batch)
    assert before[0] == after[0]
    assert_same(before, after)
    undo()


def test_explicit_liger_without_cuda_fails_clearly(tiny_model) -> None:
    model, _ = lora_model(tiny_model, checkpointing=False)
    with pytest.raises(UserError, match="--kernels liger: .*CUDA GPUs; this run is on cpu.*--kernels auto"):
        apply_speed_levers(model, "liger", False, "cpu")
    with pytest.raises(UserError, match="--kernels 'triton': use one of plain, liger, auto"):
        resolve_kernels("triton", model, "cpu")
    assert resolve_kernels("plain", model, "cuda") == "plain"


def test_liger_not_installed_is_named_with_its_install_command(tiny_model, monkeypatch: pytest.MonkeyPatch) -> None:
    model, _ = tiny_model
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "liger_kernel" else real(name, *a))
    assert "pip install 'slakevqa[gpu]'" in liger_unavailable(model, "cuda")
    assert resolve_kernels("auto", model, "cuda") == "plain"
    with pytest.raises(UserError, match=r"liger-kernel is not installed"):
        resolve_kernels("liger", model, "cuda")


@pytest.mark.skipif(importlib.util.find_spec("liger_kernel") is None or importlib.util.find_spec("triton") is not None,
                    reason="needs liger-kernel installed without triton (a CPU machine with the gpu extra)")
def test_liger_without_triton_says_why(tiny_model) -> None:
    model, _ = tiny_model
    assert "liger-kernel does not import: No module named 'triton'" in liger_unavailable(model, "cuda")


BACKENDS = ["aot_eager", pytest.param("inductor", marks=[pytest.mark.slow, pytest.mark.skipif(
    shutil.which("cc") is None and shutil.which("gcc") is None, reason="inductor on CPU needs a C compiler")])]


@pytest.mark.parametrize("backend", BACKENDS)
def test_compiled_layers_give_the_eager_loss_and_gradients(synth_root: Path, tiny_model, backend: str) -> None:
    from torch._dynamo.utils import counters

    model, processor = lora_model(tiny_model)
    batch = packed_batch(synth_root, processor)
    eager = loss_and_grads(model, batch)
    torch._dynamo.reset()
    counters.clear()

    applied, undo = apply_speed_levers(model, "plain", True, "cpu", backend=backend)
    compiled = loss_and_grads(model, batch)
    graphs = counters["stats"]["unique_graphs"]
    other = packed_batch(synth_root, processor, count=20, start=12)  # other rows and length: no new graph (dynamic)
    assert other["input_ids"].shape != batch["input_ids"].shape and other["input_ids"].shape[0] >= 2  # 1 row: 0/1
    loss_and_grads(model, other)

    assert applied == {"kernels": "plain", "compile_layers": True}
    assert all(layer._compiled_call_impl is not None for layer in language_model(model).layers)
    assert_same(eager, compiled)
    assert 1 <= graphs and counters["stats"]["unique_graphs"] == graphs  # one graph for every layer, any shape
    model.eval()
    with torch.no_grad():  # evaluation runs the layers eagerly: no new graph
        model(**{k: v for k, v in other.items() if k not in ("labels", "sample_index")}, use_cache=True)
    assert counters["stats"]["unique_graphs"] == graphs
    model.train()
    undo()
    assert all(layer._compiled_call_impl is None for layer in language_model(model).layers)
    assert_same(eager, loss_and_grads(model, batch))


def test_train_applies_and_records_the_levers(synth_root: Path, tmp_path: Path, tiny_model,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import functools
    import json

    import slakevqa.training.train as train_module
    from slakevqa.config import make_config
    from slakevqa.training.config import TrainConfig

    monkeypatch.setattr(train_module, "apply_speed_levers",  # traced, no code generated: seconds, not a minute
                        functools.partial(apply_speed_levers, backend="aot_eager"))
    cfg = make_config(TrainConfig, model_id="tiny", slake_root=str(synth_root), output_dir=str(tmp_path),
                      max_steps=2, batch_size=4, final_eval=False, tb=False, eval_steps=0, lora_r=4,
                      lora_target_modules="all-linear", gradient_checkpointing=True, kernels="auto",
                      compile_layers=True)
    result = train_module.train(cfg, *tiny_model)

    run_config = json.loads((tmp_path / "run_config.json").read_text())
    assert run_config["speed_levers"] == {"kernels": "plain", "compile_layers": True, "varlen_attention": False,
                                          "packed": True,  # the LLaVA family packs (its fast.packing flag)
                                          "flat_packing": False}  # CPU: no flash kernel, so the rows stay padded
    assert run_config["model_family"] == "llava_med"
    assert run_config["config"]["kernels"] == "auto" and len(result.losses) == 2
    torch._dynamo.reset()


def test_auto_stays_plain_under_fsdp_and_explicit_choices_pass_through() -> None:
    """Liger inside FSDP-sharded layers never ran on a GPU here: ``auto`` keeps the plain kernels there."""
    from types import SimpleNamespace

    from accelerate.utils import DistributedType

    from slakevqa.training.config import TrainConfig
    from slakevqa.training.speed_levers import kernels_for

    fsdp, ddp = SimpleNamespace(distributed_type=DistributedType.FSDP), SimpleNamespace(
        distributed_type=DistributedType.MULTI_GPU)
    assert kernels_for(TrainConfig(kernels="auto"), fsdp) == "plain"
    assert kernels_for(TrainConfig(kernels="auto"), ddp) == "auto"
    assert kernels_for(TrainConfig(kernels="liger"), fsdp) == "liger"


def test_kept_layers_skip_the_recompute_and_give_the_same_step(synth_root: Path, tiny_model) -> None:
    from slakevqa.training.speed_levers import keep_activations

    model, processor = lora_model(tiny_model)
    batch = packed_batch(synth_root, processor)
    layers = language_model(model).layers
    calls: list[int] = []
    hooks = [layer.mlp.register_forward_pre_hook(lambda module, args, index=i: calls.append(index))
             for i, layer in enumerate(layers)]  # inside the checkpointed call: the recompute runs it again
    recomputed = loss_and_grads(model, batch)
    every_layer_twice = sorted(calls)
    calls.clear()
    keep_activations(model, 1)
    kept = loss_and_grads(model, batch)
    for hook in hooks:
        hook.remove()
    last = len(layers) - 1
    assert every_layer_twice == sorted(list(range(len(layers))) * 2)  # forward + recompute in the backward
    assert sorted(calls) == sorted(list(range(last)) * 2 + [last])  # the kept layer ran once
    assert [layer.gradient_checkpointing for layer in layers] == [True] * last + [False]
    assert_same(recomputed, kept)
    with pytest.raises(UserError, match=f"has {len(layers)} decoder layers"):
        keep_activations(model, len(layers) + 1)


def test_keep_needs_checkpointing_and_shows_in_the_memory_advice() -> None:
    from slakevqa.config import make_config
    from slakevqa.training.config import TrainConfig
    from slakevqa.training.loss import memory_advice

    with pytest.raises(UserError, match="turn that on"):
        make_config(TrainConfig, gradient_checkpointing_keep=4)
    with pytest.raises(UserError, match="gradient_checkpointing_keep"):
        make_config(TrainConfig, gradient_checkpointing=True, gradient_checkpointing_keep=-1)
    advice = memory_advice(make_config(TrainConfig, gradient_checkpointing=True, gradient_checkpointing_keep=8), 1)
    assert "a smaller --gradient_checkpointing_keep (now 8" in advice
