"""Convert an original LLaVA-Med checkpoint into a Hugging Face ``LlavaForConditionalGeneration``.

Key map (first match wins; the target is the llava-hf on-disk layout that every
transformers 5.x renames into its in-memory layout at load time)::

    model.vision_tower.vision_tower.vision_model.X  ->  vision_tower.vision_model.X
    model.mm_projector.0.X                          ->  multi_modal_projector.linear_1.X
    model.mm_projector.2.X                          ->  multi_modal_projector.linear_2.X
    model.{embed_tokens,layers,norm}.X              ->  language_model.model.{...}.X
    lm_head.weight                                  ->  language_model.lm_head.weight
    *.rotary_emb.inv_freq, *.position_ids, model.image_newline  ->  dropped

The tokenizer gains ``<image>`` (32000) and ``<pad>`` (32001); ``embed_tokens`` and
``lm_head`` grow to 32064 rows (a multiple of 64), new rows set to the mean of the old
ones. Shards are converted one at a time (memory: one shard), in the source dtype.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from slakevqa.errors import UserError
from slakevqa.files import atomic_folder, check_replaceable, refuse_overlap
from slakevqa.models import original
from slakevqa.models.families.llava_med import build_processor
from slakevqa.models.processor import save_processor
from slakevqa.models.tiny import padded_vocab_size
from slakevqa.models.tokenizer import IMAGE_TOKEN, add_llava_tokens, load_sentencepiece_tokenizer

Log = Callable[[str], None]  # where progress lines go (print, logger.info, a list.append)

if TYPE_CHECKING:  # annotations only: importing transformers at module load would cost seconds
    import torch
    from transformers import CLIPVisionConfig, LlavaConfig, PreTrainedTokenizerBase

ORIGINAL_TO_HF: tuple[tuple[str, str], ...] = (
    (r"^model\.vision_tower\.vision_tower\.vision_model\.", "vision_tower.vision_model."),
    (r"^model\.mm_projector\.0\.", "multi_modal_projector.linear_1."),
    (r"^model\.mm_projector\.2\.", "multi_modal_projector.linear_2."),
    (r"^model\.(embed_tokens|layers|norm)\.", r"language_model.model.\1."),
    (r"^lm_head\.", "language_model.lm_head."),
)
DROPPED = re.compile(r"(\.rotary_emb\.inv_freq|\.position_ids|^model\.image_newline)$")
VOCAB_ROWS = ("language_model.model.embed_tokens.weight", "language_model.lm_head.weight")
# Bump when converted folders change: the conversion cache (models/loading.py) keys on it, so
# folders converted by an older slakevqa are converted again. 2: LLaVA-Med's chat template
# replaces the text-only one the source tokenizer_config.json carries.
CONVERTER_VERSION = 2
TEXT_FIELDS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
               "num_key_value_heads", "head_dim", "hidden_act", "rms_norm_eps", "rope_theta",
               "sliding_window", "max_position_embeddings", "initializer_range", "attention_dropout",
               "bos_token_id", "eos_token_id")


@dataclass(frozen=True)
class ConversionReport:
    """What a conversion did; ``vision_max_abs_diff`` compares checkpoint and CLIP-folder vision weights."""

    source: str
    destination: str
    n_tensors: int
    vocab: tuple[int, int]  # (before, after)
    dtype: str
    vision_source: str  # "checkpoint" or the CLIP folder
    vision_max_abs_diff: float | None
    seconds: float
    converter_version: int = CONVERTER_VERSION


def map_key(name: str) -> str | None:
    """The HF name of an original tensor, None if it is dropped, KeyError if unknown.

    >>> map_key("model.mm_projector.0.weight")
    'multi_modal_projector.linear_1.weight'
    """
    if DROPPED.search(name):
        return None
    for pattern, target in ORIGINAL_TO_HF:
        if re.match(pattern, name):
            return re.sub(pattern, target, name, count=1)
    raise KeyError(name)


def hf_disk_name(memory_name: str) -> str:
    """In-memory ``LlavaForConditionalGeneration`` name -> llava-hf on-disk name (5.17 and 5.24)."""
    name = re.sub(r"^lm_head\.", "language_model.lm_head.", memory_name)
    name = re.sub(r"^model\.language_model\.", "language_model.model.", name)
    name = re.sub(r"^model\.multi_modal_projector\.", "multi_modal_projector.", name)
    if not name.startswith("model.vision_tower.vision_model."):  # 5.24 drops the level in memory
        name = re.sub(r"^model\.vision_tower\.", "model.vision_tower.vision_model.", name)
    return re.sub(r"^model\.vision_tower\.", "vision_tower.", name)


def hf_config(config: dict, vision_config: CLIPVisionConfig, vocab_size: int,
              tokenizer: PreTrainedTokenizerBase, dtype: str) -> LlavaConfig:
    """The ``LlavaConfig`` equivalent to an original LLaVA-Med config."""
    from transformers import LlavaConfig, MistralConfig

    text = MistralConfig(**{k: config[k] for k in TEXT_FIELDS if k in config},
                         vocab_size=vocab_size, tie_word_embeddings=False,
                         pad_token_id=tokenizer.pad_token_id)
    n_patches = (vision_config.image_size // vision_config.patch_size) ** 2
    strategy = "full" if config.get("mm_vision_select_feature") == "cls_patch" else "default"
    hf = LlavaConfig(vision_config=vision_config, text_config=text,
                     image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
                     projector_hidden_act="gelu", multimodal_projector_bias=True,
                     vision_feature_layer=config.get("mm_vision_select_layer", -2),
                     vision_feature_select_strategy=strategy,
                     image_seq_length=n_patches + (strategy == "full"), tie_word_embeddings=False)
    hf.dtype = dtype
    return hf


def expected_shapes(config: LlavaConfig) -> dict[str, tuple[int, ...]]:
    """On-disk names and shapes of every parameter the HF model needs (built on ``meta``)."""
    import torch
    from transformers import LlavaForConditionalGeneration

    with torch.device("meta"):
        model = LlavaForConditionalGeneration(config)
    return {hf_disk_name(name): tuple(p.shape) for name, p in model.named_parameters()}


def source_tokenizer(folder: Path, tokenizer_folder: Path | None = None):
    """The checkpoint's tokenizer with ``<image>``/``<pad>`` added."""
    from transformers import PreTrainedTokenizerFast

    folder = Path(tokenizer_folder or folder)
    if (folder / "tokenizer.model").is_file():
        tokenizer = load_sentencepiece_tokenizer(folder)
    elif (folder / "tokenizer.json").is_file():  # not AutoTokenizer: it would read the llava_mistral config
        tokenizer = PreTrainedTokenizerFast.from_pretrained(str(folder))
    else:
        raise UserError(f"{folder}: no tokenizer.model or tokenizer.json; pass --tokenizer FOLDER")
    add_llava_tokens(tokenizer)
    return tokenizer


def check_keys(shapes: dict[str, tuple[int, ...]], expected: dict[str, tuple[int, ...]],
               folder: Path, vision_elsewhere: bool) -> None:
    """Every needed tensor present with the right shape (vocab rows aside), nothing unknown."""
    unknown, mapped = [], {}
    for name, shape in shapes.items():
        try:
            target = map_key(name)
        except KeyError:
            unknown.append(name)
            continue
        if target is not None and not (vision_elsewhere and target.startswith("vision_tower.")):
            mapped[target] = shape
    if unknown:
        raise UserError(f"{folder}: {len(unknown)} unexpected tensors, not part of a LLaVA-Med v1.5 "
                        f"checkpoint: {', '.join(sorted(unknown)[:4])}")
    needed = {k for k in expected if not (vision_elsewhere and k.startswith("vision_tower."))}
    missing = sorted(needed - set(mapped))
    if missing:
        hint = "; pass --vision-from CLIP_FOLDER" if all(m.startswith("vision_tower.") for m in missing) else ""
        raise UserError(f"{folder}: {len(missing)} tensors missing, e.g. {', '.join(missing[:3])}{hint}")
    wrong = [f"{k} {mapped[k]} != {expected[k]}" for k in sorted(mapped)
             if k not in VOCAB_ROWS and mapped[k] != expected[k]]
    if wrong:
        raise UserError(f"{folder}: {len(wrong)} tensors have unexpected shapes, e.g. {wrong[0]} "
                        "(does config.json match the weights?)")


def grow_rows(tensor: torch.Tensor, rows: int) -> torch.Tensor:
    """``tensor`` with extra rows set to the mean of the existing ones (new-token init)."""
    import torch

    extra = rows - tensor.shape[0]
    if extra <= 0:
        return tensor
    mean = tensor.float().mean(dim=0, keepdim=True).to(tensor.dtype)
    return torch.cat([tensor, mean.expand(extra, -1)], dim=0)


def convert_tensors(tensors: dict, vocab_size: int, dtype: torch.dtype, skip_vision: bool) -> dict:
    """Rename one shard's tensors, grow the vocabulary rows, cast to ``dtype``."""
    out = {}
    for name, tensor in tensors.items():
        target = map_key(name)
        if target is None or (skip_vision and target.startswith("vision_tower.")):
            continue
        if target in VOCAB_ROWS:
            tensor = grow_rows(tensor, vocab_size)
        out[target] = tensor.to(dtype).contiguous()
    return out


def vision_difference(tensors: dict, clip: dict) -> tuple[float, str]:
    """Largest |checkpoint - CLIP| over the vision tensors of one shard, and where."""
    worst, where = 0.0, ""
    for name, tensor in tensors.items():
        target = map_key(name)
        if target is None or not target.startswith("vision_tower.") or target not in clip:
            continue
        diff = (tensor.float() - clip[target].float()).abs().max().item()
        if diff >= worst:
            worst, where = diff, target
    return worst, where


def write_weights(files: list[Path], out: Path, vocab_size: int, dtype: torch.dtype, clip: dict | None,
                  log: Log) -> tuple[int, float | None]:
    """Convert shard by shard into ``out``; returns (tensor count, vision max-abs diff or None)."""
    from safetensors.torch import save_file

    parts, worst, where = [], None, ""
    for path in files:
        tensors = original.load_tensors(path)
        if clip is not None:
            diff, name = vision_difference(tensors, clip)
            if name and (worst is None or diff >= worst):
                worst, where = diff, name
        parts.append(convert_tensors(tensors, vocab_size, dtype, skip_vision=clip is not None))
        if parts[-1]:  # a shard that held only replaced vision tensors leaves nothing
            save_file(parts[-1], str(out / f".part-{len(parts)}"), metadata={"format": "pt"})
        parts[-1] = {name: t.numel() * t.element_size() for name, t in parts[-1].items()}
        del tensors  # keep one shard in memory
    if clip is not None:
        save_file({k: v.to(dtype).contiguous() for k, v in clip.items()}, str(out / f".part-{len(parts) + 1}"),
                  metadata={"format": "pt"})
        parts.append({k: v.numel() * v.element_size() for k, v in clip.items()})
    n_tensors = name_shards(out, parts, log)
    if where:
        log(f"  vision weights from the CLIP folder; largest |checkpoint - CLIP| = {worst:.6g} (in {where})")
    return n_tensors, worst


def name_shards(out: Path, parts: list[dict[str, int]], log: Log) -> int:
    """Rename ``.part-N`` files to ``model-0000i-of-0000n.safetensors`` and write the index."""
    kept = [(i + 1, sizes) for i, sizes in enumerate(parts) if sizes]
    weight_map = {}
    for j, (i, sizes) in enumerate(kept):
        shard = "model.safetensors" if len(kept) == 1 else f"model-{j + 1:05d}-of-{len(kept):05d}.safetensors"
        (out / f".part-{i}").rename(out / shard)
        weight_map.update({name: shard for name in sizes})
        log(f"  wrote {shard} ({len(sizes)} tensors)")
    if len(kept) > 1:
        total = sum(sum(sizes.values()) for _, sizes in kept)
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    return len(weight_map)


def write_side_files(out: Path, hf: LlavaConfig, tokenizer: PreTrainedTokenizerBase,
                     pad_to_square: bool) -> None:
    """config.json, generation_config.json, tokenizer and processor (chat template included)."""
    from transformers import GenerationConfig

    hf.save_pretrained(str(out))
    GenerationConfig(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                     pad_token_id=tokenizer.pad_token_id).save_pretrained(str(out))
    vision = hf.vision_config
    processor = build_processor(tokenizer, image_size=vision.image_size, patch_size=vision.patch_size)
    processor.image_processor.do_pad = pad_to_square  # image_aspect_ratio "pad" (v1.5) -> True
    save_processor(processor, out)  # our chat template, not the one the source tokenizer_config carries


def convert_checkpoint(source: str | Path, destination: str | Path, vision_from: str | Path | None = None,
                       tokenizer_folder: str | Path | None = None, dtype: str | None = None,
                       overwrite: bool = False, log: Log = print) -> ConversionReport:
    """Convert an original LLaVA-Med folder into an HF ``LlavaForConditionalGeneration`` folder.

    Args:
        source: folder with ``config.json`` (``model_type: llava_mistral``), weights, tokenizer.
        destination: output folder; written to a temporary sibling, then renamed.
        vision_from: a CLIP folder whose vision weights replace the checkpoint's (what
            upstream's loader does: it loads ``mm_vision_tower`` from the hub).
        tokenizer_folder: where ``tokenizer.model`` lives, if not in ``source``.
        dtype: ``bfloat16``/``float16``/``float32``; default: the source config's ``torch_dtype``.
        overwrite: replace an existing ``destination``.
        log: where progress lines go.

    Example::

        $ slakevqa convert-checkpoint llava-med-v1.5-mistral-7b llava-med-hf
        >>> LlavaForConditionalGeneration.from_pretrained("llava-med-hf")   # plain transformers
    """
    import torch

    start, source, destination = time.perf_counter(), Path(source), Path(destination)
    config = original.read_llava_med_config(source)
    files = original.weight_files(source)
    refuse_overlap(destination, source, "DST", "SRC")
    check_replaceable(destination, overwrite, "DST")
    clip_folder = Path(vision_from) if vision_from else None
    tokenizer = source_tokenizer(source, Path(tokenizer_folder) if tokenizer_folder else None)
    vocab = padded_vocab_size(max(len(tokenizer), config.get("vocab_size", 0)))
    dtype = dtype or config.get("torch_dtype") or "float32"
    hf = hf_config(config, original.vision_config_for(config, source, clip_folder), vocab, tokenizer, dtype)
    clip = checked_sources(files, hf, source, clip_folder)
    log(f"converting {source} -> {destination} ({len(files)} weight files, {dtype})")
    with atomic_folder(destination) as partial:  # an old destination stays whole until this one is
        n, diff = write_weights(files, partial, vocab, getattr(torch, dtype), clip, log)
        write_side_files(partial, hf, tokenizer, pad_to_square=config.get("image_aspect_ratio", "pad") == "pad")
        report = ConversionReport(str(source), str(destination), n, (config.get("vocab_size", 0), vocab), dtype,
                                  str(clip_folder) if clip_folder else "checkpoint", diff,
                                  time.perf_counter() - start)
        (partial / "slakevqa_conversion.json").write_text(json.dumps(report.__dict__, indent=2) + "\n")
    return report


def checked_sources(files: list[Path], hf: LlavaConfig, source: Path, clip_folder: Path | None) -> dict | None:
    """Check every tensor name and shape before writing; return the CLIP tensors, if any."""
    shapes = {k: v for path in files for k, v in file_shapes(path).items()}
    expected = expected_shapes(hf)
    check_keys(shapes, expected, source, vision_elsewhere=clip_folder is not None)
    if clip_folder is None:
        return None
    clip = {"vision_tower." + k: v for k, v in original.clip_vision_tensors(clip_folder).items()}
    check_keys_clip(clip, expected, clip_folder)
    return clip


def file_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """:func:`original.tensor_shapes`, with a damaged or refused weight file as a one-line UserError naming it."""
    import pickle

    from slakevqa.models.model_files import safetensors_problem, unreadable_weights

    problem = safetensors_problem(path) if path.suffix == ".safetensors" else None
    if problem:
        raise UserError(f"{path}: damaged weights file ({problem}); an interrupted download or copy? "
                        "fetch or write it again")
    try:
        return original.tensor_shapes(path)
    except (pickle.UnpicklingError, RuntimeError) as error:
        clear = unreadable_weights(path, error)
        if clear is None:
            raise
        raise clear from error


def check_keys_clip(clip: dict, expected: dict[str, tuple[int, ...]], folder: Path) -> None:
    """The CLIP folder must provide exactly the vision tensors the model needs."""
    needed = {k for k in expected if k.startswith("vision_tower.")}
    missing, extra = sorted(needed - set(clip)), sorted(set(clip) - needed)
    wrong = [k for k in sorted(needed & set(clip)) if tuple(clip[k].shape) != expected[k]]
    if missing or extra or wrong:
        first = (missing or extra or wrong)[0]
        raise UserError(f"{folder}: CLIP vision weights do not fit the model ({len(missing)} missing, "
                        f"{len(extra)} unexpected, {len(wrong)} of the wrong shape, e.g. {first})")
