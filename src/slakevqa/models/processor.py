"""Processors: loading and saving any model family's processor, and checking its chat template.

Chat formats are the model family's (:mod:`slakevqa.models.families`): :func:`save_processor`
writes the family's template into every folder slakevqa saves, whatever template the checkpoint
came with (LLaVA-Med's own tokenizer_config.json carries Mistral-Instruct's text-only one; a
Qwen2.5-VL checkpoint's carries Qwen2.5's text-only one), and :func:`load_processor` builds the
family's processor with the PIL image backend on every machine.

LLaVA's CLIP preprocessing lives in :mod:`slakevqa.models.families.llava_clip` (imported here too).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image

from slakevqa.errors import UserError
from slakevqa.models.families.llava_clip import (  # noqa: F401  (LLaVA's preprocessing, imported from here too)
    CLIP_MEAN,
    CLIP_STD,
    PAD_COLOUR,
    build_image_processor,
    build_processor,
    expand_to_square,
)
from slakevqa.models.tokenizer import check_image_token, save_tokenizer

if TYPE_CHECKING:  # annotations only: importing transformers at module load would cost seconds
    from transformers import ProcessorMixin


def pil_image_processor(folder: str | Path):
    """The PIL-backend class of the image processor saved in ``folder``, or None.

    Saved files name the backend-free class (``LlavaImageProcessor``); with
    torchvision installed, ``AutoProcessor`` would pick the torchvision class, whose
    resize gives different pixels. We pick ``<Name>Pil`` explicitly instead
    (``AutoImageProcessor`` cannot be used: in 5.17 it requires torchvision).
    """
    import transformers

    for name in ("processor_config.json", "preprocessor_config.json"):
        path = Path(folder) / name
        if path.is_file():
            raw = json.loads(path.read_text())
            saved = raw.get("image_processor", raw).get("image_processor_type", "")
            base = saved.removesuffix("Fast").removesuffix("Pil")
            cls = getattr(transformers, f"{base}Pil", None)
            return cls.from_pretrained(str(folder)) if cls is not None and base else None
    return None


class ProcessorUnreadable(UserError):
    """No processor could be built from the folder's files at all (as opposed to one that lacks a part)."""


def load_processor(folder: str | Path, trust_remote_code: bool = False, family=None):
    """The processor of ``folder`` with the PIL image backend (see :func:`pil_image_processor`).

    ``family`` (a :class:`~slakevqa.models.families.ModelFamily`, default: the one its config.json
    declares, LLaVA-Med without one) decides how: ``AutoProcessor``, or the family's own composition where
    ``AutoProcessor`` needs torchvision. Refused in one line: files that make no processor
    (:class:`ProcessorUnreadable`), no image processor, no tokenizer, or a tokenizer without the image token.
    """
    from transformers import AutoProcessor

    family = family or folder_family(folder)
    try:
        image_processor = pil_image_processor(folder)
        if family.images.compose_processor is not None:
            from transformers import AutoTokenizer

            processor = family.images.compose_processor(folder, AutoTokenizer.from_pretrained(str(folder)),
                                                        image_processor, family.chat.template)
        else:
            extra = {"image_processor": image_processor} if image_processor is not None else {}
            processor = AutoProcessor.from_pretrained(str(folder), trust_remote_code=trust_remote_code, **extra)
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ProcessorUnreadable(f"{folder}: cannot load a processor ({error})") from error
    if getattr(processor, "image_processor", None) is None:
        raise UserError(f"{folder}: the processor has no image processor; is this a vision-language model?")
    if getattr(processor, "tokenizer", None) is None:
        raise UserError(f"{folder}: the processor has no tokenizer; copy the model's tokenizer files into it")
    check_image_token(processor.tokenizer, folder, family.chat.image_token)
    # from_pretrained hands the image_processor kwarg to the tokenizer too, which then cannot be saved again
    processor.tokenizer.init_kwargs.pop("image_processor", None)
    return processor


def folder_family(folder: str | Path):
    """The family ``folder``'s config.json declares; LLaVA-Med for a folder without one (a processor alone)."""
    from slakevqa.models.families import DEFAULT_FAMILY, family_for_folder, family_named

    return family_for_folder(folder) or family_named(DEFAULT_FAMILY)


def save_processor(processor: ProcessorMixin, folder: str | Path, family=None) -> None:
    """Write ``processor`` with its family's chat template and the tokenizer flags ``save_pretrained`` forgets.

    The template goes to the processor and to its tokenizer: a checkpoint's own template
    (Mistral-Instruct's ``'[INST] ' + message['content'] + ' [/INST]'`` in LLaVA-Med's
    tokenizer_config.json, Qwen2.5's text-only one in Qwen2.5-VL's) renders image+text messages
    wrongly or not at all, in ``apply_chat_template`` and in vLLM. ``family``: default LLaVA-Med.
    """
    from slakevqa.models.families import DEFAULT_FAMILY, family_named

    template = (family or family_named(DEFAULT_FAMILY)).chat.template
    processor.chat_template = template
    processor.tokenizer.chat_template = template
    processor.save_pretrained(str(folder))
    save_tokenizer(processor.tokenizer, folder)  # after: persists `legacy` (see tokenizer.py)


def generation_prompt(processor: ProcessorMixin, question: str) -> str:
    """Render one image-first user turn with the processor's own chat template.

    >>> generation_prompt(processor, "Is there a mass?")   # LLaVA-Med's
    '<s>[INST] <image>\\nIs there a mass? [/INST]'
    """
    if not getattr(processor, "chat_template", None):
        raise UserError("the processor has no chat template; convert the checkpoint with "
                        "'slakevqa convert-checkpoint' or add one")
    return processor.apply_chat_template([image_question(question)], add_generation_prompt=True, tokenize=False)


def image_question(question: str, image: object = None) -> dict:
    """A user message with an image (a PIL image, or none when only rendering text) and a question."""
    image_item = {"type": "image", "image": image} if image is not None else {"type": "image"}
    return {"role": "user", "content": [image_item, {"type": "text", "text": question}]}


def chat_template_problem(processor: ProcessorMixin, family=None, question: str = "Is there a mass?") -> str | None:
    """Why the processor's own chat template does not give slakevqa's prompt ids, or None when it does.

    Renders and tokenises an image+text message exactly as a Hugging Face user would
    (``apply_chat_template(..., tokenize=True)``) and compares the ids with
    :func:`slakevqa.inputs.encoding.encode_prompt` in the family's format, token for token.
    """
    from slakevqa.inputs.encoding import encode_prompt
    from slakevqa.models.families import DEFAULT_FAMILY, family_named

    family = family or family_named(DEFAULT_FAMILY)
    if not getattr(processor, "chat_template", None):
        return "no chat template"
    image = Image.new("RGB", (64, 64), (90, 90, 90))
    try:
        batch = processor.apply_chat_template([image_question(question, image)],
                                              add_generation_prompt=True, tokenize=True, return_dict=True)
    except Exception as error:  # a foreign template fails in Jinja with any error type
        return f"it cannot render an image+text message ({type(error).__name__}: {error})"
    ids = [int(i) for i in batch["input_ids"][0]]
    tokens = family.images.process(processor, image).tokens
    expected, _ = encode_prompt(processor.tokenizer, question, tokens, chat=family.chat)
    if ids != expected:
        return f"it renders {processor.tokenizer.decode(ids[:8])!r}..., not {family.title}'s format"
    return None
