"""Which parameters train: LoRA targets, projector, vision tower, last LLM layers, full fine-tuning.

Where each part lives is the model family's :class:`~slakevqa.models.families.Parts` (LLaVA's
``multi_modal_projector``, Qwen2.5-VL's ``visual.merger``, Gemma 3's projector of raw parameters);
nothing here guesses from attribute names. The reference toolkit had two silent defects, both
fixed by construction:

* its LoRA targets ``q_proj,k_proj,v_proj,o_proj`` also matched the CLIP vision
  tower's attention (every family's vision encoder has such names). We resolve targets to full
  module names inside the language model (``lora_scope="language_model"``, the default) and hand
  peft that explicit list;
* it marked the projector trainable *before* ``get_peft_model``, which freezes
  every non-LoRA parameter again. We pass the projector as peft ``modules_to_save``
  (so it is trained *and* saved with the adapter) and apply every other unfreeze
  after wrapping.

Target specs (``--lora_target_modules``), as the reference toolkit accepts them::

    q_proj,v_proj                 comma list of module names
    list:q_proj,v_proj            the same, explicitly
    ["q_proj", "v_proj"]          JSON list
    re:.*layers\\.(30|31)\\..*_proj regex over full module names (also any spec with | * ( [ ^ $ \\)
    all-linear                    every nn.Linear of the language model
"""

from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass

from slakevqa.errors import UserError

COMPONENTS: tuple[str, ...] = ("vision_tower", "projector", "language_model", "lora")
_REGEX_HINTS = set("|*()[]^$\\")


@dataclass(frozen=True)
class TargetSpec:
    """A parsed target spec: leaf names, or one regex over full module names."""

    names: tuple[str, ...] = ()
    regex: str | None = None


def parse_target_spec(spec: str) -> TargetSpec:
    """Parse ``--lora_target_modules`` (forms in the module docstring).

    >>> parse_target_spec("q_proj, v_proj")
    TargetSpec(names=('q_proj', 'v_proj'), regex=None)
    >>> parse_target_spec("re:.*(q|v)_proj")
    TargetSpec(names=(), regex='.*(q|v)_proj')
    """
    spec = spec.strip()
    if spec.startswith("re:"):
        return TargetSpec(regex=spec[3:])
    if spec.startswith("list:"):
        return TargetSpec(names=_split_names(spec[5:]))
    if spec.startswith("["):
        try:
            items = json.loads(spec)
        except json.JSONDecodeError as error:
            raise UserError(f"--lora_target_modules: invalid JSON list ({error.msg})") from None
        return TargetSpec(names=tuple(str(item) for item in items))
    if any(char in _REGEX_HINTS for char in spec) or ".*" in spec:
        return TargetSpec(regex=spec)
    return TargetSpec(names=_split_names(spec))


def _split_names(text: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in text.split(",") if name.strip())


def parts_of(model):
    """The model family's :class:`~slakevqa.models.families.Parts` of ``model`` (through peft/DDP wrappers)."""
    from slakevqa.models.families import family_of

    return family_of(model).parts


def component_of(parameter_name: str, parts=None) -> str:
    """``vision_tower``, ``projector``, ``lora`` or ``language_model`` (which includes ``lm_head``).

    ``parts``: the family's (default LLaVA's module paths)."""
    if parts is None:
        from slakevqa.models.families.llava_med import LLAVA_PARTS as parts
    return parts.component_of(parameter_name)


def linear_module_names(model, scope: str = "language_model", parts=None) -> list[str]:
    """Full names of the ``nn.Linear`` modules LoRA may wrap (``lm_head`` and the projector excluded)."""
    import torch

    if scope not in ("language_model", "all"):
        raise UserError(f"unknown LoRA scope '{scope}': use language_model or all")
    parts = parts or parts_of(model)
    names = []
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear) or name.endswith(parts.lm_head) \
                or parts.component_of(name) == "projector" or "lora_" in name or name.endswith("base_layer"):
            continue
        if scope == "all" or parts.in_language_model(name):
            names.append(name)
    return names


def resolve_lora_targets(model, spec: str, scope: str = "language_model", parts=None) -> list[str]:
    """Full module names matching ``spec`` inside ``scope``; zero matches is an error naming close ones."""
    candidates = linear_module_names(model, scope, parts)
    target = parse_target_spec(spec)
    if spec.strip() == "all-linear":
        matched = candidates
    elif target.regex is not None:
        try:
            pattern = re.compile(target.regex)
        except re.error as error:
            raise UserError(f"--lora_target_modules: invalid regex {target.regex!r} ({error})") from None
        matched = [name for name in candidates if pattern.fullmatch(name)]
    else:
        matched = [name for name in candidates if name.rsplit(".", 1)[-1] in target.names]
    if not matched:
        raise UserError(no_match_message(spec, candidates, scope))
    return matched


def no_match_message(spec: str, candidates: list[str], scope: str) -> str:
    leaves = sorted({name.rsplit(".", 1)[-1] for name in candidates})
    close = difflib.get_close_matches(spec.split(",")[0].strip().removeprefix("re:"), leaves, n=5, cutoff=0.3)
    examples = ", ".join(candidates[:3])
    return (f"--lora_target_modules {spec!r} matches no linear layer in the {scope.replace('_', ' ')}; "
            f"module names there: {', '.join(close or leaves[:12])} (full names look like {examples})")


def set_requires_grad(model, predicate, value: bool = True) -> int:
    """Set ``requires_grad`` on parameters whose name satisfies ``predicate``; returns how many."""
    count = 0
    for name, parameter in model.named_parameters():
        if predicate(name):
            parameter.requires_grad_(value)
            count += 1
    return count


def last_layer_prefixes(model, count: int, parts=None) -> tuple[str, ...]:
    """Name fragments of the last ``count`` decoder layers of the language model."""
    parts = parts or parts_of(model)
    layers = model.config.text_config.num_hidden_layers
    if count > layers:
        raise UserError(f"--unfreeze_last_llm_layers {count}: the language model has only {layers} layers")
    stack = parts.language_model.split(".", 1)[1] if parts.language_model.startswith("model.") else parts.language_model
    return tuple(f"{stack}.layers.{i}." for i in range(layers - count, layers))


def configure_trainable(model, use_lora: bool = True, lora_r: int = 8, lora_alpha: int = 16,
                        lora_dropout: float = 0.05, lora_target_modules: str = "q_proj,k_proj,v_proj,o_proj",
                        lora_scope: str = "language_model", tune_mm_projector: bool = True,
                        freeze_vision_tower: bool = True, unfreeze_last_llm_layers: int = 0):
    """Freeze and unfreeze as the flags say; returns the model to train (a PeftModel under LoRA).

    Without LoRA this is full fine-tuning of the language model (and ``lm_head``);
    the projector and vision tower follow their own flags in both modes. The parts are the
    model family's (:func:`parts_of`).
    """
    parts = parts_of(model)
    set_requires_grad(model, lambda name: True, False)
    if use_lora:
        from peft import LoraConfig, get_peft_model

        targets = resolve_lora_targets(model, lora_target_modules, lora_scope, parts)
        config = LoraConfig(r=lora_r, lora_alpha=lora_alpha, lora_dropout=lora_dropout, bias="none",
                            target_modules=targets, task_type="CAUSAL_LM",
                            modules_to_save=[parts.projector_leaf] if tune_mm_projector else None)
        model = get_peft_model(model, config)
    else:
        set_requires_grad(model, lambda name: parts.component_of(name) == "language_model")
        set_requires_grad(model, lambda name: parts.component_of(name) == "projector", tune_mm_projector)
    if not freeze_vision_tower:
        set_requires_grad(model, lambda name: parts.component_of(name) == "vision_tower")
    if unfreeze_last_llm_layers:
        prefixes = last_layer_prefixes(model, unfreeze_last_llm_layers, parts)
        set_requires_grad(model, lambda name: "lora_" not in name and any(p in name for p in prefixes))
    return model


def parameter_counts(model) -> dict[str, dict[str, int]]:
    """``{component: {"total": n, "trainable": n}}`` for vision tower, projector, language model, LoRA.

    Under peft the projector appears twice (the frozen original and the trained
    copy in ``modules_to_save``); both are counted, as both are in memory.
    """
    parts = parts_of(model)
    counts = {component: {"total": 0, "trainable": 0} for component in COMPONENTS}
    for name, parameter in model.named_parameters():
        entry = counts[parts.component_of(name)]
        entry["total"] += parameter.numel()
        entry["trainable"] += parameter.numel() if parameter.requires_grad else 0
    return counts
