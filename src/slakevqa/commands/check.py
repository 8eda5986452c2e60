"""`slakevqa check`: load a model, show how it fits together, generate once.

    slakevqa check --model work/tiny
    slakevqa check --model microsoft/llava-med-v1.5-mistral-7b --dtype bf16
    slakevqa check --model runs/lora/final --merge_adapter --image scan.png

Prints how the model was loaded, parameters and trainable parameters per component
(vision tower, projector, language model, LoRA), the image token id, how many tokens
one image expands to and where they sit in a rendered prompt, whether the folder's
own chat template gives the same prompt ids as slakevqa's encoder, then one greedy
generation on the given image or a synthetic one. Exits 2 with a one-line message
when something does not fit (no image token, count mismatch, unloadable folder).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from slakevqa.errors import UserError
from slakevqa.models.loading import MODEL_HELP, PRECISIONS

if TYPE_CHECKING:
    from transformers import PreTrainedModel, ProcessorMixin

DEFAULT_QUESTION = "Describe the key finding in this medical image."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, metavar="ID_OR_PATH",
                        help="HF folder or hub id, original LLaVA-Med folder, or LoRA adapter folder: " + MODEL_HELP)
    parser.add_argument("--adapter", default=None, help="LoRA adapter folder to put on top of --model")
    parser.add_argument("--base", default=None, help="base model of an adapter folder (overrides its config)")
    parser.add_argument("--merge_adapter", "--merge-adapter", action="store_true", help="merge the LoRA weights")
    parser.add_argument("--vision_from", "--vision-from", default=None, metavar="CLIP_FOLDER",
                        help="original checkpoints: take vision weights from this CLIP folder")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--precision", "--dtype", dest="precision", default="auto", choices=PRECISIONS,
                        help="weights' dtype: auto (bf16 on GPUs that support it, else fp32), bf16, fp16, fp32")
    parser.add_argument("--image", default=None, help="image file to generate on (default: a synthetic one)")
    parser.add_argument("--question", default=DEFAULT_QUESTION, help="question for the generation")
    parser.add_argument("--max_new_tokens", "--max-new-tokens", type=int, default=32)
    parser.add_argument("--skip_generate", "--skip-generate", action="store_true", help="do not generate")
    parser.add_argument("--trust_remote_code", "--trust-remote-code", action="store_true",
                        help="allow the checkpoint's own Python code (off by default)")


def describe_architecture(model: PreTrainedModel, family) -> str:
    """One line per building block, from the config (what a family's config lacks is left out)."""
    config = model.config
    vision, text = config.vision_config, config.text_config
    layers = getattr(vision, "num_hidden_layers", None) or getattr(vision, "depth", "?")
    details = [f"{layers} layers", f"{getattr(vision, 'image_size', 'dynamic')} px",
               f"patch {vision.patch_size}"]
    if hasattr(config, "vision_feature_layer"):
        details += [f"feature layer {config.vision_feature_layer}", str(config.vision_feature_select_strategy)]
    return (f"architecture: {type(model).__name__} (family {family.name}: {family.title}); vision "
            f"{vision.model_type} ({', '.join(details)}); projector {family.parts.projector}; "
            f"text {text.model_type} ({text.num_hidden_layers} layers, hidden {text.hidden_size}, "
            f"vocabulary {text.vocab_size}); images: {family.images.image_tokens_note}")


def print_parameters(model: PreTrainedModel) -> None:
    from slakevqa.models.inspect import parameter_counts

    counts = parameter_counts(model)
    print("parameters (total / trainable):")
    for name, (total, trainable) in counts.items():
        print(f"  {name:<15} {total:>15,} / {trainable:,}")
    totals = [sum(c[i] for c in counts.values()) for i in (0, 1)]
    print(f"  {'all':<15} {totals[0]:>15,} / {totals[1]:,}")


def print_image_tokens(model: PreTrainedModel, processor: ProcessorMixin, family, question: str) -> None:
    from slakevqa.models.inspect import image_token_layout

    layout = image_token_layout(processor, model, family, question)
    print(f"image token: {layout.token!r} id {layout.token_id} (= config image token id)")
    print(f"image tokens per image: {layout.per_image} for a 64 px image (expected {layout.expected}; "
          f"{family.images.image_tokens_note})")
    last = layout.first + layout.per_image - 1
    print(f"prompt: {family.chat.generation_prompt(question)!r} -> {layout.prompt_length} tokens; image tokens at "
          f"positions {layout.first}..{last}; {layout.first} tokens before, {layout.prompt_length - last - 1} after")


def print_chat_template(processor: ProcessorMixin, family) -> None:
    """Whether the folder's own chat template gives slakevqa's prompt ids (what HF and vLLM users get)."""
    from slakevqa.models.processor import chat_template_problem

    problem = chat_template_problem(processor, family)
    if problem is None:
        print(f"chat template: {family.title} format; apply_chat_template gives slakevqa's prompt ids token for token")
    else:
        print(f"chat template: the folder's own template is not usable for image questions ({problem}); slakevqa "
              "prompts with its own format, and every folder it writes (convert-checkpoint, train, merge) "
              "carries a working template")


def load_image(path: str | None):
    from slakevqa.data.images import load_rgb
    from slakevqa.models.inspect import synthetic_image

    if path is None:
        return synthetic_image(), "synthetic 336 px image"
    if not Path(path).is_file():
        raise UserError(f"--image {path}: no such file")
    return load_rgb(path), path


def run(args: argparse.Namespace) -> int:
    from slakevqa.models.families import family_named
    from slakevqa.models.inspect import generate_once
    from slakevqa.models.loading import load_model

    loaded = load_model(args.model, device=args.device, dtype=args.precision, adapter=args.adapter, base=args.base,
                        merge_adapter=args.merge_adapter, vision_from=args.vision_from,
                        trust_remote_code=args.trust_remote_code)
    family = family_named(loaded.family)
    print(f"loaded: {loaded.describe()}")
    print(describe_architecture(loaded.model, family))
    if family.notes:
        print(f"family notes: {family.notes}")
    print_parameters(loaded.model)
    print_image_tokens(loaded.model, loaded.processor, family, args.question)
    print_chat_template(loaded.processor, family)
    if not args.skip_generate:
        image, label = load_image(args.image)
        text, n_new, seconds = generate_once(loaded.model, loaded.processor, family, image, args.question,
                                             args.max_new_tokens)
        print(f"generation on {label} (greedy, at most {args.max_new_tokens} new tokens): {text!r} "
              f"({n_new} tokens, {seconds:.2f} s)")
    print("check passed")
    return 0
