"""The model layer: model families, loading, conversion, processors and tiny models.

Public API (torch and transformers are imported only when a function runs)::

    load_model(id_or_path, device="auto", dtype="auto", adapter=None, merge_adapter=False, ...)
        -> LoadedModel (unpacks as ``model, processor``)
    convert_checkpoint(source, destination, vision_from=None, ...) -> ConversionReport
    LlavaShape, LLAVA_MED_7B, TINY; llava_config(shape) -> LlavaConfig    (one shape definition for every builder)
    build_tiny_llava(tokenizer_kind="auto", seed=0, shape=TINY) -> (model, processor)
    save_llava(model, processor, folder); save_llava_med_original(model, processor, folder)
    build_processor(tokenizer, image_size, patch_size); load_processor(folder); generation_prompt(processor, q)
    FAMILIES, family_of(model), family_named(name)    (slakevqa.models.families: one module per family)
"""

from slakevqa.models.convert import ConversionReport, convert_checkpoint
from slakevqa.models.families import FAMILIES, family_named, family_of
from slakevqa.models.loading import LoadedModel, load_model
from slakevqa.models.processor import (
                                       build_image_processor,
                                       build_processor,
                                       expand_to_square,
                                       generation_prompt,
                                       load_processor,
)
from slakevqa.models.shapes import LLAVA_MED_7B, TINY, LlavaShape, llava_config
from slakevqa.models.tiny import build_tiny_llava, save_llava
from slakevqa.models.tiny_original import save_llava_med_original

__all__ = [
    "ConversionReport", "FAMILIES", "LLAVA_MED_7B", "LlavaShape", "LoadedModel", "TINY",
    "build_image_processor", "build_processor", "build_tiny_llava", "llava_config", "convert_checkpoint", "expand_to_square", "generation_prompt",
    "family_named", "family_of", "load_model", "load_processor", "save_llava", "save_llava_med_original",
]
