"""The closed vocabulary: the fallback candidates for CLOSED questions that are neither yes/no
nor list their options, built from training answers only and saved as ``closed_vocab.json``.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from slakevqa.data.slake import find_layout, load_split
from slakevqa.errors import DataError, UserError
from slakevqa.files import write_json_atomic
from slakevqa.inputs.answer_keys import match_key
from slakevqa.records import VQASample

VOCAB_FORMAT = "slakevqa.closed_vocab"
# Bump when the build rule changes (which answers count, how casing is chosen): it changes candidates.
VOCAB_VERSION = 1


@dataclass(frozen=True)
class ClosedVocab:
    """The CLOSED answers of a training split that are not yes/no, most frequent first.

    Answers that differ only by :func:`match_key` are one entry, shown in their
    most frequent casing. Saved as ``closed_vocab.json``::

        {"format": "slakevqa.closed_vocab", "version": 1,
         "source": {"split": "train", "sha256": "3f2a..."},
         "answers": [{"answer": "Lung", "count": 67}, {"answer": "Liver", "count": 56}, ...]}
    """

    entries: tuple[tuple[str, int], ...] = ()
    source_split: str = ""
    source_sha256: str = ""
    version: int = VOCAB_VERSION

    @classmethod
    def empty(cls) -> ClosedVocab:
        return cls()

    @property
    def answers(self) -> tuple[str, ...]:
        return tuple(answer for answer, _ in self.entries)

    def spelling(self, text: str) -> str | None:
        """The training spelling of an answer that matches ``text`` (``left`` -> ``Left``), if any."""
        key = match_key(text)
        return next((answer for answer, _ in self.entries if match_key(answer) == key), None)

    def to_json(self) -> dict:
        return {"format": VOCAB_FORMAT, "version": self.version,
                "source": {"split": self.source_split, "sha256": self.source_sha256},
                "answers": [{"answer": answer, "count": count} for answer, count in self.entries]}


def candidate_variants(candidate: str, vocab: ClosedVocab) -> tuple[str, ...]:
    """Spellings a CLOSED candidate is scored under; its score is the best of them.

    Options parsed from a question keep the question's casing (``left``), while
    SLAKE answers, and so what a fine-tuned model learned to write, are
    capitalised (``Left``). Scoring only the question's spelling would ask the
    model for a string it was never trained to produce.

    >>> candidate_variants("left", ClosedVocab((("Left", 40),)))
    ('left', 'Left')
    >>> candidate_variants("Yes", ClosedVocab.empty())
    ('Yes',)
    """
    spellings = [candidate, vocab.spelling(candidate) or "", candidate[:1].upper() + candidate[1:]]
    return tuple(dict.fromkeys(s for s in spellings if s))


def build_closed_vocab(train_samples: Sequence[VQASample], source_sha256: str = "") -> ClosedVocab:
    """The closed vocabulary of training samples: CLOSED answers that are not yes/no.

    This is the one function here that reads answers, and it refuses any sample
    that is not from the train split, so test answers cannot become candidates.
    """
    not_train = sorted({s.split for s in train_samples if s.split != "train"})
    if not_train:
        raise UserError(f"the closed vocabulary is built from training answers only, got {', '.join(not_train)}")
    counts: Counter[str] = Counter()
    spellings: dict[str, Counter[str]] = defaultdict(Counter)
    for sample in train_samples:
        key = match_key(sample.answer)
        if sample.is_closed and key and key not in ("yes", "no"):
            counts[key] += 1
            spellings[key][sample.answer.strip()] += 1
    ranked = sorted(counts, key=lambda k: (-counts[k], k))
    entries = tuple((spellings[k].most_common(1)[0][0], counts[k]) for k in ranked)
    return ClosedVocab(entries, "train", source_sha256)


def save_closed_vocab(vocab: ClosedVocab, path: str | Path) -> Path:
    """Write ``closed_vocab.json`` atomically (temp file + rename)."""
    return write_json_atomic(path, vocab.to_json())


def load_closed_vocab(path: str | Path) -> ClosedVocab:
    """Read ``closed_vocab.json``; a wrong format or version is a DataError naming the file."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise DataError(path, f"cannot read the closed vocabulary: {error}") from None
    if not isinstance(data, dict) or data.get("format") != VOCAB_FORMAT:
        raise DataError(path, f"not a closed vocabulary: expected \"format\": \"{VOCAB_FORMAT}\"")
    if data.get("version") != VOCAB_VERSION:
        raise DataError(path, f"closed vocabulary version {data.get('version')!r}, this slakevqa reads "
                              f"version {VOCAB_VERSION}: rebuild it with --allow_build_vocab", field="version")
    try:
        entries = tuple((str(e["answer"]), int(e["count"])) for e in data["answers"])
        source = data.get("source") or {}
        return ClosedVocab(entries, str(source.get("split", "")), str(source.get("sha256", "")))
    except (KeyError, TypeError, ValueError):
        raise DataError(path, "each answer must be {\"answer\": str, \"count\": int}", field="answers") from None


def load_or_build_vocab(path: str | Path | None, slake_root: str | Path | None, allow_build: bool,
                        missing_images: str = "error") -> ClosedVocab:
    """The vocabulary from ``path`` if it exists; else built from ``slake_root``'s train split.

    Building needs ``allow_build`` (``--allow_build_vocab``) so that a missing
    file is never papered over silently; a built vocabulary is saved to ``path``
    when one is given. ``missing_images`` is :func:`load_split`'s policy (``--missing_images``).
    """
    if path is not None and Path(path).is_file():
        return load_closed_vocab(path)
    if not allow_build:
        where = f"{path} does not exist" if path is not None else "no --closed_vocab_path given"
        raise UserError(f"CLOSED routing needs a closed vocabulary and {where}: pass --closed_vocab_path "
                        "to an existing closed_vocab.json, or --allow_build_vocab to build one from the "
                        "train split of --slake_root")
    if slake_root is None:
        raise UserError("--allow_build_vocab needs --slake_root (or SLAKE_ROOT) to read the train split from")
    sha = hashlib.sha256(find_layout(slake_root).split_file("train").read_bytes()).hexdigest()
    vocab = build_closed_vocab(load_split(slake_root, "train", missing_images=missing_images), sha)
    if path is not None:
        save_closed_vocab(vocab, path)
    return vocab
