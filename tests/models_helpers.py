"""Independent re-implementations of what upstream LLaVA-Med does, for the model-layer tests.

Nothing here imports slakevqa: each function restates an upstream behaviour from
microsoft/LLaVA-Med v1.5 (``tokenizer_image_token``, ``expand2square`` +
``CLIPImageProcessor``, ``LlavaMistralForCausalLM`` forward) with plain
sentencepiece / PIL / numpy / torch, so the tests compare our code against it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

IMAGE_TOKEN_INDEX = -200  # upstream's placeholder id
CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073])
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711])

SLAKE_QUESTIONS = (  # real SLAKE English questions (train split)
    "What modality is used to take this image?",
    "Which part of the body does this image belong to?",
    "Does the picture contain liver?",
    "Where is the abnormality located? ",
    "How many kidneys are in this image?",
    "Is this a T2 weighted MRI image, or a T1?",
)


def sentencepiece_model():
    """The real Mistral-7B SentencePiece model, loaded with sentencepiece itself."""
    from importlib.resources import files

    import sentencepiece

    return sentencepiece.SentencePieceProcessor(
        model_file=str(files("mistral_common") / "data" / "tokenizer.model.v1"))


def upstream_encode(sp, text: str) -> list[int]:
    """Slow ``LlamaTokenizer(text).input_ids``: BOS + sentencepiece, ``</s>`` kept special."""
    ids = [1]
    for i, part in enumerate(text.split("</s>")):
        if i:
            ids.append(2)
        if part:
            ids.extend(sp.encode(part))
    return ids


def upstream_prompt_ids(sp, prompt: str, n_image_tokens: int, image_id: int = 32000) -> list[int]:
    """``tokenizer_image_token`` (llava/mm_utils.py), -200 expanded to ``n_image_tokens`` ids."""
    chunks = [upstream_encode(sp, chunk) for chunk in prompt.split("<image>")]
    ids = [chunks[0][0]]  # the first chunk keeps its BOS; later chunks drop theirs
    for i, chunk in enumerate(chunks):
        if i:
            ids.extend([image_id] * n_image_tokens)
        ids.extend(chunk[1:])
    return ids


def upstream_pixels(image: Image.Image, size: int) -> np.ndarray:
    """``expand2square`` (centred, mean colour) + CLIP preprocess, in numpy: (3, size, size)."""
    image = image.convert("RGB")
    width, height = image.size
    side = max(width, height)
    square = Image.new("RGB", (side, side), tuple(int(255 * m) for m in CLIP_MEAN))
    square.paste(image, ((side - width) // 2, (side - height) // 2))
    resized = square.resize((size, size), resample=Image.BICUBIC)  # square: shortest edge = size, crop no-op
    array = np.asarray(resized, dtype=np.float64) / 255.0
    return ((array - CLIP_MEAN) / CLIP_STD).transpose(2, 0, 1)


def read_original(folder: Path) -> tuple[dict, dict]:
    """config.json and every tensor of an original-format checkpoint."""
    from safetensors.torch import load_file

    config = json.loads((folder / "config.json").read_text())
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    tensors = {}
    for shard in sorted(set(index["weight_map"].values())):
        tensors.update(load_file(str(folder / shard)))
    return config, tensors


def upstream_logits(folder: Path, ids: list[int], pixel_values):
    """``LlavaMistralForCausalLM`` forward on original weights, written out by hand.

    CLIP hidden state at ``mm_vision_select_layer`` without CLS -> Linear, GELU, Linear
    -> spliced at the -200 position into the Mistral input embeddings.
    """
    import torch
    from transformers import CLIPVisionConfig, CLIPVisionModel, MistralConfig, MistralForCausalLM

    config, sd = read_original(folder)
    text_keys = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                 "num_key_value_heads", "rms_norm_eps", "rope_theta", "vocab_size", "max_position_embeddings")
    lm = MistralForCausalLM(MistralConfig(**{k: config[k] for k in text_keys}, sliding_window=None,
                                          tie_word_embeddings=False)).eval()
    lm.load_state_dict({k: v for k, v in sd.items() if k == "lm_head.weight" or
                        (k.startswith("model.") and "mm_projector" not in k and "vision_tower" not in k)})
    clip = CLIPVisionModel(CLIPVisionConfig.from_pretrained(str(folder / config["mm_vision_tower"]))).eval()
    prefix = "model.vision_tower.vision_tower.vision_model."
    missing, unexpected = getattr(clip, "vision_model", clip).load_state_dict(
        {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}, strict=False)
    assert not unexpected and all(m.endswith("position_ids") for m in missing)
    with torch.no_grad():
        hidden = clip(pixel_values, output_hidden_states=True).hidden_states
        features = hidden[config["mm_vision_select_layer"]][:, 1:]
        projector = torch.nn.Sequential(torch.nn.Linear(*sd["model.mm_projector.0.weight"].shape[::-1]),
                                        torch.nn.GELU(),
                                        torch.nn.Linear(*sd["model.mm_projector.2.weight"].shape[::-1]))
        projector.load_state_dict({k.replace("model.mm_projector.", ""): v for k, v in sd.items()
                                   if k.startswith("model.mm_projector.")})
        image_embeds = projector(features)[0]
        at = ids.index(IMAGE_TOKEN_INDEX)
        embed = lm.model.embed_tokens
        parts = [embed(torch.tensor(ids[:at])), image_embeds, embed(torch.tensor(ids[at + 1:]))]
        return lm(inputs_embeds=torch.cat(parts)[None]).logits
