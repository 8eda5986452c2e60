"""Training precision: the weights' dtype, the autocast around each step, and the LoRA adapters' dtype.

``--precision`` decides three things, recorded in run_config.json as the run's layout:

================  =======  ==============  ====================================
precision         weights  LoRA adapters   training step runs under
================  =======  ==============  ====================================
bf16 (GPU auto)   bf16     fp32 (peft)     bf16 autocast (LoRA); none (full FT)
fp16              fp32     fp32            fp16 autocast + gradient scaling
fp32 (CPU auto)   fp32     fp32            no autocast
================  =======  ==============  ====================================

``--precision bf16`` on a CPU gives the GPU's layout (bf16 weights, fp32 adapters, bf16
autocast), so the dtype paths our users run on GPUs are tested on CPUs too.

peft keeps adapter weights in fp32 (AdamW updates of 1e-5 survive there) and casts each
adapted layer's input to fp32. Under bf16 autocast that cast is pure cost (a third of a
7B LoRA step on an H200, benchmarks/RESULTS.md), so :func:`adapters_under_autocast`
switches it off, but only inside the training step: anything that runs the model outside
that step and its autocast (TensorBoard probes, the eval loss, the final evaluation) gets
peft's casting back, and with it fp32 adapters that work on bf16 activations.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Iterator

from slakevqa.distributed import use_cpu

if TYPE_CHECKING:
    import torch

    from slakevqa.training.config import TrainConfig


def training_device_type() -> str:
    """``cuda`` when training will run on a GPU, else ``cpu`` (see :func:`slakevqa.distributed.use_cpu`)."""
    import torch

    return "cuda" if torch.cuda.is_available() and not use_cpu() else "cpu"


def weight_dtype(precision: str, device_type: str) -> str:
    """Weights' dtype: ``auto`` is bf16 on GPUs that support it, else fp32 (fp16 runs fp32 weights under autocast).

    >>> weight_dtype("bf16", "cpu"), weight_dtype("fp16", "cuda"), weight_dtype("auto", "cpu")
    ('bf16', 'fp32', 'fp32')
    """
    import torch

    if precision == "auto":
        return "bf16" if device_type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if precision == "bf16" else "fp32"


def autocast_precision(cfg: TrainConfig, device_type: str) -> str:
    """Accelerate's ``mixed_precision``: fp16 autocasts fp32 weights; bf16 weights autocast under LoRA.

    Full fine-tuning in bf16 needs no autocast: every weight is bf16 already. Under
    LoRA the adapters are fp32, and autocast runs them in bf16 (module docstring).
    """
    if cfg.precision == "fp16":
        return "fp16"
    bf16 = weight_dtype(cfg.precision, device_type) == "bf16"
    return "bf16" if bf16 and cfg.use_lora else "no"


def adapter_layers(model: torch.nn.Module) -> list:
    """peft's adapted layers (LoRA ``Linear`` wrappers) of ``model``; none without peft."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [module for module in model.modules() if isinstance(module, BaseTunerLayer)]


@contextlib.contextmanager
def adapters_under_autocast(layers: list) -> Iterator[None]:
    """Inside: ``layers`` take their input as it comes (autocast runs the fp32 adapters in bf16).

    Enter it around a training step's forward and backward (gradient checkpointing
    re-runs the forward inside the backward); on exit each layer's input casting is back
    as it was, so the model runs outside autocast again.
    """
    before = [layer.cast_input_dtype_enabled for layer in layers]
    for layer in layers:
        layer.cast_input_dtype_enabled = False
    try:
        yield
    finally:
        for layer, enabled in zip(layers, before):
            layer.cast_input_dtype_enabled = enabled


def precision_layout(model: torch.nn.Module, autocast: str) -> dict[str, str]:
    """What a run computed in, for run_config.json: ``{"weights", "adapters", "autocast"}`` dtypes.

    ``weights`` is the dtype of the base model's weights, several joined by ``+`` (QLoRA:
    ``float32+nf4``, NF4 linear layers beside the fp32 norms, embeddings, tower and
    projector that kbit preparation leaves); ``adapters`` that of the LoRA weights
    (``none`` without LoRA).
    """
    base, adapters = set(), set()
    for name, parameter in model.named_parameters():
        quantised = type(parameter).__name__ == "Params4bit"  # bitsandbytes stores NF4 pairs in uint8
        if parameter.is_floating_point() or quantised:
            dtype = "nf4" if quantised else str(parameter.dtype).removeprefix("torch.")
            (adapters if "lora_" in name else base).add(dtype)
    return {"weights": _one(base), "adapters": _one(adapters) if adapters else "none", "autocast": autocast}


def _one(dtypes: set[str]) -> str:
    return "+".join(sorted(dtypes)) or "none"
