"""Vision features computed once per image when the vision tower is frozen (``--cache_image_features``).

A frozen vision tower maps the same pixels to the same features at every step, and
we never augment images, so each image's features (what the family's tower hands its
projector, ``images.tower_features``: LLaVA's CLIP layer -2 without CLS, Gemma 3's SigLIP
last hidden state) are computed on first use and kept on the device. The projector still
runs every step, so it trains as usual; the batch then carries ``image_features``
instead of ``pixel_values`` and :func:`with_image_embeddings` builds the
``inputs_embeds`` that the model's forward would have built itself::

    pixel key -> features (N, D)   [once, no grad]
    input_ids --embed--> (B, T, H); image positions <- projector(features)   [every step]

Equal to the model's own forward (tested: logits, loss and the projector's and
adapters' gradients within 1e-5 in fp32).

:func:`kept_pixel_dtype` says what the tower takes: the dtype a run may keep its pixels in.
"""

from __future__ import annotations

from typing import Callable


def feature_parts(model):
    """``(vision tower, projector, token embeddings, config, family)`` of a model, through its family's parts (DDP
    and peft wrappers included; under peft the projector is its trained copy)."""
    from slakevqa.models.families import family_of
    from slakevqa.models.families.family import unwrapped

    family = family_of(model)
    parts = family.parts
    embeddings = parts.module(model, "language_model").get_input_embeddings()
    return parts.module(model, "vision"), parts.module(model, "projector"), embeddings, unwrapped(model).config, family


class ImageFeatureCache:
    """Features per pixel key, on the model's device; ``features(keys, pixels)`` computes only the missing ones."""

    def __init__(self, model) -> None:
        self.vision, _, _, self.config, family = feature_parts(model)
        self.tower_features = family.images.tower_features
        self.cache: dict[tuple, object] = {}

    def features(self, keys: list[tuple], pixels: Callable[[int], object]):
        """``(R, N, D)`` features of the rows' images; ``pixels(i)`` gives row ``i``'s pixel tensor when needed."""
        import torch

        missing = [i for i, key in enumerate(keys) if key not in self.cache]
        if missing:
            dtype, device = next(self.vision.parameters()).dtype, next(self.vision.parameters()).device
            # joined and cast on the device (families.family.to_device says why)
            batch = torch.stack([pixels(i).to(device) for i in missing]).to(dtype)
            with torch.no_grad():
                computed = self.tower_features(self.vision, self.config, batch)
            for i, row in zip(missing, computed):
                self.cache[keys[i]] = row
        return torch.stack([self.cache[key] for key in keys])


def with_image_embeddings(model, inputs: dict) -> dict:
    """``inputs`` with ``image_features`` replaced by ``inputs_embeds`` (tokens embedded, images projected)."""
    _, projector, embeddings, config, _ = feature_parts(model)
    inputs = dict(inputs)
    input_ids, features = inputs.pop("input_ids"), inputs.pop("image_features")
    embeds = embeddings(input_ids)
    projected = projector(features).to(embeds.dtype)
    image_id = getattr(config, "image_token_id", None)
    image_id = config.image_token_index if image_id is None else image_id  # older config spelling
    where = (input_ids == image_id)[..., None]
    inputs["inputs_embeds"] = embeds.masked_scatter(where, projected)
    return inputs


def kept_pixel_dtype(model):
    """The dtype a run may keep its image tensors in (``InputBuilder.pixel_dtype``): the vision tower's weights' where
    they are half precision (bf16, fp16), since the tower casts its pixels to them first; else None (fp32 towers, and
    fp16 runs whose fp32 weights autocast, keep the processor's fp32)."""
    import torch

    from slakevqa.models.families import family_of

    tower = family_of(model).parts.module(model, "vision")
    dtype = next(tower.parameters()).dtype
    return dtype if dtype in (torch.bfloat16, torch.float16) else None
