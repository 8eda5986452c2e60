"""What a model family declares (decision 15): recognition, chat format, image inputs, parts, fast paths.

A family is data plus a few pure functions, one frozen :class:`ModelFamily` per module in this
package, registered in :data:`slakevqa.models.families.FAMILIES`. Everything family-specific in
slakevqa reads it: the prompt encoder (:attr:`ModelFamily.chat`), the image pipeline
(:attr:`ModelFamily.images`), which parameters LoRA, freezing and QLoRA touch (:attr:`ModelFamily.parts`),
and which fast paths may run (:attr:`ModelFamily.fast`). Nothing finds parts by attribute names.

One image of one question flows through a family like this::

    PIL image --images.process(image_processor, image)--> ImageInputs(tensors={"pixel_values": ...}, tokens=N)
    user text --chat (template, placeholder expanded to N)--> prompt ids
    batch     --images.collate([ImageInputs, ...])--> {"pixel_values": ..., "image_grid_thw": ...}
              --images.text_inputs(input_ids)--> {"token_type_ids": ...}   (per-token extras, Gemma 3)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from slakevqa.inputs.chat_format import ChatFormat


@dataclass(frozen=True)
class ImageInputs:
    """One image as the model takes it: its tensors (``pixel_values`` and extras) and its token count."""

    tensors: dict[str, Any]
    tokens: int

    @property
    def pixel_values(self):
        return self.tensors["pixel_values"]

    def to(self, device=None, dtype=None) -> "ImageInputs":
        """This image with its tensors copied to ``device`` as they are (None: where they are), then its floating
        ones cast there to ``dtype`` (None: kept); see :func:`to_device`."""
        return ImageInputs({name: to_device(tensor, tensor.device if device is None else device,
                                            dtype if tensor.is_floating_point() else None)
                            for name, tensor in self.tensors.items()}, self.tokens)


@dataclass(frozen=True)
class Parts:
    """Module paths of a family's parts, as ``named_modules`` writes them on the unwrapped model.

    ``projector`` may lie inside ``vision`` (Qwen2.5-VL's merger is ``model.visual.merger``): the
    projector is matched first. ``projector_leaf`` is what peft's ``modules_to_save`` names.
    """

    vision: str
    projector: str
    language_model: str
    lm_head: str = "lm_head"

    @property
    def projector_leaf(self) -> str:
        return self.projector.split(".", 1)[1] if self.projector.startswith("model.") else self.projector

    def component_of(self, parameter_name: str) -> str:
        """``lora``, ``projector``, ``vision_tower`` or ``language_model`` (``lm_head`` included), for any
        wrapping (peft's ``base_model.model.``, DDP's ``module.``, ``modules_to_save`` copies)."""
        name = "." + parameter_name
        if "lora_" in parameter_name:
            return "lora"
        if _inside(name, self.projector):
            return "projector"
        if _inside(name, self.vision):
            return "vision_tower"
        return "language_model"

    def module(self, model, part: str):
        """The ``part`` (``vision``, ``projector``, ``language_model``, ``lm_head``) of ``model``, through DDP's
        ``module`` and peft's wrappers: the one way slakevqa reaches a part (no attribute-name guessing)."""
        return unwrapped(model).get_submodule(getattr(self, part))

    def in_language_model(self, module_name: str) -> bool:
        return _inside("." + module_name, self.language_model)

    def quantization_skip(self) -> list[str]:
        """Modules bitsandbytes leaves unquantised: vision, projector, LM head (both spellings transformers
        has used: module-path prefixes and substrings)."""
        leaves = [self.vision, self.projector, self.lm_head]
        return sorted({*leaves, *(p.split(".", 1)[1] for p in leaves if p.startswith("model."))})


def unwrapped(model):
    """The transformers model inside DDP's ``module`` and peft's wrappers (parameters shared, not copied)."""
    base = getattr(model, "module", model)
    return base.get_base_model() if hasattr(base, "get_base_model") else base


def _inside(dotted_name: str, path: str) -> bool:
    # "model.visual" must match "....model.visual.blocks.0" but not "....model.visual_extra"
    tail = path.split(".", 1)[1] if path.startswith("model.") else path
    return f".{tail}." in dotted_name + "." or dotted_name.endswith(f".{tail}")


@dataclass(frozen=True)
class LigerKernels:
    """How liger-kernel's Triton kernels (``--kernels liger``) reach a family's language model.

    ``function`` is liger-kernel's ``apply_liger_kernel_to_*`` (``liger_kernel.transformers.monkey_patch``,
    read for 0.8.5), handed the language model part: it binds its forwards onto that model's RMSNorm and
    MLP instances (through the modules' attributes, so peft's LoRA wrappers keep working) and replaces
    ``replaced``, the globals of ``modeling`` (the transformers module) that the layers look up at call
    time or that build later models. slakevqa puts the classes back at once (only this model is patched)
    and everything back on undo (training/speed_levers.py). ``mlp`` is the keyword of its MLP kernel
    (``swiglu``; Gemma's GELU-gated MLP: ``geglu``); ``text_model_types`` the language models' config
    ``model_type`` it is written for.
    """

    function: str
    modeling: str
    replaced: tuple[str, ...]
    text_model_types: tuple[str, ...]
    mlp: str = "swiglu"


@dataclass(frozen=True)
class FastPaths:
    """Which of slakevqa's fast paths a family's models may take (each tested equal to the plain one).

    ``shared_prefix_eval``: evaluation's fast backend (each image's prefix once, rows, packed forward);
    ``packing``: training rows packed by image; ``varlen_attention``: flash attention's variable-length
    kernel for packed segments; ``cuda_graphs``: the decoding step replayed as a CUDA graph;
    ``feature_cache``: cached projector outputs when the vision tower is frozen;
    ``liger``: how liger-kernel's kernels reach its language model (:class:`LigerKernels`), or None;
    ``packed_prefill``: the fast backend runs each image's prefix and its questions in one packed forward
    (a causal prefix of 1-D positions: LLaVA); off, the prefix runs through the model's own forward (its
    image attention and positions: Gemma 3's bidirectional block, Qwen2.5-VL's M-RoPE) and the questions
    as rows after it.
    """

    shared_prefix_eval: bool = False
    packing: bool = False
    varlen_attention: bool = False
    cuda_graphs: bool = False
    feature_cache: bool = False
    liger: LigerKernels | None = None
    packed_prefill: bool = False

    def names(self) -> list[str]:
        return [name for name, on in (("shared prefix eval", self.shared_prefix_eval), ("packing", self.packing),
                                      ("varlen attention", self.varlen_attention), ("CUDA graphs", self.cuda_graphs),
                                      ("feature cache", self.feature_cache), ("Liger", self.liger is not None)) if on]


@dataclass(frozen=True)
class ImagePipeline:
    """How a family's images become model inputs, and how its processor is built.

    Args:
        build_processor: ``(tokenizer, **sizes) -> processor`` with the family's default preprocessing
            (PIL image backend), for tiny models and conversions.
        process: ``(processor, PIL image) -> ImageInputs`` for one image.
        collate: ``[ImageInputs, ...] -> {name: tensor}`` for a batch, in row order.
        text_inputs: ``(input_ids (B, T)) -> {name: tensor}``: per-token inputs the forward needs besides ids
            (Gemma 3's ``token_type_ids``); ``{}`` for most families.
        compose_processor: ``(folder, tokenizer, image_processor, chat_template) -> processor`` where
            ``AutoProcessor`` cannot build the family's processor on every machine (Qwen-VL's needs
            torchvision for its video part); ``None``: ``AutoProcessor`` with the PIL image processor.
        image_tokens_note: one line on sizes and token counts, for ``check`` and docs.
        pad_to_square: what mask conditioning's and LLaVA's pad-to-square mean for it.
        bidirectional: an image's tokens attend to one another both ways (Gemma 3): packed rows' masks say so.
        tokens_follow_size: an image's token count follows its pixel size (Qwen2.5-VL): evaluation answers images
            size by size, so that a batch holds few distinct prefixes (the fast backend runs one per prefix).
        tower_features: ``(vision tower, model config, pixel_values (B, ...)) -> (B, N, D)``: what the frozen tower
            hands the projector, which the feature cache keeps per image (``None``: no feature cache).
    """

    build_processor: Callable[..., Any]
    process: Callable[[Any, Any], ImageInputs]
    collate: Callable[[list[ImageInputs]], dict]
    text_inputs: Callable[[Any], dict] = field(default=lambda input_ids: {})
    compose_processor: Callable[..., Any] | None = None
    image_tokens_note: str = ""
    pad_to_square: str = ""
    bidirectional: bool = False
    tokens_follow_size: bool = False
    tower_features: Callable[[Any, Any, Any], Any] | None = None


def stacked(images: list[ImageInputs]) -> dict:
    """``pixel_values`` of fixed-size images stacked into ``(B, C, H, W)``: the LLaVA and Gemma 3 rule."""
    import torch

    return {"pixel_values": torch.stack([image.pixel_values for image in images])}


def text_rotary_1d(decoder, hidden, positions) -> list:
    """One rotary embedding of ``positions`` for every layer: the Llama-family rule."""
    embeddings = decoder.rotary_emb(hidden, positions)
    return [embeddings] * decoder.config.num_hidden_layers


@dataclass(frozen=True)
class ModelFamily:
    """One model family (module docstring). ``name`` is the registry key, recorded in fingerprints.

    Args:
        name: registry key (``llava_med``, ``llava_1_5``, ``qwen2_5_vl``, ``gemma3``).
        title: for tables and messages.
        hub_ids: checkpoints of this family users run (README's families table).
        model_type: ``config.json``'s ``model_type``.
        text_model_types: accepted ``text_config.model_type`` values (LLaVA-Med and LLaVA-1.5 share
            ``llava`` and differ here).
        model_class / processor_class: transformers class names (``AutoModelForImageTextToText`` and, on
            machines with torchvision, ``AutoProcessor`` build these from the folders we write).
        chat: the chat format (one template; our encoder renders it, our folders carry it).
        images: the image pipeline.
        parts: module paths of vision tower, projector, language model and LM head.
        fast: which fast paths apply.
        llama_factory_template: LLaMA-Factory's template name for ``convert-sft``'s ``dataset_info.json``
            ("" where none of its templates writes the family's format).
        position_ids: ``(model, input_ids, attention_mask, batch_images) -> position_ids`` of a left-padded
            prompt batch, in the layout the forward takes (3-D for M-RoPE); the plain backend continues
            them for CLOSED candidate tokens with :attr:`next_positions`.
        next_positions: ``(prompt position_ids, steps) -> position_ids`` of ``steps`` tokens after the prompt.
        notes: what a user should know (``check`` prints it, docs/families.md lists it).
        packed_positions: ``(model, packed batch) -> position_ids`` where the 1-D positions packed rows carry do
            not serve (Qwen2.5-VL's M-RoPE); ``None``: they do.
        text_rotary: ``(decoder, hidden, positions (rows, L)) -> [position embeddings per layer]`` of text
            tokens at 1-D ``positions``: what the fast backend's rows pass each decoder layer (Qwen2.5-VL's text
            tokens take the same position on its three axes; Gemma 3's layers differ by attention type).
    """

    name: str
    title: str
    hub_ids: tuple[str, ...]
    model_type: str
    text_model_types: tuple[str, ...]
    model_class: str
    processor_class: str
    chat: ChatFormat
    images: ImagePipeline
    parts: Parts
    fast: FastPaths
    llama_factory_template: str
    position_ids: Callable[..., Any]
    next_positions: Callable[[Any, int], Any]
    notes: str = ""
    text_rotary: Callable[[Any, Any, Any], list] = text_rotary_1d
    packed_positions: Callable[[Any, dict], Any] | None = None

    def recognises(self, model_type: str | None, text_model_type: str | None) -> bool:
        return model_type == self.model_type and (text_model_type in self.text_model_types)


def left_padded_positions(model, input_ids, attention_mask, batch_images: dict):
    """Positions 0, 1, ... of each row's real tokens (padding at 0): the 1-D RoPE families' rule."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def continue_positions(positions, steps: int):
    """``steps`` positions after each row's last: ``(B, steps)`` from ``(B, T)``."""
    import torch

    return positions[:, -1:] + 1 + torch.arange(steps, device=positions.device)


def prompt_batch(family: ModelFamily, prompts: list[list[int]], images: list[ImageInputs], pad_id: int,
                 model=None) -> dict:
    """Model inputs of left-padded prompts, one image each: ``input_ids``, ``attention_mask``, the family's
    image inputs (:attr:`ImagePipeline.collate`) and per-token extras (:attr:`ImagePipeline.text_inputs`);
    on ``model``'s device (:func:`on_device`, the images joined there: :func:`images_on`) where it is given.

    Example: two prompts of 5 and 3 ids give ``input_ids`` of shape (2, 5) with two pad ids opening row 1."""
    import torch

    width = max(len(ids) for ids in prompts)
    input_ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, ids in enumerate(prompts):
        input_ids[row, width - len(ids):] = torch.tensor(ids)
        mask[row, width - len(ids):] = 1
    device = None if model is None else next(model.parameters()).device
    batch = {"input_ids": input_ids, "attention_mask": mask, **family.images.collate(images_on(images, device)),
             **family.images.text_inputs(input_ids)}
    return batch if model is None else on_device(batch, model)


def packed_inputs(family: ModelFamily, model, batch: dict) -> dict:
    """``batch`` with the family's own positions where its rows are packed (a 4-D mask, or none: rows bound for the
    varlen kernel's layout) and 1-D ones do not serve."""
    mask = batch.get("attention_mask")
    if family.packed_positions is None or (mask is not None and mask.dim() != 4):
        return batch
    return {**batch, "position_ids": family.packed_positions(model, batch)}


def on_device(batch: dict, model) -> dict:
    """``batch`` on ``model``'s device; floating tensors (pixels) in its dtype, ids, grids and masks as they are."""
    parameter = next(model.parameters())
    return {name: to_device(value, parameter.device, parameter.dtype if value.is_floating_point() else None)
            for name, value in batch.items()}


def to_device(tensor, device, dtype=None):
    """``tensor`` copied to ``device`` as it is, then cast there to ``dtype`` (None: kept).

    Why not ``tensor.to(device, dtype)``: a blocking copy that also changes the dtype converts on the host (PyTorch's
    copy spares device memory that way). Joined and cast on the 2-core CPU, an evaluation batch's 23 Qwen2.5-VL
    images (English test split, 118 MB in bf16) took 144 ms (``benchmarks/pixel_transfer.py``), nine 1024 px ones
    (232 MB in fp32) 244 ms into fresh memory; on a GPU the cast is free, and the copy carries twice the bytes at
    ~20 GB/s. The values are the same: both round to nearest even.
    """
    moved = tensor.to(device)
    return moved if dtype is None else moved.to(dtype)


def images_on(images: list[ImageInputs], device) -> list[ImageInputs]:
    """``images`` with their tensors on ``device`` (None: as they are), each copied alone, as it is.

    Why: joining them on the host first copies every byte once more, in one thread. A packed training batch of 64
    Qwen2.5-VL questions (English train split) holds 38 MB of fp32 patches where its images are 512 px and 175-234
    MB where they are SLAKE's 1024 px X-rays; the host's ``torch.cat`` took 10-14 and 60-300 ms of them (2-core
    CPU), against a training step of about a second. On the device the join costs next to nothing.
    """
    return images if device is None else [image.to(device) for image in images]


def stop_ids(family: ModelFamily, tokenizer) -> list[int]:
    """The family's end-of-turn token and the tokenizer's EOS (Qwen's and Gemma's may differ from their turn end)."""
    stop = tokenizer.convert_tokens_to_ids(family.chat.stop_token)
    return list(dict.fromkeys(i for i in (stop, tokenizer.eos_token_id) if i is not None))
