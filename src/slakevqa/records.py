"""The contracts between stages: one frozen record per SLAKE question.

Every stage (loading, masks, prompts, routing, training, evaluation, scoring)
passes :class:`VQASample` objects; none of them reads raw JSON again.

Example, the first English training record of real SLAKE::

    VQASample(qid=0, img_id=1, img_name="xmlab1/source.jpg",
              question="What modality is used to take this image?", answer="MRI",
              q_lang="en", location="Abdomen", modality="MRI", answer_type="OPEN",
              base_type="vqa", content_type="Modality", triple=("vhead", "_", "_"),
              image_path=Path(".../Slake1.0/imgs/xmlab1/source.jpg"), split="train")
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

# The 12 keys every record of the official split files carries, in file order.
SLAKE_FIELDS: tuple[str, ...] = (
    "img_id", "img_name", "question", "answer", "q_lang", "location",
    "modality", "answer_type", "base_type", "content_type", "triple", "qid",
)
ANSWER_TYPES: tuple[str, ...] = ("OPEN", "CLOSED")
LANGUAGES: tuple[str, ...] = ("en", "zh")


@dataclass(frozen=True, slots=True)
class VQASample:
    """One SLAKE question about one image, with its image resolved on disk.

    ``answer`` is always a string (SLAKE counts are ``"2"``, derived copies may
    hold ints). ``image_path`` is absolute and has been checked to lie inside the
    dataset root. ``split`` is the canonical split name (``train``,
    ``validation`` or ``test``) the record was loaded from.
    """

    qid: int
    img_id: int
    img_name: str
    question: str
    answer: str
    q_lang: str
    location: str
    modality: str
    answer_type: str
    base_type: str
    content_type: str
    triple: tuple[str, str, str]
    image_path: Path
    split: str = "train"
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def is_closed(self) -> bool:
        return self.answer_type == "CLOSED"

    @property
    def is_kvqa(self) -> bool:
        return self.base_type == "kvqa"

    @property
    def image_key(self) -> str:
        """The image folder name (``xmlab12``), shared by all questions on one image."""
        return self.img_name.split("/")[0] if "/" in self.img_name else Path(self.img_name).stem

    def to_json(self) -> dict:
        """The 12 SLAKE fields in their file form (``triple`` as a list)."""
        row = {name: getattr(self, name) for name in SLAKE_FIELDS}
        row["triple"] = list(self.triple)
        return row
