"""Sanity check of a model, with the reference toolkit's flags: `python test.py --model_id ...`.

Thin shim over ``slakevqa check`` (see ``src/slakevqa/commands/check.py``). Flags the
reference accepted but that no longer apply (``--device_map``, ``--use_flash_attention``,
``--no_codex_wrapper``) are accepted and ignored with a note: attention is always sdpa
and placement is one device.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="test.py", description=__doc__.splitlines()[0])
    parser.add_argument("--model_id", default="microsoft/llava-med-v1.5-mistral-7b",
                        help="HF folder or hub id, original LLaVA-Med folder, or LoRA adapter folder")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--dtype", default="auto", choices=("auto", "bf16", "fp16", "fp32"),
                        help="auto: bf16 on GPUs that support it, fp32 on CPU")
    parser.add_argument("--skip_generate", action="store_true")
    parser.add_argument("--max_new_tokens", type=int, default=32)
    parser.add_argument("--image", default=None, help="image file (default: a synthetic image)")
    parser.add_argument("--question", default="Describe the key finding in this medical image.")
    parser.add_argument("--trust_remote_code", action="store_true", help="allow the checkpoint's own code")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of user errors")
    for ignored in ("--device_map",):
        parser.add_argument(ignored, default=None, help="accepted for compatibility; ignored")
    for ignored in ("--use_flash_attention", "--no_codex_wrapper"):
        parser.add_argument(ignored, action="store_true", help="accepted for compatibility; ignored")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parent / "src"))  # run from a checkout without installing
    from slakevqa.cli import run_verb
    from slakevqa.commands import check

    args = parse_args(argv)
    if args.device_map or args.use_flash_attention or args.no_codex_wrapper:
        print("note: --device_map/--use_flash_attention/--no_codex_wrapper are ignored (sdpa, one device)")
    checked = argparse.Namespace(model=args.model_id, adapter=None, base=None, merge_adapter=False,
                                 vision_from=None, device=args.device, precision=args.dtype, image=args.image,
                                 question=args.question, max_new_tokens=args.max_new_tokens,
                                 skip_generate=args.skip_generate, trust_remote_code=args.trust_remote_code,
                                 debug=args.debug)
    return run_verb(check, checked)


if __name__ == "__main__":
    raise SystemExit(main())
