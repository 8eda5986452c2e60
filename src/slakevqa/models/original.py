"""Reading original-format LLaVA-Med checkpoints (``model_type: llava_mistral``).

Layout, as ``microsoft/llava-med-v1.5-mistral-7b`` ships it::

    config.json                      model_type "llava_mistral", Mistral fields + mm_* fields
    model-0000{1..4}-of-00004.safetensors + model.safetensors.index.json
    tokenizer.model, tokenizer_config.json, ...

Tensors: ``model.{embed_tokens,layers,norm}.*``, ``lm_head.weight``,
``model.mm_projector.{0,2}.*`` and ``model.vision_tower.vision_tower.vision_model.*``.
The CLIP config is not in the checkpoint: ``mm_vision_tower`` names it
(``openai/clip-vit-large-patch14-336``), see :func:`vision_config_for`.
``.bin`` weights are read with ``torch.load(weights_only=True)`` only.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from slakevqa.errors import UserError

LLAVA_MED_MODEL_TYPES = ("llava_mistral",)

# The OpenAI CLIP towers LLaVA-family checkpoints name in `mm_vision_tower`; their
# vision configs are fixed, so no download is needed to convert.
KNOWN_CLIP_TOWERS: dict[str, dict] = {
    "openai/clip-vit-large-patch14-336": dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                                              num_attention_heads=16, image_size=336, patch_size=14,
                                              projection_dim=768),
    "openai/clip-vit-large-patch14": dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                                          num_attention_heads=16, image_size=224, patch_size=14,
                                          projection_dim=768),
}


def read_config(folder: Path) -> dict:
    """``config.json`` of a checkpoint folder, or a :class:`UserError` saying what is wrong."""
    path = Path(folder) / "config.json"
    if not Path(folder).is_dir():
        raise UserError(f"{folder}: no such folder")
    if not path.is_file():
        raise UserError(f"{folder}: no config.json, so this is not a model checkpoint folder")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise UserError(f"{path}: not valid JSON ({error})") from error


def is_llava_med_config(config: dict) -> bool:
    """True for an original LLaVA-Med config (``llava_mistral``), False for HF-format ones."""
    return config.get("model_type") in LLAVA_MED_MODEL_TYPES or \
        "LlavaMistralForCausalLM" in config.get("architectures", [])


def read_llava_med_config(folder: Path) -> dict:
    """The original config, checked for the features our converter supports."""
    config = read_config(folder)
    if not is_llava_med_config(config):
        raise UserError(f"{folder}: model_type is '{config.get('model_type')}', not 'llava_mistral'; "
                        "this is not an original-format LLaVA-Med checkpoint (an HF-format model loads "
                        "directly with 'slakevqa check --model')")
    if config.get("mm_projector_type", "mlp2x_gelu") != "mlp2x_gelu":
        raise UserError(f"{folder}: mm_projector_type '{config['mm_projector_type']}' is not supported "
                        "(LLaVA-Med v1.5 uses 'mlp2x_gelu')")
    if config.get("mm_use_im_start_end") or config.get("mm_use_im_patch_token"):
        raise UserError(f"{folder}: mm_use_im_start_end/mm_use_im_patch_token are set; only the "
                        "LLaVA-Med v1.5 layout (both false) is supported")
    return config


def weight_files(folder: Path) -> list[Path]:
    """The checkpoint's weight files, safetensors first; every indexed shard must exist."""
    folder = Path(folder)
    for index_name, single in (("model.safetensors.index.json", "model.safetensors"),
                               ("pytorch_model.bin.index.json", "pytorch_model.bin")):
        index = folder / index_name
        if index.is_file():
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            missing = [name for name in shards if not (folder / name).is_file()]
            if missing:
                raise UserError(f"{folder}: {len(missing)} of {len(shards)} shards listed in {index_name} "
                                f"are missing ({', '.join(missing[:3])}); download them again")
            return [folder / name for name in shards]
        if (folder / single).is_file():
            return [folder / single]
    loose = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("pytorch_model*.bin"))
    if not loose:
        raise UserError(f"{folder}: no weights (*.safetensors or pytorch_model*.bin)")
    return loose


def tensor_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Names and shapes of one weight file, without reading safetensors data."""
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            return {name: tuple(handle.get_slice(name).get_shape()) for name in handle.keys()}
    return {name: tuple(tensor.shape) for name, tensor in load_tensors(path).items()}


def load_tensors(path: Path) -> dict:
    """All tensors of one weight file; ``.bin`` only through ``weights_only=True``."""
    import torch

    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # old non-zip pickles cannot be memory-mapped
        return torch.load(str(path), map_location="cpu", weights_only=True)


def iter_files(files: list[Path]) -> Iterator[tuple[Path, dict]]:
    """Yield ``(file, tensors)`` one file at a time, so memory holds one shard."""
    for path in files:
        yield path, load_tensors(path)


def local_vision_folder(config: dict, folder: Path) -> Path | None:
    """``mm_vision_tower`` as a local CLIP folder (absolute, or relative to the checkpoint)."""
    name = config.get("mm_vision_tower") or ""
    for candidate in (Path(name), Path(folder) / name):
        if name and (candidate / "config.json").is_file():
            return candidate
    return None


def vision_config_for(config: dict, folder: Path, clip_folder: Path | None = None):
    """The ``CLIPVisionConfig`` of the tower the checkpoint was trained with.

    Order: an explicit CLIP folder, ``mm_vision_tower`` as a local folder, then the
    known OpenAI towers. Unknown hub names need ``--vision-from``.
    """
    from transformers import CLIPConfig, CLIPVisionConfig

    local = clip_folder or local_vision_folder(config, folder)
    if local is not None:
        raw = json.loads((Path(local) / "config.json").read_text())
        if raw.get("model_type") == "clip":
            return CLIPConfig.from_pretrained(str(local)).vision_config
        return CLIPVisionConfig.from_pretrained(str(local))
    name = config.get("mm_vision_tower", "")
    if name in KNOWN_CLIP_TOWERS:
        return CLIPVisionConfig(hidden_act="quick_gelu", **KNOWN_CLIP_TOWERS[name])
    raise UserError(f"{folder}: unknown vision tower '{name}'; pass --vision-from CLIP_FOLDER "
                    "(a CLIP or CLIPVisionModel folder) so its config is known")


def clip_vision_tensors(clip_folder: Path) -> dict:
    """The vision tensors of a CLIP folder, named ``vision_model.*``.

    Accepts ``CLIPModel`` (text tower and projections dropped) and ``CLIPVisionModel``
    folders, which both store ``vision_model.*`` keys.
    """
    tensors: dict = {}
    for _, file_tensors in iter_files(weight_files(clip_folder)):
        tensors.update({name: t for name, t in file_tensors.items()
                        if name.startswith("vision_model.") and not name.endswith("position_ids")})
    if not tensors:
        raise UserError(f"{clip_folder}: no 'vision_model.*' tensors; is this a CLIP checkpoint?")
    return tensors
