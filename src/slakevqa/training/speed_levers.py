"""Training speed levers on the language model: Liger's Triton kernels (``--kernels``) and regional compilation.

Both change how the decoder layers compute, never what: the same loss up to rounding.

* ``--kernels liger``: Liger-Kernel's (``pip install 'slakevqa[gpu]'``, Triton, CUDA only) fused
  RMSNorm, gated MLP and RoPE in the language model, each family as its ``fast.liger`` says
  (:class:`slakevqa.models.families.family.LigerKernels`: Mistral, Llama, Qwen2.5-VL's and Gemma 3's
  text models). Its fused linear cross-entropy stays off: our loss takes logits at the answer
  positions only (training/loss.py). ``auto`` takes Liger on CUDA when it imports, else the plain
  PyTorch modules; ``plain`` never does.
* ``--compile_layers``: ``torch.compile`` each decoder layer. The layers share one code object, so one
  compiled graph serves all of them (regional compilation: seconds instead of a whole-model compile).
  Compiled code runs in training steps only; evaluation and generation (KV cache, one token at a
  time) run the layers eagerly.

How Liger reaches an already built model (liger_kernel/transformers/monkey_patch.py,
``apply_liger_kernel_to_mistral(model=...)`` and its siblings, read for 0.8.5):

* it binds Liger's ``forward`` onto each RMSNorm and MLP *instance* of ``model.layers`` and
  ``model.norm``. It looks those up on ``getattr(model, model.base_model_prefix, model)``, which for
  a ``LlavaForConditionalGeneration`` is the ``LlavaModel`` (no ``layers``): it is handed the
  family's language model part here (:func:`language_model`: ``MistralModel``, ``Qwen2_5_VLTextModel``...);
* Liger's gated MLP forward is ``down_proj(act(gate_proj(x)) * up_proj(x))`` through the module
  attributes, so peft's LoRA wrappers on the three projections keep working; peft wraps no norm.
  Before or after ``get_peft_model`` is therefore the same; we apply after (the model as trained);
* RoPE has no module: it replaces the modeling module's ``apply_rotary_pos_emb``, a global the
  attention looks up at call time, so it holds for every model of that family in the process. It
  also swaps the norm and MLP classes for models built later; we put those back at once (only this
  model is patched) and the undo returned restores all of it.
"""

from __future__ import annotations

import importlib.util
import logging
from typing import Callable

from slakevqa.distributed import is_fsdp
from slakevqa.errors import UserError
from slakevqa.training.config import TrainConfig

KERNELS: tuple[str, ...] = ("plain", "liger", "auto")
MISSING = object()  # a global the modeling module did not have (Liger may add one: taken away again)
BOUND_METHODS: tuple[str, ...] = ("forward", "extra_repr", "_get_name")  # what Liger binds onto instances


def language_model(model):
    """The decoder stack (``MistralModel``: ``layers``, ``norm``) inside peft / DDP wrappers: the family's part."""
    from slakevqa.models.families import family_of

    return family_of(model).parts.module(model, "language_model")


def liger_unavailable(model, device_type: str, family=None) -> str | None:
    """Why Liger cannot run here (``None``: it can): no CUDA, a family without Liger (its ``fast.liger``),
    a language model of another type than Liger's function is written for, or not installed."""
    from slakevqa.models.families import family_of

    if device_type != "cuda":
        return f"Liger's kernels are Triton kernels for CUDA GPUs; this run is on {device_type}"
    family = family or family_of(model)
    kernels = family.fast.liger
    if kernels is None:
        return f"slakevqa does not apply Liger to the {family.name} family"
    model_type = language_model(model).config.model_type
    if model_type not in kernels.text_model_types:
        return (f"{kernels.function} is written for {' or '.join(kernels.text_model_types)} language models; "
                f"this {family.name} model's is {model_type!r}")
    if importlib.util.find_spec("liger_kernel") is None:
        return "liger-kernel is not installed: pip install 'slakevqa[gpu]' (or pip install liger-kernel)"
    try:
        import liger_kernel.transformers.monkey_patch  # noqa: F401  (imports triton and checks transformers)
    except ImportError as error:
        return f"liger-kernel does not import: {error}"
    return None


def resolve_kernels(choice: str, model, device_type: str, family=None) -> str:
    """``liger`` or ``plain``: what ``--kernels CHOICE`` means here; an explicit ``liger`` that cannot run fails.

    >>> resolve_kernels("auto", model, "cpu")
    'plain'
    """
    if choice not in KERNELS:
        raise UserError(f"--kernels {choice!r}: use one of {', '.join(KERNELS)}")
    if choice == "plain":
        return "plain"
    reason = liger_unavailable(model, device_type, family)
    if reason is None:
        return "liger"
    if choice == "liger":
        raise UserError(f"--kernels liger: {reason}; use --kernels auto (Liger where it can run) or plain")
    if device_type == "cuda":  # a GPU run that could be ~14% faster (benchmarks/RESULTS.md): say why it is not
        logging.getLogger(__name__).warning("plain kernels: %s", reason)
    return "plain"


def apply_liger(model, family=None) -> Callable[[], None]:
    """Liger's RMSNorm, gated MLP and RoPE in ``model``'s language model, as its family's ``fast.liger`` says
    (module docstring); returns the undo."""
    from liger_kernel.transformers import monkey_patch

    from slakevqa.models.families import family_of

    kernels = (family or family_of(model)).fast.liger
    modeling = importlib.import_module(kernels.modeling)
    saved = {name: vars(modeling).get(name, MISSING) for name in kernels.replaced}
    decoder = language_model(model)
    already = {id(module) for module in decoder.modules() if "forward" in vars(module)}
    getattr(monkey_patch, kernels.function)(rope=True, cross_entropy=False, fused_linear_cross_entropy=False,
                                            rms_norm=True, **{kernels.mlp: True}, model=decoder)
    # at once: everything but the functions the layers look up at call time (classes build later models;
    # a global Liger added, such as Qwen's unused M-RoPE function, serves nothing)
    restore_globals(modeling, {name: value for name, value in saved.items()
                               if value is MISSING or isinstance(value, type)})
    patched = [module for module in decoder.modules() if "forward" in vars(module) and id(module) not in already]

    def undo() -> None:
        restore_globals(modeling, saved)
        for module in patched:
            for name in BOUND_METHODS:
                vars(module).pop(name, None)

    return undo


def restore_globals(module, saved: dict) -> None:
    """Put ``saved`` back into ``module``'s globals (a :data:`MISSING` value: delete what was added)."""
    for name, value in saved.items():
        if value is MISSING:
            vars(module).pop(name, None)
        else:
            setattr(module, name, value)


def compile_layers(model, backend: str = "inductor", dynamic: bool | None = True) -> Callable[[], None]:
    """``torch.compile`` every decoder layer of the language model, for training steps; returns the undo.

    ``dynamic=True``: packed batches change their row count and length every step, so the graph is
    compiled once for any shape (``None``: first for the first shape, again on the first change).
    ``backend="aot_eager"`` traces without generating code (tests on machines without a C compiler).
    Gradient checkpointing stays as configured: transformers 5.17 checkpoints around the layer's call
    (the compiled code inside), 5.24+ checkpoints its ``forward`` (traced into the compiled graph).
    """
    import torch

    layers = list(language_model(model).layers)
    for layer in layers:
        layer._compiled_call_impl = training_only(layer, torch.compile(layer._call_impl, backend=backend,
                                                                       dynamic=dynamic))

    def undo() -> None:
        for layer in layers:
            layer._compiled_call_impl = None
        torch._dynamo.reset()  # drop the graphs (and their guards on what was patched meanwhile)

    return undo


def training_only(layer, compiled: Callable) -> Callable:
    """``compiled`` while ``layer`` trains with gradients, else its eager call (what ``nn.Module.__call__`` picks).

    ``nn.Module.compile`` sets ``_compiled_call_impl`` in the same way; evaluation and generation stay eager
    because their KV cache reads ``layer_idx`` and so would compile once per layer.
    """
    import torch

    def call(*args, **kwargs):
        if layer.training and torch.is_grad_enabled():
            return compiled(*args, **kwargs)
        return layer._call_impl(*args, **kwargs)

    return call


def liger_version() -> str:
    """The installed liger-kernel's version (``unknown`` when installed without its metadata)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("liger-kernel")
    except PackageNotFoundError:
        return "unknown"


def apply_speed_levers(model, kernels: str, compile: bool, device_type: str, family=None,
                       backend: str = "inductor") -> tuple[dict, Callable[[], None]]:
    """Apply ``--kernels`` and ``--compile_layers``; what was applied (for run_config.json) and the undo.

    Example::

        >>> applied, undo = apply_speed_levers(model, "auto", True, "cuda")
        >>> applied
        {'kernels': 'liger', 'liger_version': '0.8.5', 'compile_layers': True}
    """
    resolved = resolve_kernels(kernels, model, device_type, family)
    undos = [apply_liger(model, family)] if resolved == "liger" else []
    if compile:
        undos.append(compile_layers(model, backend=backend))
    applied = {"kernels": resolved, "compile_layers": compile}
    if resolved == "liger":
        applied = {"kernels": resolved, "liger_version": liger_version(), "compile_layers": compile}

    def undo() -> None:
        for step in reversed(undos):
            step()

    return applied, undo


def keep_activations(model, keep: int) -> None:
    """Under gradient checkpointing, the last ``keep`` decoder layers of the language model are not recomputed.

    transformers reads each layer's ``gradient_checkpointing`` at every call, so this holds from the next
    step. At the 7B shape each kept layer costs ~1.9 GiB at batch 64 and saves its forward's recompute:
    8 kept layers ran 1.06x as fast at 37.5 GiB, 12 1.16x at 46 GiB (benchmarks/RESULTS.md).
    """
    layers = language_model(model).layers
    if keep > len(layers):
        raise UserError(f"--gradient_checkpointing_keep {keep}: the language model has {len(layers)} decoder layers")
    for index, layer in enumerate(layers):
        if index >= len(layers) - keep:
            layer.gradient_checkpointing = False


def kernels_for(cfg: TrainConfig, accelerator) -> str:
    """``--kernels``, except that ``auto`` stays plain under FSDP: Liger inside sharded layers never ran on our GPUs
    (an explicit ``--kernels liger`` is the user's choice)."""
    if cfg.kernels == "auto" and is_fsdp(accelerator):
        logging.getLogger(__name__).info("--kernels auto: plain kernels under FSDP (Liger is untested there)")
        return "plain"
    return cfg.kernels
