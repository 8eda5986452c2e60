"""Which checkpoints slakevqa prompts correctly: LLaVA with a Mistral language model.

Every prompt slakevqa builds, and the chat template it writes into the folders it saves, is
LLaVA-Med v1.5's Mistral format (``[INST] <image>\\n{question} [/INST]``, one definition in
:mod:`slakevqa.inputs.prompts`). A checkpoint trained on another format would be asked in the wrong
one and answer off-format without any error, so it is refused before its weights load:

=====================================================  =========================================
checkpoint                                             works
=====================================================  =========================================
microsoft/llava-med-v1.5-mistral-7b (original format)  yes (converted once)
LLaVA (HF format) with a Mistral language model        yes: converted, trained, merged folders
llava-hf/llava-1.5-7b-hf (Vicuna), LLaVA-NeXT, Qwen-VL  refused until chat formats become a registry
its own code (``auto_map``, --trust_remote_code)        loaded when trusted; its format is your call
=====================================================  =========================================
"""

from __future__ import annotations

from pathlib import Path

from slakevqa.errors import UserError

SUPPORTED = {"llava": ("mistral",)}  # model_type -> text_config.model_type


def check_supported(folder: Path) -> None:
    """Refuse an HF-format folder whose architecture or language model is not prompted in our format."""
    from slakevqa.data.reading import read_json

    if not (folder / "config.json").is_file():
        return  # not a model folder at all: loading says so
    config = read_json(folder / "config.json")
    kind = config.get("model_type") if isinstance(config, dict) else None
    text = (config.get("text_config") or {}).get("model_type") if isinstance(config, dict) else None
    if kind in SUPPORTED and text in SUPPORTED[kind]:
        return
    if isinstance(config, dict) and "auto_map" in config:
        return  # its own code: loading asks for --trust_remote_code, and with it the format is the user's call
    found = f"{kind} with a {text} language model" if text else str(kind)
    raise UserError(f"{folder}: a {found} checkpoint; slakevqa prompts in LLaVA-Med v1.5's Mistral format only "
                    "(LLaVA with a Mistral language model), so this one would be asked in a format it was not "
                    "trained on (llava-hf's Vicuna LLaVA-1.5 is such a case); see slakevqa.models.supported")
