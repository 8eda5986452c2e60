"""From a VQASample to what the model sees: the user text (route, KG facts) and the image.

Training and evaluation both call :class:`InputBuilder`, so the prompt style, the
CLOSED candidates, the KG context and the mask conditioning cannot drift apart
between the two. The gold answer is never read here.

Example::

    settings = InputSettings(prompt_style="short", mask_mode="crop")   # or a config's ``inputs``
    builder = InputBuilder.create(layout, vocab, settings=settings)
    view = builder.view(sample)      # view.user_text, view.route
    image = builder.image(sample)    # PIL image after mask conditioning
    inputs = builder.image_inputs(sample, family, processor)   # what the model family takes, cached
"""

from __future__ import annotations

from dataclasses import dataclass, field

from PIL import Image

from slakevqa.data.images import load_rgb
from slakevqa.data.kg import KnowledgeGraph, kg_facts_for, load_kg
from slakevqa.data.masks import MaskStats, condition_image
from slakevqa.data.slake import SlakeLayout
from slakevqa.inputs.prompts import PromptStyle, build_user_text, get_prompt_style
from slakevqa.inputs.routing import YES_NO, Route, parse_options, route_question
from slakevqa.inputs.settings import InputSettings
from slakevqa.inputs.vocab import ClosedVocab
from slakevqa.records import VQASample

# --closed_candidates: where CLOSED candidates come from.
CANDIDATE_SOURCES: tuple[str, ...] = ("auto", "yesno", "parse_options", "vocab")


def apply_candidate_source(route: Route, question: str, vocab: ClosedVocab, source: str) -> Route:
    """Override the automatic CLOSED route when a candidate source is forced.

    ``yesno``: Yes/No for every CLOSED question; ``parse_options``: the options
    parsed from the question, else the vocabulary; ``vocab``: the vocabulary.
    OPEN routes are never changed.
    """
    if route.kind == "open" or source == "auto":
        return route
    if source == "yesno":
        return Route("yesno", YES_NO, "forced by --closed_candidates yesno", route.route_source)
    options = parse_options(question) if source == "parse_options" else []
    if options:
        return Route("options", tuple(options), "parsed (--closed_candidates parse_options)", route.route_source)
    return Route("vocab", vocab.answers, f"forced by --closed_candidates {source}", route.route_source)


@dataclass(frozen=True)
class SampleView:
    """The text side of one question as the model receives it."""

    user_text: str
    route: Route
    kg_facts: tuple[str, ...]


@dataclass
class InputBuilder:
    """A run's :class:`InputSettings` with what they need: the prompt style, CLOSED vocabulary and knowledge graphs.

    Build it with :meth:`create`; the settings are frozen, only the caches (``graphs``,
    ``pixel_cache``) and the mask counts (``mask_stats``) fill up as questions are seen.
    """

    layout: SlakeLayout
    style: PromptStyle
    vocab: ClosedVocab
    settings: InputSettings
    route_source: str = "answer_type"
    candidates: str = "auto"
    graphs: dict[str, KnowledgeGraph] = field(default_factory=dict)
    pixel_cache: dict[tuple, object] = field(default_factory=dict)
    mask_stats: MaskStats = field(default_factory=MaskStats)
    # The dtype image tensors are kept in (None: as processed, fp32): the run's vision tower's where it casts them
    # to it anyway (``models.image_features.kept_pixel_dtype``); set once, by the run, before any image is prepared.
    # Same values, half the host memory and half the bytes that cross to the GPU: the English train split's 450
    # images, cached by every training process, take 4.25 GiB in fp32 and 2.12 in bf16 for Qwen2.5-VL (Gemma 3
    # 4.04 / 2.02, LLaVA 0.57 / 0.28).
    pixel_dtype: object = None

    @classmethod
    def create(cls, layout: SlakeLayout, vocab: ClosedVocab, *, settings: InputSettings = InputSettings(),
               route_source: str = "answer_type", candidates: str = "auto") -> "InputBuilder":
        """``candidates``: one of :data:`CANDIDATE_SOURCES` (``auto``: options, else yes/no, else vocabulary)."""
        from slakevqa.errors import UserError

        if candidates not in CANDIDATE_SOURCES:
            raise UserError(f"unknown --closed_candidates '{candidates}': use {', '.join(CANDIDATE_SOURCES)}")
        return cls(layout=layout, style=get_prompt_style(settings.prompt_style), vocab=vocab, settings=settings,
                   route_source=route_source, candidates=candidates)

    def kg_facts(self, sample: VQASample) -> tuple[str, ...]:
        """KG facts for the prompt; SLAKE's real triples all sit on kvqa records, so both modes agree there."""
        if self.settings.triples_mode == "off" or self.layout.kg_dir is None or sample.triple[1] in ("", "_"):
            return ()
        if self.settings.triples_mode == "kvqa_real_only" and not sample.is_kvqa:
            return ()
        if sample.q_lang not in self.graphs:
            self.graphs[sample.q_lang] = load_kg(self.layout.kg_dir, "zh" if sample.q_lang == "zh" else "en")
        return tuple(kg_facts_for(sample, self.graphs[sample.q_lang]))

    def view(self, sample: VQASample) -> SampleView:
        route = route_question(sample.question, sample.answer_type, self.vocab, self.route_source)
        route = apply_candidate_source(route, sample.question, self.vocab, self.candidates)
        facts = self.kg_facts(sample)
        return SampleView(build_user_text(sample.question, route, self.style, facts), route, facts)

    def image(self, sample: VQASample) -> Image.Image:
        """The 8-bit RGB source image (:func:`~slakevqa.data.images.load_rgb`: 16-bit and float scaled,
        alpha on black) after mask conditioning (unchanged for ``mask_mode=none``)."""
        image = load_rgb(sample.image_path)
        settings = self.settings
        if settings.blank_images:
            return Image.new("RGB", image.size)
        if settings.mask_mode == "none":
            return image
        return condition_image(sample, image, settings.mask_mode, settings.mask_pad_ratio, self.layout, self.mask_stats)

    def pixel_key(self, sample: VQASample) -> tuple:
        """What decides a sample's pixels: its image, and its qid when a mask mode makes the region follow the question."""
        settings = self.settings
        per_question = sample.qid if settings.mask_mode != "none" else None
        return (sample.image_path, per_question, settings.mask_mode, settings.mask_pad_ratio, settings.blank_images)

    def image_key(self, sample: VQASample, family) -> tuple:
        """The key of :meth:`image_inputs`'s cache: :meth:`pixel_key`, the family and the dtype kept."""
        return (*self.pixel_key(sample), family.name, str(self.pixel_dtype))

    def image_inputs(self, sample: VQASample, family, processor):
        """The model's inputs for :meth:`image` (``family.images.process``: pixels, extras, token count),
        computed once per image (SLAKE asks ~11 questions per image).

        With a mask mode the region follows the question, so the key holds the qid; it also holds
        every setting that changes the pixels and the family, so builder copies may share the cache.
        """
        key = self.image_key(sample, family)
        if key not in self.pixel_cache:
            inputs = family.images.process(processor, self.image(sample))
            self.pixel_cache[key] = inputs if self.pixel_dtype is None else inputs.to(dtype=self.pixel_dtype)
        return self.pixel_cache[key]
