"""Write a tiny model in LLaVA-Med's original format, to exercise the converter.

The folder mirrors ``microsoft/llava-med-v1.5-mistral-7b``: an ``llava_mistral``
``config.json``, sharded safetensors with an index, the tokenizer with the checkpoint's
own tokenizer_config.json (Mistral-Instruct's text-only chat template included), and vocabulary
rows cut back to the tokenizer's base size (32000 for Mistral). Because the CLIP
config is not part of that format, the tower is also written as a CLIP folder
(``clip-vision/``) that ``mm_vision_tower`` names, relative to the checkpoint.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from slakevqa.models.tokenizer import MISTRAL_VOCAB_SIZE, mistral_tokenizer_file

if TYPE_CHECKING:  # annotations only: importing transformers at module load would cost seconds
    from transformers import LlavaConfig, PreTrainedModel, PreTrainedTokenizerBase, ProcessorMixin


VISION_FOLDER = "clip-vision"


def original_name(memory_name: str) -> str:
    """In-memory HF name -> original LLaVA-Med name (the converter's map, reversed).

    >>> original_name("model.multi_modal_projector.linear_2.bias")
    'model.mm_projector.2.bias'
    """
    name = re.sub(r"^model\.language_model\.", "model.", memory_name)
    name = re.sub(r"^model\.multi_modal_projector\.linear_1\.", "model.mm_projector.0.", name)
    name = re.sub(r"^model\.multi_modal_projector\.linear_2\.", "model.mm_projector.2.", name)
    name = re.sub(r"^model\.vision_tower\.(vision_model\.)?", "model.vision_tower.vision_tower.vision_model.", name)
    return name


def original_config(config: LlavaConfig, base_vocab: int) -> dict:
    """An ``llava_mistral`` config.json with the fields LLaVA-Med v1.5 ships (reference §2.1)."""
    text, vision = config.text_config, config.vision_config
    fields = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
              "num_key_value_heads", "hidden_act", "rms_norm_eps", "sliding_window",
              "max_position_embeddings", "bos_token_id", "eos_token_id", "initializer_range")
    out = {"_name_or_path": "mistralai/Mistral-7B-Instruct-v0.2", "architectures": ["LlavaMistralForCausalLM"],
           "model_type": "llava_mistral", **{k: getattr(text, k) for k in fields},
           "vocab_size": base_vocab, "tie_word_embeddings": False, "torch_dtype": "float32",
           "attention_dropout": 0.0, "use_cache": True, "transformers_version": "4.36.2"}
    out["rope_theta"] = text.rope_parameters["rope_theta"]  # 5.x keeps it only there
    out.update(mm_vision_tower=VISION_FOLDER, mm_hidden_size=vision.hidden_size, mm_projector_type="mlp2x_gelu",
               mm_vision_select_layer=config.vision_feature_layer, mm_vision_select_feature="patch",
               image_aspect_ratio="pad", mm_use_im_start_end=False, mm_use_im_patch_token=False,
               use_mm_proj=True, tokenizer_model_max_length=2048, tokenizer_padding_side="right")
    return out


def original_tensors(model: PreTrainedModel, base_vocab: int) -> dict:
    """The model's weights under original names, vocabulary rows cut to ``base_vocab``."""
    out = {}
    for name, tensor in model.state_dict().items():
        if name.endswith(("inv_freq", "position_ids")):
            continue
        target = original_name(name)
        if target in ("model.embed_tokens.weight", "lm_head.weight"):
            tensor = tensor[:base_vocab]
        out[target] = tensor.detach().clone().contiguous()
    return out


def write_shards(tensors: dict, folder: Path, n_shards: int) -> None:
    """Sharded safetensors + ``model.safetensors.index.json``, keys split in order."""
    from safetensors.torch import save_file

    names = sorted(tensors)
    per = -(-len(names) // n_shards)
    weight_map = {}
    for i in range(n_shards):
        shard = f"model-{i + 1:05d}-of-{n_shards:05d}.safetensors"
        chunk = {k: tensors[k] for k in names[i * per:(i + 1) * per]}
        save_file(chunk, str(folder / shard), metadata={"format": "pt"})
        weight_map.update({k: shard for k in chunk})
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")


def write_vision_folder(model: PreTrainedModel, folder: Path) -> None:
    """The CLIP tower as a ``CLIPVisionModel`` folder (``vision_model.*`` keys)."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    model.config.vision_config.save_pretrained(str(folder))
    tensors = {re.sub(r"^model\.vision_tower\.(vision_model\.)?", "vision_model.", k): v.detach().clone()
               for k, v in model.state_dict().items()
               if k.startswith("model.vision_tower.") and not k.endswith("position_ids")}
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})


# Mistral-7B-Instruct-v0.2's chat template as its tokenizer_config.json carried it in December 2023,
# when LLaVA-Med v1.5 was trained: text-only (string content), so it breaks on image+text messages.
MISTRAL_INSTRUCT_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}"
)


def special_token(content: str) -> dict:
    """A special token entry as transformers 4.36 wrote it."""
    return {"content": content, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False}


def llava_med_tokenizer_files() -> dict[str, dict]:
    """``tokenizer_config.json`` and ``special_tokens_map.json`` as microsoft/llava-med-v1.5-mistral-7b ships them.

    Mistral-7B-Instruct-v0.2's tokenizer saved by LLaVA's training recipe (transformers
    4.36): its text-only chat template, ``pad_token`` set to ``<unk>``, no ``<image>``.
    """
    specials = {"0": "<unk>", "1": "<s>", "2": "</s>"}
    config = {"add_bos_token": True, "add_eos_token": False,
              "added_tokens_decoder": {i: {**special_token(t), "special": True} for i, t in specials.items()},
              "additional_special_tokens": [], "bos_token": "<s>", "chat_template": MISTRAL_INSTRUCT_CHAT_TEMPLATE,
              "clean_up_tokenization_spaces": False, "eos_token": "</s>", "legacy": True, "model_max_length": 2048,
              "pad_token": "<unk>", "padding_side": "right", "sp_model_kwargs": {},
              "spaces_between_special_tokens": False, "tokenizer_class": "LlamaTokenizer", "unk_token": "<unk>",
              "use_default_system_prompt": False}
    special_map = {"bos_token": special_token("<s>"), "eos_token": special_token("</s>"), "pad_token": "<unk>",
                   "unk_token": special_token("<unk>")}
    return {"tokenizer_config.json": config, "special_tokens_map.json": special_map}


def write_tokenizer(tokenizer: PreTrainedTokenizerBase, folder: Path) -> int:
    """Mistral: ``tokenizer.model`` and LLaVA-Med's own config files. BPE: tokenizer.json. Returns base vocab."""
    if hasattr(tokenizer, "legacy") and mistral_tokenizer_file() is not None and len(tokenizer) > MISTRAL_VOCAB_SIZE:
        shutil.copyfile(mistral_tokenizer_file(), folder / "tokenizer.model")
        for name, content in llava_med_tokenizer_files().items():
            (folder / name).write_text(json.dumps(content, indent=2) + "\n")
        return MISTRAL_VOCAB_SIZE
    tokenizer.save_pretrained(str(folder))
    config_path = folder / "tokenizer_config.json"  # any checkpoint may carry a text-only template: this one does
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**config, "chat_template": MISTRAL_INSTRUCT_CHAT_TEMPLATE}, indent=2) + "\n")
    return len(tokenizer)


def save_llava_med_original(model: PreTrainedModel, processor: ProcessorMixin, folder: str | Path,
                            n_shards: int = 2) -> Path:
    """Write ``model`` (an HF ``LlavaForConditionalGeneration``) in LLaVA-Med's original format."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    base_vocab = write_tokenizer(processor.tokenizer, folder)
    config = original_config(model.config, base_vocab)
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    write_shards(original_tensors(model, base_vocab), folder, n_shards)
    write_vision_folder(model, folder / VISION_FOLDER)
    return folder
