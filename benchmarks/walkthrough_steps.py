"""The walkthrough steps that are Python, not ``slakevqa`` commands; each runs as its own process.

    python benchmarks/walkthrough_steps.py build ORIGINAL_DIR [--tiny]
    python benchmarks/walkthrough_steps.py plain MERGED_DIR IMAGE QUESTION [--tiny]
    python benchmarks/walkthrough_steps.py tb TB_DIR
    python benchmarks/walkthrough_steps.py build-family FAMILY FOLDER [--tiny]

``benchmarks/gpu_walkthrough.py`` starts these in a subprocess, like the CLI steps, so
that every step's GPU memory belongs to one process and the driver never holds any.

* ``build``: an original-format (``llava_mistral``) LLaVA-Med-7B-shaped checkpoint with
  random bf16 weights, through ``benchmarks/convert_7b.py``'s writer, whose tokenizer
  files come from ``slakevqa.models.tiny_original.write_tokenizer`` (LLaVA-Med's own
  ``tokenizer.model`` + ``tokenizer_config.json``). Fails when that config carries no
  ``chat_template``: the official one has Mistral-Instruct-v0.2's text-only template, and
  converting such a folder is what this walkthrough must replay.
* ``plain``: what a user without slakevqa does with the merged folder: ``AutoProcessor`` +
  ``AutoModelForImageTextToText`` + ``apply_chat_template`` on a real image + ``generate``;
  the prompt ids must equal ``slakevqa.inputs.encoding.encode_prompt``'s token for token.
* ``tb``: the training run's TensorBoard events must hold probe scalars and ``eval/loss``
  at two steps or more.
* ``build-family``: a random model of another family at its published shape (bf16, on the GPU) or its
  tiny one (``--tiny``), with the family's tokenizer and processor (``benchmarks/family_shapes.py``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

PROBE_TAG = "probe/llava_med/OPEN"  # one of the probe's scalars (slakevqa.training.tensorboard)


def build(folder: Path, tiny: bool) -> int:
    """Write the random original checkpoint; check that its tokenizer config carries a chat template."""
    import torch

    from convert_7b import write_original

    device = "cuda" if torch.cuda.is_available() and not tiny else "cpu"
    size = write_original(folder, tiny, device)
    config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    template = config.get("chat_template")
    shards = sorted(p.name for p in folder.glob("*.safetensors"))
    print(f"original checkpoint: {size:.2f} GB in {len(shards)} shards; tokenizer_config keys {sorted(config)}")
    if not isinstance(template, str) or "[INST]" not in template:
        print("FAIL: tokenizer_config.json has no Mistral-Instruct chat_template (LLaVA-Med's own config has one); "
              "tiny_original.write_tokenizer must write it")
        return 1
    print(f"chat_template: {len(template)} characters, text-only: {'image' not in template}")
    return 0


def plain(folder: Path, image: Path, question: str, tiny: bool) -> int:
    """Plain transformers on ``folder``; prompt ids against slakevqa's encoder, then one generation."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from slakevqa.data.images import load_rgb
    from slakevqa.inputs.encoding import encode_prompt
    from slakevqa.models.families import family_for_folder
    from slakevqa.models.families.family import stop_ids
    from slakevqa.models.processor import load_processor

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.float32 if tiny else torch.bfloat16
    family = family_for_folder(folder)
    try:
        processor = AutoProcessor.from_pretrained(str(folder))
    except (OSError, ValueError, AttributeError, ImportError) as error:  # Qwen-VL's processor needs torchvision (CPU rehearsal)
        print(f"AutoProcessor: {type(error).__name__}: {str(error)[:120]}; the family's own composition instead")
        processor = load_processor(folder, family=family)
    model = AutoModelForImageTextToText.from_pretrained(str(folder), dtype=dtype, device_map={"": device})
    messages = [{"role": "user", "content": [{"type": "image", "path": str(image)},
                                             {"type": "text", "text": question}]}]
    inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True,
                                           return_tensors="pt")
    image_tokens = family.images.process(load_processor(folder, family=family), load_rgb(image)).tokens
    ours, _ = encode_prompt(processor.tokenizer, question, image_tokens, 10 ** 6, chat=family.chat)
    theirs = inputs["input_ids"][0].tolist()
    print(f"{family.name}: {type(processor).__name__} + {type(model).__name__} ({dtype}, {device}); {image_tokens} "
          f"image tokens; prompt {len(theirs)} ids (apply_chat_template) vs {len(ours)} (encode_prompt)")
    if theirs != ours:
        at = next((i for i, (a, b) in enumerate(zip(theirs, ours)) if a != b), min(len(theirs), len(ours)))
        print(f"FAIL: ids differ from position {at}: apply_chat_template {theirs[max(0, at - 3):at + 6]} "
              f"vs encode_prompt {ours[max(0, at - 3):at + 6]}")
        print("rendered:", repr(processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)))
        return 1
    inputs = inputs.to(device)
    inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=16, do_sample=False,
                             eos_token_id=stop_ids(family, processor.tokenizer))
    new = out[0, inputs["input_ids"].shape[1]:]
    text = processor.decode(new, skip_special_tokens=True)
    print(f"ids equal token for token; generated {len(new)} tokens: {text!r}")
    return 0 if len(new) > 0 else 1


def tensorboard_probes(folder: Path) -> int:
    """Probe scalars and ``eval/loss`` at >= 2 steps in the events under ``folder`` (both runs' files)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    steps: dict[str, set[int]] = {}
    files = sorted(folder.rglob("events.out.tfevents.*"))
    for path in files:  # one file per process: the killed run and the resumed one
        events = EventAccumulator(str(path), size_guidance={"scalars": 0})
        events.Reload()
        for tag in events.Tags()["scalars"]:
            steps.setdefault(tag, set()).update(e.step for e in events.Scalars(tag))
    probes = sorted(tag for tag in steps if tag.startswith("probe/"))
    print(f"{len(files)} event files; {len(steps)} scalar tags; probe tags {probes}")
    for tag in (PROBE_TAG, "eval/loss"):
        print(f"{tag}: steps {sorted(steps.get(tag, ()))}")
    ok = len(steps.get(PROBE_TAG, ())) >= 2 and len(steps.get("eval/loss", ())) >= 2
    if not ok:
        print(f"FAIL: {PROBE_TAG} and eval/loss must be logged at two steps or more")
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("build")
    p.add_argument("folder", type=Path)
    p.add_argument("--tiny", action="store_true")
    p = sub.add_parser("plain")
    p.add_argument("folder", type=Path)
    p.add_argument("image", type=Path)
    p.add_argument("question")
    p.add_argument("--tiny", action="store_true")
    p = sub.add_parser("tb")
    p.add_argument("folder", type=Path)
    p = sub.add_parser("build-family")
    p.add_argument("family")
    p.add_argument("folder", type=Path)
    p.add_argument("--tiny", action="store_true")
    args = parser.parse_args(argv)
    if args.what == "build-family":
        from family_shapes import build_family

        print(build_family(args.family, args.folder, args.tiny))
        return 0
    if args.what == "build":
        return build(args.folder, args.tiny)
    if args.what == "plain":
        return plain(args.folder, args.image, args.question, args.tiny)
    return tensorboard_probes(args.folder)


if __name__ == "__main__":
    raise SystemExit(main())
