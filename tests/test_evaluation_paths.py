"""Every evaluation path gives the same answers (src/slakevqa/evaluation/engine.py), on the tiny model in fp32.

The reference is the plain backend (``share_prefix`` off): every question encoded with its own image,
CLOSED candidates scored on one forward of the left-padded prompts and OPEN answers from
transformers' own ``generate``. Each other path answers the same questions (OPEN, yes/no and option
routes, several questions per image) and must give the same predictions and raw outputs, and
scores within 1e-5; each also shows that it ran the way it claims: which attention ran, how often
and on how many images the vision tower ran, whether the varlen layout was used.

============================  ===========================================================================
path                          what runs
============================  ===========================================================================
rows-varlen-reference-kernel  the default: one packed forward per batch on flash attention's
                              variable-length layout (``reference_kernel`` in conftest.py stands in for
                              the CUDA kernel), then rows that read their image's prefix in place
rows-no-flash-kernel          the default on a CPU: no kernel, so the packed forward's segment attention
                              falls back to sdpa with the dense segment mask
rows-dense-mask               ``AttentionSettings(varlen_attention=False)``: the dense mask, the layout
                              never used even where a kernel would run
one-at-a-time                 the default path, one question per ``answer`` call
============================  ===========================================================================
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from slakevqa.data.slake import find_layout, load_split
from slakevqa.evaluation.engine import Engine
from slakevqa.inputs.builder import InputBuilder
from slakevqa.inputs.vocab import build_closed_vocab
from slakevqa.kernels.attention import AttentionSettings
from slakevqa.kernels.segment_attention import ATTENTION_NAME as SEGMENTS
from slakevqa.kernels.segment_attention import varlen_kernel
from slakevqa.kernels.shared_prefix import ATTENTION_NAME as ROWS

QUESTIONS = 24  # 3 images: 12 OPEN, 7 yes/no and 5 option questions


@dataclass(frozen=True)
class EvalPath:
    engine: dict = field(default_factory=dict)  # Engine keyword arguments
    one_at_a_time: int = 0  # answer this many questions one per answer() call (0: all in one batch)
    kernel: bool = False  # the reference varlen kernel stands in for flash attention's


PATHS = {
    "rows-varlen-reference-kernel": EvalPath(kernel=True),
    "rows-no-flash-kernel": EvalPath(),
    "rows-dense-mask": EvalPath({"attention": AttentionSettings(varlen_attention=False)}, kernel=True),
    "one-at-a-time": EvalPath(one_at_a_time=12),  # two images, every route (one question per call is dear)
}


@dataclass
class Seen:
    attention: list[str] = field(default_factory=list)  # the attention implementation of each layer-0 call
    images: list[int] = field(default_factory=list)  # how many images each vision-tower call encoded


@contextlib.contextmanager
def watching(model):
    """What ran inside the block: the first layer's attention implementation, the vision tower's batches."""
    seen = Seen()
    attention = model.model.language_model.layers[0].self_attn
    hooks = [attention.register_forward_hook(lambda module, *_: seen.attention.append(module.config._attn_implementation)),
             model.model.vision_tower.register_forward_hook(
                 lambda module, args, kwargs, out: seen.images.append(
                     (args[0] if args else kwargs["pixel_values"]).shape[0]), with_kwargs=True)]
    try:
        yield seen
    finally:
        for hook in hooks:
            hook.remove()


@pytest.fixture(scope="module")
def reference(synth_root: Path):
    """One tiny model, the questions, and their answers on the reference path (computed once)."""
    from slakevqa.models.tiny import build_tiny_llava

    model, processor = build_tiny_llava("bpe", seed=0)
    builder = InputBuilder.create(find_layout(synth_root), build_closed_vocab(load_split(synth_root, "train")))
    samples = load_split(synth_root, "test")[:QUESTIONS]
    plain = Engine(model, processor, builder, share_prefix=False)
    items = [plain.prepare(s) for s in samples]
    with watching(model) as seen:
        answers = plain.answer(samples)
    assert plain.fast is None and not plain.on_rows(items)
    opened = sum(s.answer_type == "OPEN" for s in samples)
    # every question with its own image: one forward for CLOSED scoring, one generate call for OPEN
    assert seen.images == [len(samples) - opened, opened] and set(seen.attention) == {"sdpa"}
    assert [p.qid for p in answers] == [s.qid for s in samples]
    assert {p.route for p in answers} == {"open", "yesno", "options"}
    assert any(p.raw_output for p in answers) and all(p.scores for p in answers if p.route != "open")
    images = len({s.image_key for s in samples})
    assert 1 < images < len(samples) and len({id(i.pixel_values) for i in items}) == images  # several per image
    return model, processor, builder, samples, answers


@pytest.mark.parametrize("path", PATHS)
def test_every_path_gives_the_reference_answers(reference, request: pytest.FixtureRequest, path: str) -> None:
    model, processor, builder, samples, expected = reference
    case = PATHS[path]
    kernel = request.getfixturevalue("reference_kernel") if case.kernel else None
    engine = Engine(model, processor, builder, **case.engine)
    if case.one_at_a_time:
        samples, expected = samples[:case.one_at_a_time], expected[:case.one_at_a_time]
    with watching(model) as seen:
        answers = [engine.answer([s])[0] for s in samples] if case.one_at_a_time else engine.answer(samples)
    assert model.config.text_config._attn_implementation == "sdpa"  # the model is left as it was
    assert [p.qid for p in answers] == [s.qid for s in samples]
    assert {p.route for p in answers} == {"open", "yesno", "options"}
    for got, want in zip(answers, expected, strict=True):
        assert (got.prediction, got.raw_output) == (want.prediction, want.raw_output), got.qid
        assert got.scores == pytest.approx(want.scores, abs=1e-5), got.qid

    items = [engine.prepare(s) for s in samples]
    images = len({s.image_key for s in samples})
    layers = model.config.text_config.num_hidden_layers
    assert engine.fast.shared_prefix_length(items) == 5 + items[0].image.tokens  # <s> [INST] ▁ <image>×16
    if path.startswith("rows-"):
        assert engine.on_rows(items)
        assert seen.images == [images]  # one encoding of the batch's images, shared by CLOSED scoring and OPEN decoding
        # the images' prefill is the model's own forward (packed rows); every call after it ran on the rows
        packed = "sdpa" if path == "rows-dense-mask" else SEGMENTS
        assert seen.attention[0] == packed and set(seen.attention[1:]) == {ROWS} and len(seen.attention) > 3
    if path == "rows-varlen-reference-kernel":
        from slakevqa.kernels.segment_attention import varlen_serves

        assert engine.fast.flat_packing and varlen_serves(model)  # the images' rows end to end in one row
        assert kernel[:layers] == [True] * layers  # the packed forward ran on the layout,
        assert kernel.count(False) > layers  # then the rows' prefix parts (scoring, each decoding step)
    elif path == "rows-no-flash-kernel":
        assert varlen_kernel(torch.zeros(1, 2, 3, 8, device=engine.device), torch.bfloat16) is None  # no flash kernel
    elif path == "rows-dense-mask":
        assert kernel == []  # a kernel was there, the setting kept the layout off
    elif path == "one-at-a-time":
        assert engine.on_rows(items[:1])
        assert seen.images == [1] * len(samples)  # each call encodes its one image once
        assert seen.attention.count(SEGMENTS) == len(samples) and set(seen.attention) == {SEGMENTS, ROWS}
