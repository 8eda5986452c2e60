"""The model families slakevqa fine-tunes and evaluates, one module each, registered in one table.

=================  ==========================================  =====================================
family             checkpoints                                 recognised by (model_type / text)
=================  ==========================================  =====================================
``llava_med``      LLaVA-Med v1.5, LLaVA with Mistral          ``llava`` / ``mistral``
``llava_1_5``      LLaVA-1.5 (llava-hf, Vicuna format)         ``llava`` / ``llama``
``qwen2_5_vl``     Qwen2.5-VL, Lingshu and its kin             ``qwen2_5_vl`` / ``qwen2_5_vl_text``
``gemma3``         Gemma 3 (4B/12B/27B), MedGemma              ``gemma3`` / ``gemma3_text``
=================  ==========================================  =====================================

A checkpoint is matched on its ``config.json`` before any weight loads; an unknown one gets one
line naming these and pointing at docs/families.md ("adding a family"). Example::

    >>> family_for_config({"model_type": "llava", "text_config": {"model_type": "mistral"}}).name
    'llava_med'
"""

from __future__ import annotations

import difflib
from pathlib import Path

from slakevqa.errors import UserError
from slakevqa.models.families import llava_med
from slakevqa.models.families.family import FastPaths, ImageInputs, ImagePipeline, ModelFamily, Parts

FAMILIES: dict[str, ModelFamily] = {family.name: family for family in (llava_med.FAMILY,)}
DEFAULT_FAMILY = "llava_med"
DOCS = "docs/families.md"

__all__ = ["DEFAULT_FAMILY", "FAMILIES", "FastPaths", "ImageInputs", "ImagePipeline", "ModelFamily", "Parts",
           "family_for_config", "family_for_folder", "family_named", "family_of", "register"]


def register(family: ModelFamily) -> ModelFamily:
    """Add ``family`` to :data:`FAMILIES` (the family modules below call it; a second name is a bug)."""
    if family.name in FAMILIES and FAMILIES[family.name] is not family:
        raise ValueError(f"two model families named {family.name!r}")
    FAMILIES[family.name] = family
    return family


def family_named(name: str) -> ModelFamily:
    """The family registered as ``name``, or a UserError suggesting the nearest names."""
    try:
        return FAMILIES[name]
    except KeyError:
        close = difflib.get_close_matches(name, FAMILIES, n=3)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise UserError(f"unknown model family '{name}'; known: {', '.join(FAMILIES)}.{hint}") from None


def describe_types(config: dict) -> tuple[str | None, str | None]:
    """``(model_type, text_config.model_type)`` of a config dict (``None`` where absent)."""
    text = config.get("text_config")
    return config.get("model_type"), text.get("model_type") if isinstance(text, dict) else None


def family_for_config(config: dict, where: str = "the checkpoint") -> ModelFamily:
    """The family whose checkpoints look like ``config`` (``config.json`` as a dict), or a one-line UserError."""
    model_type, text_type = describe_types(config if isinstance(config, dict) else {})
    for family in FAMILIES.values():
        if family.recognises(model_type, text_type):
            return family
    found = f"{model_type} with a {text_type} language model" if text_type else str(model_type)
    supported = "; ".join(f"{f.name} ({f.model_type}/{'|'.join(f.text_model_types)})" for f in FAMILIES.values())
    raise UserError(f"{where}: a {found} checkpoint, which no slakevqa model family declares (supported: "
                    f"{supported}); a model asked in a format it was not trained on answers off-format without "
                    f"an error, so it is refused; see {DOCS}, 'adding a family'")


def family_for_folder(folder: str | Path) -> ModelFamily | None:
    """The family of an HF-format folder's ``config.json``; ``None`` when there is no config (not a model folder)."""
    from slakevqa.data.reading import read_json

    path = Path(folder) / "config.json"
    if not path.is_file():
        return None
    return family_for_config(read_json(path), str(folder))


def family_of(model) -> ModelFamily:
    """The family of a built model (through peft and DDP wrappers, which forward ``config``)."""
    config = getattr(model, "config", None)
    if config is None and hasattr(model, "module"):
        config = model.module.config
    return family_for_config(config_types(config) if hasattr(config, "to_dict") else dict(config or {}),
                             type(model).__name__)


def config_types(config) -> dict:
    """The part of ``config.to_dict()`` that :func:`describe_types` reads, without its deep copy of the whole
    config (~1 ms; the decoding rows ask for their model's family at every eager step)."""
    text = getattr(config, "text_config", None)
    described = {"model_type": type(config).model_type}  # to_dict writes the class's model_type, as here
    if isinstance(text, dict):
        described["text_config"] = text
    elif text is not None:
        described["text_config"] = {"model_type": type(text).model_type}
    return described


def _register_all() -> None:
    # Each family module defines FAMILY; registered here so that the table is in one place.
    import importlib

    for module in ("llava_1_5", "qwen2_5_vl", "gemma3"):
        try:
            register(importlib.import_module(f"slakevqa.models.families.{module}").FAMILY)
        except ModuleNotFoundError as error:
            if error.name != f"slakevqa.models.families.{module}":
                raise


_register_all()
