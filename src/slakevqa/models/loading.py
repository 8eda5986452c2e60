"""``load_model``: one entry point for every checkpoint kind we meet.

* a Hugging Face folder or hub id of a declared model family (:mod:`slakevqa.models.families`: LLaVA-Med,
  LLaVA-1.5, Qwen2.5-VL, Gemma 3; any other architecture is refused before its weights load),
* an original LLaVA-Med checkpoint (``model_type: llava_mistral``): converted once
  into ``$SLAKEVQA_CACHE/converted/<name>-<hash>`` (default ``~/.cache/slakevqa``),
* a LoRA adapter folder (``adapter_config.json``) on top of its base, optionally merged.

dtype ``auto``: bf16 on GPUs that support it, else fp16 on GPU, fp32 on CPU.
Attention is ``sdpa``. ``trust_remote_code`` is off unless asked for; safetensors are
preferred and ``.bin`` weights only load through ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from slakevqa.errors import UserError
from slakevqa.models import original
from slakevqa.models.model_files import check_not_half_saved, check_weight_files, unreadable_weights
from slakevqa.models.processor import ProcessorUnreadable, load_processor

Log = Callable[[str], None]  # where progress lines go (print, logger.info, a list.append)

if TYPE_CHECKING:  # annotations only: importing transformers at module load would cost seconds
    from transformers import PreTrainedModel


PRECISIONS: tuple[str, ...] = ("auto", "bf16", "fp16", "fp32")  # --precision of train, eval and merge
DTYPES = {"bf16": "bfloat16", "bfloat16": "bfloat16", "fp16": "float16", "float16": "float16",
          "fp32": "float32", "float32": "float32"}
HUB_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.jinja", "*.txt"]  # no code, no pickles
HUB_PREFIX = "hf://"  # asks for the hub explicitly, whatever exists locally
HUB_ID = re.compile(r"(?:[A-Za-z0-9][A-Za-z0-9._-]{0,95}/)?[A-Za-z0-9][A-Za-z0-9._-]{0,95}")
MODEL_HELP = ("a local folder, or a hub id: owner/name is read as the hub only when nothing named "
              "'owner' exists in the working directory (so a mistyped runs/lora is an error, not a download); "
              "hf://owner/name always means the hub")


@dataclass
class LoadedModel:
    """A model, its processor and how they were obtained.

    Unpacks as a pair: ``model, processor = load_model("path")``.
    """

    model: object
    processor: object
    kind: str  # "hf", "llava_med" (converted) or "lora"
    folder: str  # the HF-format folder the weights came from
    dtype: str
    device: str
    converted_from: str | None = None
    family: str = "llava_med"  # the model family's registry name (slakevqa.models.families)
    adapter: str | None = None
    merged: bool = False
    quantized_bits: int = 0  # the language model's linear layers in NF4 (4: QLoRA, --load_in_4bit) or int8 (8)

    def __iter__(self):
        return iter((self.model, self.processor))

    def describe(self) -> str:
        """One line: ``hf model from /x (bfloat16 on cuda, sdpa)``, plus conversion/adapter notes."""
        names = {4: "NF4", 8: "int8"}
        quantized = names.get(self.quantized_bits)
        dtype = f"{quantized} language model computing in {self.dtype}" if quantized else self.dtype
        text = f"{self.kind} model from {self.folder} ({dtype} on {self.device}, sdpa)"
        if self.converted_from:
            text += f"; converted from original LLaVA-Med checkpoint {self.converted_from}"
        if self.adapter:
            text += f"; LoRA adapter {self.adapter} ({'merged' if self.merged else 'not merged'})"
        return text


def pick_device(device: str = "auto") -> str:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {device} asked for, but no CUDA GPU is visible; use --device cpu")
    return device


def pick_dtype(dtype: str, device: str) -> str:
    """``auto`` -> bf16 on GPUs that support it, fp16 on older GPUs, fp32 on CPU."""
    import torch

    if dtype != "auto":
        if dtype not in DTYPES:
            raise UserError(f"unknown dtype '{dtype}'; choose auto, {', '.join(sorted(DTYPES))}")
        return DTYPES[dtype]
    if device.startswith("cuda"):
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    return "float32"


def resolve_folder(id_or_path: str | Path, revision: str | None = None) -> Path:
    """A local folder as is; a hub id downloaded (safetensors only if present).

    How a model argument reads (the ``--help`` of every model flag says the same, :data:`MODEL_HELP`):

    * ``hf://owner/name``: always the hub (the explicit spelling; ``hf://name`` for old unowned repos);
    * an existing folder: that folder (``runs/lora``, ``./runs/lora``, ``models/llava-med-hf``);
    * ``owner/name`` that exists nowhere here: the hub, when both parts use the hub's characters
      (letters, digits, ``-``, ``_``, ``.``) and no file or folder named ``owner`` exists in the
      working directory: ``microsoft/llava-med-v1.5-mistral-7b`` as the README writes it;
    * anything else is a missing local folder and a UserError naming it: ``runs/lora`` when
      ``runs/`` exists (a typo never fetches someone else's weights), ``./x/y``, ``/abs/path``,
      ``a/b/c``. A ``Path`` object is always local.

    >>> resolve_folder("runs/lorra")   # doctest: +SKIP
    UserError: runs/lorra: no such model folder ('runs' exists here, so this is read as a local path; ...)
    """
    text = str(id_or_path)
    if isinstance(id_or_path, str) and text.startswith(HUB_PREFIX):
        repo = text[len(HUB_PREFIX):]
        if not HUB_ID.fullmatch(repo) or "--" in repo or ".." in repo:
            raise UserError(f"{text}: not a hub id; write hf://owner/name")
        return download(repo, revision)
    path = Path(text).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise UserError(f"{text}: a file, not a model folder")
    owner = text.split("/", 1)[0]
    if isinstance(id_or_path, Path) or not is_hub_id(text):
        raise UserError(f"{text}: no such model folder (and not a hub id like owner/name)")
    if Path(owner).exists():
        raise UserError(f"{text}: no such model folder ('{owner}' exists here, so this is read as a local "
                        f"path; for the hub repo of that name write hf://{text})")
    return download(text, revision)


def is_hub_id(text: str) -> bool:
    """``owner/name`` in the hub's characters: ``microsoft/llava-med-v1.5-mistral-7b`` yes, ``./a/b`` no."""
    return "/" in text and bool(HUB_ID.fullmatch(text)) and "--" not in text and ".." not in text


def download(repo: str, revision: str | None) -> Path:
    """A hub snapshot: configs, tokenizer and safetensors; ``.bin`` only for repos without safetensors."""
    from huggingface_hub import snapshot_download

    try:
        folder = Path(snapshot_download(repo, revision=revision, allow_patterns=HUB_PATTERNS))
        if not list(folder.glob("*.safetensors")):  # old repos ship only .bin (read weights_only)
            folder = Path(snapshot_download(repo, revision=revision, allow_patterns=HUB_PATTERNS + ["*.bin"]))
    except Exception as error:  # hub errors vary by version; all mean "not available here"
        raise UserError(f"{repo}: not a local folder and the hub download failed "
                        f"({type(error).__name__}); pass a local folder or check the network") from error
    return folder


def source_kind(folder: Path) -> str:
    """``lora`` (adapter_config.json), ``llava_med`` (original format) or ``hf``."""
    if (folder / "adapter_config.json").is_file():
        return "lora"
    return "llava_med" if original.is_llava_med_config(original.read_config(folder)) else "hf"


def cache_root() -> Path:
    """Where converted checkpoints are kept: ``$SLAKEVQA_CACHE`` or ``~/.cache/slakevqa``."""
    return Path(os.environ.get("SLAKEVQA_CACHE", Path.home() / ".cache" / "slakevqa"))


def converted_folder(folder: Path, vision_from: str | None) -> Path:
    """The cache folder for one source, keyed on the converter's version and the source's path, config and weights."""
    from slakevqa.models.convert import CONVERTER_VERSION

    digest = hashlib.sha256(f"v{CONVERTER_VERSION}:{folder.resolve()}".encode())
    digest.update((folder / "config.json").read_bytes() + str(vision_from).encode())
    for path in original.weight_files(folder):
        stat = path.stat()
        digest.update(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return cache_root() / "converted" / f"{folder.resolve().name}-{digest.hexdigest()[:12]}"


def ensure_converted(folder: Path, vision_from: str | None = None, log: Log = print) -> Path:
    """Convert an original LLaVA-Med folder once; later calls reuse the cached result."""
    from slakevqa.models.convert import convert_checkpoint

    target = converted_folder(folder, vision_from)
    if (target / "config.json").is_file():
        log(f"using converted checkpoint {target}")
        return target
    convert_checkpoint(folder, target, vision_from=vision_from, overwrite=True, log=log)
    return target


def quantization_config(bits: int, dtype: str, skip: list[str] | None = None):
    """bitsandbytes quantisation of the language model: 4 (QLoRA's NF4 with double quantisation) or 8 (int8).

    Only the language model is quantised: the vision tower, the projector and the
    LM head stay in ``dtype`` (small, and the projector is trained).
    """
    import torch
    from transformers import BitsAndBytesConfig

    try:
        import bitsandbytes  # noqa: F401  (only to fail early with a clear message)
    except ImportError:
        raise UserError(f"{bits}-bit loading (--qlora, --load_in_{bits}bit) needs bitsandbytes: "
                        "pip install bitsandbytes (CUDA machines only)") from None
    # the family's vision tower, projector and LM head (both spellings: older 5.x matches substrings,
    # newer ones module-path prefixes)
    if skip is None:
        from slakevqa.models.families import DEFAULT_FAMILY, family_named

        skip = family_named(DEFAULT_FAMILY).parts.quantization_skip()
    if bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=getattr(torch, dtype), llm_int8_skip_modules=skip)


def load_hf_model(folder: Path, dtype: str, device: str, trust_remote_code: bool, bits: int = 0, family=None):
    """``AutoModelForImageTextToText`` in ``dtype`` on ``device`` with sdpa attention (``bits`` 4 or 8: quantised LM)."""
    import pickle

    import torch
    from transformers import AutoModelForImageTextToText

    check_weight_files(folder)
    has_safetensors = any(folder.glob("*.safetensors"))
    if bits and not device.startswith("cuda"):
        raise UserError(f"{bits}-bit loading (--qlora, --load_in_{bits}bit) needs a CUDA GPU; on CPU train with "
                        "--use_lora without --qlora and evaluate unquantised")
    skip = family.parts.quantization_skip() if family is not None else None
    quantization = {"quantization_config": quantization_config(bits, dtype, skip)} if bits else {}
    try:
        model = AutoModelForImageTextToText.from_pretrained(
            str(folder), dtype=getattr(torch, dtype), attn_implementation="sdpa",
            trust_remote_code=trust_remote_code, use_safetensors=has_safetensors,
            device_map=None if device == "cpu" else {"": device}, **quantization)
    except ValueError as error:
        if "trust_remote_code" in str(error) or "does not recognize this architecture" in str(error):
            raise UserError(f"{folder}: this model needs its own code; pass --trust-remote-code "
                            "only if you trust its author") from error
        raise UserError(f"{folder}: cannot load the model ({str(error).splitlines()[0]})") from error
    except OSError as error:
        raise UserError(f"{folder}: cannot load the model ({str(error).splitlines()[0]})") from error
    except (pickle.UnpicklingError, RuntimeError) as error:
        clear = unreadable_weights(folder, error)
        if clear is None:
            raise
        raise clear from error
    return model.eval()


def attach_adapter(model: PreTrainedModel, adapter: Path, merge: bool) -> PreTrainedModel:
    """Wrap ``model`` with a peft LoRA adapter; ``merge`` folds it into the weights."""
    import pickle

    from peft import PeftModel

    check_weight_files(adapter)
    try:
        model = PeftModel.from_pretrained(model, str(adapter))
    except (pickle.UnpicklingError, RuntimeError) as error:
        clear = unreadable_weights(adapter, error)
        if clear is None:
            raise
        raise clear from error
    return (model.merge_and_unload() if merge else model).eval()


def adapter_base(adapter: Path, base: str | None) -> str:
    """The base model of an adapter: ``base`` if given, else ``base_model_name_or_path``."""
    if base:
        return base
    name = json.loads((adapter / "adapter_config.json").read_text()).get("base_model_name_or_path")
    if not name:
        raise UserError(f"{adapter}: adapter_config.json names no base model; pass --base")
    return name


def load_model(id_or_path: str | Path, *, device: str = "auto", dtype: str = "auto",
               adapter: str | Path | None = None, base: str | None = None, merge_adapter: bool = False,
               vision_from: str | None = None, trust_remote_code: bool = False,
               revision: str | None = None, load_in_4bit: bool = False, load_in_8bit: bool = False,
               log: Log = print) -> LoadedModel:
    """Load a model and its processor from any supported checkpoint kind.

    Args:
        id_or_path: HF folder or hub id, original LLaVA-Med folder, or LoRA adapter folder.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        dtype: ``auto``, ``bf16``, ``fp16`` or ``fp32``.
        adapter: a LoRA adapter folder to put on top of ``id_or_path``.
        base: the base for an adapter folder, overriding its ``base_model_name_or_path``.
        merge_adapter: merge the adapter into the weights (plain model, faster inference).
        vision_from: for original checkpoints, a CLIP folder whose vision weights to use.
        trust_remote_code: allow a checkpoint's own Python code. Off by default.
        revision: hub revision for hub ids.
        load_in_4bit: NF4-quantise the language model (QLoRA, or inference on small cards; CUDA and bitsandbytes).
        load_in_8bit: int8-quantise the language model (inference; CUDA and bitsandbytes).
        log: where progress lines go.

    Example::

        >>> model, processor = load_model("microsoft/llava-med-v1.5-mistral-7b")  # converted once
        >>> loaded = load_model("runs/lora/checkpoint-100", merge_adapter=True)
        >>> print(loaded.describe())
    """
    if load_in_4bit and load_in_8bit:
        raise UserError("4-bit and 8-bit loading at once: choose one")
    bits = 4 if load_in_4bit else 8 if load_in_8bit else 0
    folder = resolve_folder(id_or_path, revision)
    check_not_half_saved(folder)  # merge, check and eval alike; an adapter without weights too
    if source_kind(folder) == "lora":
        adapter, folder = folder, resolve_folder(adapter_base(folder, base), revision)
        check_not_half_saved(folder)  # the base, named by the adapter: a path that is not UTF-8
    elif adapter is not None:
        adapter = resolve_folder(adapter)
        check_not_half_saved(adapter)
    folder, converted_from, family = hf_folder(folder, vision_from, log, trust_remote_code)
    device = pick_device(device)
    dtype = pick_dtype(dtype, device)
    # The processor first: a tokenizer without the image token is refused before gigabytes of weights load.
    processor_folder = adapter if adapter and (Path(adapter) / "tokenizer_config.json").is_file() else folder
    try:
        processor, unreadable = load_processor(processor_folder, trust_remote_code, family), None
    except ProcessorUnreadable as error:  # the model's own error (its code, its weights) says more, if it has one
        processor, unreadable = None, error
    model = load_hf_model(folder, dtype, device, trust_remote_code, bits, family)
    if unreadable is not None:
        raise unreadable
    if adapter is not None:
        model = attach_adapter(model, Path(adapter), merge_adapter)
    kind = "lora" if adapter else ("llava_med" if converted_from else "hf")
    return LoadedModel(model, processor, kind, str(folder), dtype, device, converted_from, family.name,
                       str(adapter) if adapter else None, bool(adapter and merge_adapter), bits)


def hf_folder(folder: Path, vision_from: str | None, log: Log, trust_remote_code: bool = False):
    """``(HF-format folder, original folder or None, model family)``: original checkpoints are converted first.

    The family comes from config.json before any weight loads: a checkpoint of a format no family
    declares would be asked in the wrong one and answer off-format, silently. A folder with its own
    code (``auto_map``) of no declared family is first told that it needs ``--trust-remote-code``.
    """
    from slakevqa.data.reading import read_json
    from slakevqa.models.families import family_for_config, family_named

    kind = source_kind(folder)
    if kind == "lora":
        raise UserError(f"{folder}: an adapter's base is itself an adapter; merge it first")
    if kind == "llava_med":
        check_weight_files(folder)
        return ensure_converted(folder, vision_from, log), str(folder), family_named("llava_med")
    config = read_json(folder / "config.json") if (folder / "config.json").is_file() else {}
    if isinstance(config, dict) and "auto_map" in config and not trust_remote_code:
        try:
            family_for_config(config, str(folder))
        except UserError:
            raise UserError(f"{folder}: this model needs its own code; pass --trust-remote-code "
                            "only if you trust its author") from None
    return folder, None, family_for_config(config if isinstance(config, dict) else {}, str(folder))
