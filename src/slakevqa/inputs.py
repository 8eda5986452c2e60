"""From a VQASample to what the model sees: the user text (route, KG facts) and the image.

Training and evaluation both call :class:`InputBuilder`, so the prompt style, the
CLOSED candidates, the KG context and the mask conditioning cannot drift apart
between the two. The gold answer is never read here.

Example::

    builder = InputBuilder.create(layout, prompt_style="short", vocab=vocab, triples_mode="real_only",
                                  mask_mode="crop")
    view = builder.view(sample)      # view.user_text, view.route
    image = builder.image(sample)    # PIL image after mask conditioning
"""

from __future__ import annotations

from dataclasses import dataclass, field

from PIL import Image

from slakevqa.data.images import load_rgb
from slakevqa.data.kg import KnowledgeGraph, kg_facts_for, load_kg
from slakevqa.data.masks import MaskStats, check_mode, condition_image
from slakevqa.data.slake import SlakeLayout
from slakevqa.prompts import PromptStyle, build_user_text, get_prompt_style
from slakevqa.records import VQASample
from slakevqa.routing import YES_NO, Route, parse_options, route_question
from slakevqa.vocab import ClosedVocab

TRIPLES_MODES: tuple[str, ...] = ("off", "real_only", "kvqa_real_only")
# --closed_candidate_mode: where CLOSED candidates come from (``generate`` routes as ``auto``).
CANDIDATE_MODES: tuple[str, ...] = ("auto", "yesno", "parse_options", "vocab", "generate")


def apply_candidate_mode(route: Route, question: str, vocab: ClosedVocab, mode: str) -> Route:
    """Override the automatic CLOSED route when a candidate source is forced.

    ``yesno``: Yes/No for every CLOSED question; ``parse_options``: the options
    parsed from the question, else the vocabulary; ``vocab``: the vocabulary.
    OPEN routes are never changed.
    """
    if route.kind == "open" or mode in ("auto", "generate"):
        return route
    if mode == "yesno":
        return Route("yesno", YES_NO, "forced by --closed_candidate_mode yesno", route.route_source)
    options = parse_options(question) if mode == "parse_options" else []
    if options:
        return Route("options", tuple(options), "parsed (--closed_candidate_mode parse_options)", route.route_source)
    return Route("vocab", vocab.answers, f"forced by --closed_candidate_mode {mode}", route.route_source)


@dataclass(frozen=True)
class SampleView:
    """The text side of one question as the model receives it."""

    user_text: str
    route: Route
    kg_facts: tuple[str, ...]


@dataclass
class InputBuilder:
    """Prompt style, CLOSED vocabulary, knowledge graphs and mask settings for one run."""

    layout: SlakeLayout
    style: PromptStyle
    vocab: ClosedVocab
    triples_mode: str = "real_only"
    route_source: str = "answer_type"
    mask_mode: str = "none"
    mask_pad_ratio: float = 0.10
    candidate_mode: str = "auto"
    blank_images: bool = False  # question-only baseline: every image replaced by black
    graphs: dict[str, KnowledgeGraph] = field(default_factory=dict)
    pixel_cache: dict[tuple, object] = field(default_factory=dict)
    mask_stats: MaskStats = field(default_factory=MaskStats)

    @classmethod
    def create(cls, layout: SlakeLayout, prompt_style: str, vocab: ClosedVocab, triples_mode: str = "real_only",
               route_source: str = "answer_type", mask_mode: str = "none",
               mask_pad_ratio: float = 0.10, candidate_mode: str = "auto") -> "InputBuilder":
        from slakevqa.errors import UserError

        if triples_mode not in TRIPLES_MODES:
            raise UserError(f"unknown --triples_mode '{triples_mode}': use {', '.join(TRIPLES_MODES)}")
        if candidate_mode not in CANDIDATE_MODES:
            raise UserError(f"unknown --closed_candidate_mode '{candidate_mode}': use {', '.join(CANDIDATE_MODES)}")
        check_mode(mask_mode, mask_pad_ratio)
        return cls(layout=layout, style=get_prompt_style(prompt_style), vocab=vocab, triples_mode=triples_mode,
                   route_source=route_source, mask_mode=mask_mode, mask_pad_ratio=mask_pad_ratio,
                   candidate_mode=candidate_mode)

    def kg_facts(self, sample: VQASample) -> tuple[str, ...]:
        """KG facts for the prompt; SLAKE's real triples all sit on kvqa records, so both modes agree there."""
        if self.triples_mode == "off" or self.layout.kg_dir is None or sample.triple[1] in ("", "_"):
            return ()
        if self.triples_mode == "kvqa_real_only" and not sample.is_kvqa:
            return ()
        if sample.q_lang not in self.graphs:
            self.graphs[sample.q_lang] = load_kg(self.layout.kg_dir, "zh" if sample.q_lang == "zh" else "en")
        return tuple(kg_facts_for(sample, self.graphs[sample.q_lang]))

    def view(self, sample: VQASample) -> SampleView:
        route = route_question(sample.question, sample.answer_type, self.vocab, self.route_source)
        route = apply_candidate_mode(route, sample.question, self.vocab, self.candidate_mode)
        facts = self.kg_facts(sample)
        return SampleView(build_user_text(sample.question, route, self.style, facts), route, facts)

    def image(self, sample: VQASample) -> Image.Image:
        """The 8-bit RGB source image (:func:`~slakevqa.data.images.load_rgb`: 16-bit and float scaled,
        alpha on black) after mask conditioning (unchanged for ``mask_mode=none``)."""
        image = load_rgb(sample.image_path)
        if self.blank_images:
            return Image.new("RGB", image.size)
        if self.mask_mode == "none":
            return image
        return condition_image(sample, image, self.mask_mode, self.mask_pad_ratio, self.layout, self.mask_stats)

    def pixel_key(self, sample: VQASample) -> tuple:
        """What decides a sample's pixels: its image, and its qid when a mask mode makes the region follow the question."""
        per_question = sample.qid if self.mask_mode != "none" else None
        return (sample.image_path, per_question, self.mask_mode, self.mask_pad_ratio, self.blank_images)

    def pixel_values(self, sample: VQASample, image_processor):
        """Preprocessed pixels of :meth:`image`, computed once per image (SLAKE asks ~11 questions per image).

        With a mask mode the region follows the question, so the key holds the qid;
        it also holds every setting that changes the pixels, so builder copies may share the cache.
        """
        key = self.pixel_key(sample)
        if key not in self.pixel_cache:
            image = self.image(sample)
            self.pixel_cache[key] = image_processor(images=[image], return_tensors="pt")["pixel_values"][0]
        return self.pixel_cache[key]
