"""Vision features computed once per image when the vision tower is frozen (``--cache_image_features``).

A frozen CLIP tower maps the same pixels to the same features at every step, and
we never augment images, so each image's features (the ``vision_feature_layer``
hidden states, CLS dropped under the ``default`` strategy: what LLaVA feeds its
projector) are computed on first use and kept on the device. The projector still
runs every step, so it trains as usual; the batch then carries ``image_features``
instead of ``pixel_values`` and :func:`with_image_embeddings` builds the
``inputs_embeds`` that LLaVA's forward would have built itself::

    pixel key -> features (N, D)   [once, no grad]
    input_ids --embed--> (B, T, H); image positions <- projector(features)   [every step]

Equal to the model's own forward (tested: logits, loss and the projector's and
adapters' gradients within 1e-5 in fp32).
"""

from __future__ import annotations

from typing import Callable


def llava_core(model):
    """The ``LlavaModel`` inside DDP / peft / ``LlavaForConditionalGeneration`` wrappers."""
    model = getattr(model, "module", model)  # DDP
    if hasattr(model, "get_base_model"):  # peft
        model = model.get_base_model()
    return model.model


def vision_features(core, pixel_values):
    """The hidden states LLaVA hands its projector: ``(B, N, D)`` (one feature layer or several concatenated)."""
    import torch

    layer = core.config.vision_feature_layer
    hidden = core.vision_tower(pixel_values, output_hidden_states=True, return_dict=True).hidden_states
    layers = [hidden[layer]] if isinstance(layer, int) else [hidden[i] for i in layer]
    if core.config.vision_feature_select_strategy == "default":
        layers = [h[:, 1:] for h in layers]  # drop CLS
    return layers[0] if len(layers) == 1 else torch.cat(layers, dim=-1)


class ImageFeatureCache:
    """Features per pixel key, on the model's device; ``features(keys, pixels)`` computes only the missing ones."""

    def __init__(self, model) -> None:
        self.core = llava_core(model)
        self.cache: dict[tuple, object] = {}

    def features(self, keys: list[tuple], pixels: Callable[[int], object]):
        """``(R, N, D)`` features of the rows' images; ``pixels(i)`` gives row ``i``'s pixel tensor when needed."""
        import torch

        missing = [i for i, key in enumerate(keys) if key not in self.cache]
        if missing:
            tower = self.core.vision_tower
            dtype, device = next(tower.parameters()).dtype, next(tower.parameters()).device
            batch = torch.stack([pixels(i) for i in missing]).to(device, dtype)
            with torch.no_grad():
                computed = vision_features(self.core, batch)
            for i, row in zip(missing, computed):
                self.cache[keys[i]] = row
        return torch.stack([self.cache[key] for key in keys])


def with_image_embeddings(model, inputs: dict) -> dict:
    """``inputs`` with ``image_features`` replaced by ``inputs_embeds`` (tokens embedded, images projected)."""
    core = llava_core(model)
    inputs = dict(inputs)
    input_ids, features = inputs.pop("input_ids"), inputs.pop("image_features")
    embeds = core.get_input_embeddings()(input_ids)
    projected = core.multi_modal_projector(features).to(embeds.dtype)
    image_id = getattr(core.config, "image_token_id", None)
    image_id = core.config.image_token_index if image_id is None else image_id  # older config spelling
    where = (input_ids == image_id)[..., None]
    inputs["inputs_embeds"] = embeds.masked_scatter(where, projected)
    return inputs
