"""Tokenizers for LLaVA-Med-style models: the real Mistral one, or a tiny BPE for tests.

LLaVA-Med v1.5 uses the Mistral-7B SentencePiece model (vocabulary 32000). The HF
conversion adds ``<image>`` (32000) and ``<pad>`` (32001). The model is shipped in
the PyPI package ``mistral-common`` (``mistral_common/data/tokenizer.model.v1``,
the same file as Mistral-7B-Instruct-v0.2), so no hub is needed.

Parity with LLaVA-Med's tokenisation. Upstream ``tokenizer_image_token`` splits the
prompt on ``<image>`` and tokenises each chunk on its own, so SentencePiece's dummy
prefix puts a ``▁`` (28705) at the start of the text after the image::

    "[INST] <image>\\nIs there a mass? [/INST]"
    upstream: [1, 733, 16289, 28793, 28705, -200, 28705, 13, 2301, 736, 264, 3042, 28804, ...]

A Hugging Face ``LlamaTokenizer`` reproduces this exactly with ``legacy=True``
(``Metaspace(prepend_scheme="always")``: every text segment between special tokens
gets the prefix, as a separate ``sp.encode`` call would). ``legacy=False`` drops that
``▁`` and shifts every token after the image by one position relative to training.
``save_pretrained`` does not persist ``legacy``, so :func:`save_tokenizer` writes it.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from slakevqa.errors import UserError
from slakevqa.models.families.llava_clip import IMAGE_TOKEN  # LLaVA's placeholder, defined once

if TYPE_CHECKING:  # annotations only: importing transformers at module load would cost seconds
    from transformers import PreTrainedTokenizerBase


PAD_TOKEN = "<pad>"
MISTRAL_VOCAB_SIZE = 32000  # LLaVA-Med v1.5 text vocabulary before <image>/<pad>

# A few sentences with the words the prompts and SLAKE answers use, so the toy BPE
# tokenizer has merges for them (any text still encodes: it is byte-level).
_BPE_CORPUS = (
    "[INST] <image>\nWhat modality is used to take this image? [/INST] CT </s>",
    "[INST] <image>\nIs the lung healthy? Answer yes or no. [/INST] Yes </s>",
    "[INST] <image>\nWhich organ is abnormal, the heart or the liver? [/INST] Liver </s>",
    "Where is the abnormality located? left lung, right lung, brain, abdomen, chest, pelvic cavity",
    "How many kidneys are in this image? MRI X-Ray CT T1 T2 axial coronal sagittal plane",
    "Does the picture contain the spleen, colon, small bowel, bladder, rectum, spinal cord? No",
    "Answer with a single word or a short phrase. Is this a transverse section? circle oval",
)


def mistral_tokenizer_file() -> Path | None:
    """The Mistral-7B ``tokenizer.model`` shipped by ``mistral-common``, or None if not installed.

    ``$SLAKEVQA_MISTRAL_TOKENIZER`` (a path to that file) takes precedence, for machines
    where mistral-common cannot be installed (the GPU box carries the file instead).
    """
    override = os.environ.get("SLAKEVQA_MISTRAL_TOKENIZER")
    if override:
        return Path(override) if Path(override).is_file() else None
    try:
        from importlib.resources import files

        path = Path(str(files("mistral_common") / "data" / "tokenizer.model.v1"))
    except (ModuleNotFoundError, TypeError):
        return None
    return path if path.is_file() else None


def load_sentencepiece_tokenizer(folder: str | Path):
    """Load a Llama/Mistral SentencePiece ``tokenizer.model`` the way LLaVA-Med tokenises.

    ``legacy=True`` reproduces upstream's chunk-wise tokenisation (module docstring);
    BOS is added, EOS is not (as Mistral's own ``tokenizer_config.json`` says).
    """
    from transformers import LlamaTokenizer

    if not (Path(folder) / "tokenizer.model").is_file():
        raise UserError(f"{folder}: no tokenizer.model (the Mistral SentencePiece file)")
    try:
        return LlamaTokenizer.from_pretrained(str(folder), legacy=True, add_bos_token=True,
                                              add_eos_token=False)
    except (ImportError, ModuleNotFoundError, ValueError) as error:
        raise UserError(f"cannot read {folder}/tokenizer.model ({error}); "
                        "install 'sentencepiece' (pip install sentencepiece)") from error


def add_llava_tokens(tokenizer: PreTrainedTokenizerBase) -> None:
    """Add ``<image>`` and ``<pad>`` (ids 32000 and 32001 on the Mistral vocabulary).

    ``<image>`` is special and unnormalised, so it never merges with neighbours.
    """
    from transformers import AddedToken

    if tokenizer.convert_tokens_to_ids(IMAGE_TOKEN) in (None, tokenizer.unk_token_id):
        tokenizer.add_tokens([AddedToken(IMAGE_TOKEN, special=True, normalized=False)],
                             special_tokens=True)
    if tokenizer.pad_token is None or tokenizer.pad_token == tokenizer.unk_token:
        tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})
    tokenizer.padding_side = "left"  # batched generation needs left padding


def check_image_token(tokenizer: PreTrainedTokenizerBase, folder: str | Path, image_token: str = IMAGE_TOKEN) -> None:
    """A one-line UserError naming ``folder`` when its tokenizer cannot write ``image_token`` as one token.

    Without it the prompt has no place for the image features (the unknown token's id
    stands in, and encoding fails far from the cause). The token must be in the vocabulary
    or the added tokens and encode to that one id.
    """
    token_id = tokenizer.get_vocab().get(image_token)
    ids = tokenizer(image_token, add_special_tokens=False)["input_ids"] if token_id is not None else []
    if token_id is None or list(ids) != [token_id]:
        raise UserError(f"{folder}: its tokenizer has no {image_token} token (not in tokenizer.json's vocabulary or "
                        "added tokens), so images cannot be placed in the prompt; use the tokenizer files of the "
                        "model it was trained with (a LLaVA conversion adds <image>, id 32000 on Mistral)")


def build_mistral_tokenizer(work_dir: str | Path):
    """The real Mistral-7B tokenizer plus ``<image>``/``<pad>``; needs ``mistral-common``.

    Example::

        >>> tok = build_mistral_tokenizer(tmp)
        >>> tok("[INST] <image>\\nIs there a mass? [/INST]").input_ids[:8]
        [1, 733, 16289, 28793, 28705, 32000, 28705, 13]
    """
    source = mistral_tokenizer_file()
    if source is None:
        raise UserError("the real Mistral tokenizer needs 'mistral-common' "
                        "(pip install mistral-common sentencepiece), or use --tokenizer bpe")
    Path(work_dir).mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, Path(work_dir) / "tokenizer.model")
    tokenizer = load_sentencepiece_tokenizer(work_dir)
    add_llava_tokens(tokenizer)
    return tokenizer


def build_bpe_tokenizer(vocab_size: int = 512):
    """A byte-level BPE tokenizer trained in milliseconds on a built-in corpus.

    Special ids: ``<unk>`` 0, ``<s>`` 1, ``</s>`` 2, ``<pad>`` 3, ``<image>`` 4; BOS is prepended.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<s>", "</s>", PAD_TOKEN, IMAGE_TOKEN]
    core = Tokenizer(models.BPE(unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    core.train_from_iterator(list(_BPE_CORPUS) * 4, trainer=trainer)
    core.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", bos_token="<s>",
                                   eos_token="</s>", pad_token=PAD_TOKEN,
                                   extra_special_tokens=[IMAGE_TOKEN], padding_side="left")


def save_tokenizer(tokenizer: PreTrainedTokenizerBase, folder: str | Path) -> None:
    """``save_pretrained`` plus the flags it forgets (``legacy``, ``add_bos_token``)."""
    tokenizer.save_pretrained(str(folder))
    config_path = Path(folder) / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    if hasattr(tokenizer, "legacy"):  # only SentencePiece-derived (Llama) tokenizers have it
        config["legacy"] = bool(tokenizer.legacy)
        config["add_bos_token"], config["add_eos_token"] = True, False
    config["padding_side"] = "left"
    config_path.write_text(json.dumps(config, indent=2) + "\n")
