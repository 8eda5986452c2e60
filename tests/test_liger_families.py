"""``--kernels liger`` for every family: what slakevqa hands liger-kernel, and what it takes back (CPU).

Liger's kernels are Triton (CUDA only), so here a stand-in ``liger_kernel.transformers.monkey_patch`` does
what liger-kernel 0.8.5's ``apply_liger_kernel_to_*`` do to an already built model: it replaces the modeling
module's norm and MLP classes and its RoPE global, and binds a ``forward`` onto every RMSNorm and MLP
instance of the model it is handed. Its forwards compute what the plain modules compute and count their
calls. So these tests check slakevqa's part on the real tiny model of each family: the family's declared
function gets its language model part and its MLP keyword, a training forward reaches the patched
instances and the RoPE global (the loss and gradients unchanged), models built afterwards are unpatched,
and the undo restores every global and instance. The GPU benchmark (benchmarks/train_packing.py
``+liger``) and each family's GPU walkthrough run the real kernels.
"""

from __future__ import annotations

import importlib
import sys
import types
from pathlib import Path

import pytest
import torch

import family_fixtures
from slakevqa.data.slake import find_layout, load_split
from slakevqa.inputs.builder import InputBuilder
from slakevqa.inputs.vocab import build_closed_vocab
from slakevqa.models.families import family_named, family_of
from slakevqa.training.examples import ExampleEncoder
from slakevqa.training.params import configure_trainable
from slakevqa.training.speed_levers import apply_speed_levers, language_model, liger_unavailable
from test_families_packing import loss_and_grads

TOKENIZERS = {"llava_med": None, "llava_1_5": None, "qwen2_5_vl": "qwen2_5", "gemma3": "gemma3"}


class StandIn:
    """What liger-kernel's ``apply_liger_kernel_to_*(model=...)`` does to a built model, with counted calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict]] = []
        self.counts = {"norm": 0, "mlp": 0, "rope": 0}

    def module(self) -> types.ModuleType:
        monkey_patch = types.ModuleType("liger_kernel.transformers.monkey_patch")
        for family in TOKENIZERS:
            kernels = family_named(family).fast.liger
            setattr(monkey_patch, kernels.function, self.apply_to(kernels))
        return monkey_patch

    def apply_to(self, kernels):
        def apply(*, model, **flags) -> None:
            self.calls.append((kernels.function, {"model": model, **flags}))
            modeling = importlib.import_module(kernels.modeling)
            for name in kernels.replaced:  # Liger swaps classes (for later models) and the RoPE function
                original = vars(modeling).get(name)
                if isinstance(original, type):
                    setattr(modeling, name, type(f"Liger{name}", (original,), {}))
                else:
                    setattr(modeling, name, self.counted("rope", original or (lambda *a, **k: None)))
            for module in model.modules():  # and binds its forwards onto the instances
                kind = "norm" if type(module).__name__.endswith("RMSNorm") else \
                    "mlp" if type(module).__name__.endswith("MLP") else None
                if kind:
                    module.forward = self.counted(kind, type(module).forward.__get__(module))
        return apply

    def counted(self, kind: str, function):
        def call(*args, **kwargs):
            self.counts[kind] += 1
            return function(*args, **kwargs)
        return call


@pytest.fixture
def stand_in(monkeypatch: pytest.MonkeyPatch) -> StandIn:
    liger = StandIn()
    package = types.ModuleType("liger_kernel")
    package.__spec__ = importlib.machinery.ModuleSpec("liger_kernel", None)
    transformers_part = types.ModuleType("liger_kernel.transformers")
    transformers_part.monkey_patch = liger.module()
    package.transformers = transformers_part
    for name, module in (("liger_kernel", package), ("liger_kernel.transformers", transformers_part),
                         ("liger_kernel.transformers.monkey_patch", transformers_part.monkey_patch)):
        monkeypatch.setitem(sys.modules, name, module)
    return liger


def tiny(name: str, tmp_path_factory: pytest.TempPathFactory):
    if name == "llava_med":
        from slakevqa.models.tiny import build_tiny_llava

        return build_tiny_llava("bpe", seed=0)
    if TOKENIZERS[name] is None:
        from slakevqa.models.tokenizer import build_bpe_tokenizer

        tokenizer = build_bpe_tokenizer()
    else:
        tokenizer = family_fixtures.real_tokenizer(TOKENIZERS[name], tmp_path_factory)
    return importlib.import_module(f"slakevqa.models.families.{name}").build_tiny(tokenizer, seed=2)


def training_batch(root: Path, processor, family) -> dict:
    builder = InputBuilder.create(find_layout(root), build_closed_vocab(load_split(root, "train")))
    samples = sorted(load_split(root, "train"), key=lambda s: (s.image_key, s.qid))[:6]
    return ExampleEncoder(builder, processor, 512, 64, family=family).batch(samples)[0]


@pytest.mark.parametrize("name", sorted(TOKENIZERS))
def test_liger_reaches_the_language_model_and_is_undone(name: str, stand_in: StandIn, synth_root: Path,
                                                        tmp_path_factory: pytest.TempPathFactory) -> None:
    model, processor = tiny(name, tmp_path_factory)
    family = family_of(model)
    assert family.name == name
    model = configure_trainable(model.train(), use_lora=True, lora_r=4, lora_alpha=8, lora_dropout=0.0,
                                lora_target_modules="all-linear")
    kernels, batch = family.fast.liger, training_batch(synth_root, processor, family)
    modeling = importlib.import_module(kernels.modeling)
    before_globals = {n: vars(modeling).get(n) for n in kernels.replaced}
    want = loss_and_grads(model, batch)

    assert liger_unavailable(model, "cuda") is None
    applied, undo = apply_speed_levers(model, "liger", False, "cuda", family)

    assert applied["kernels"] == "liger" and len(stand_in.calls) == 1
    function, flags = stand_in.calls[0]
    assert function == kernels.function and flags["model"] is language_model(model)
    assert flags[kernels.mlp] and flags["rms_norm"] and not flags["fused_linear_cross_entropy"]
    for global_name, value in before_globals.items():  # later models are built plain; the RoPE function stays
        if value is None or isinstance(value, type):
            assert vars(modeling).get(global_name) is value
    got = loss_and_grads(model, batch)
    decoder_layers = len(language_model(model).layers)
    assert stand_in.counts["mlp"] == decoder_layers and stand_in.counts["norm"] >= 2 * decoder_layers + 1
    # the RoPE global is what the attention calls, except in Qwen2.5-VL under transformers 5.x (family note)
    assert (stand_in.counts["rope"] == decoder_layers) == (name != "qwen2_5_vl")
    assert got[0] == pytest.approx(want[0], abs=1e-6)
    assert got[2].keys() == want[2].keys()
    for parameter in want[2]:
        torch.testing.assert_close(got[2][parameter], want[2][parameter], atol=1e-6, rtol=1e-5, msg=parameter)

    undo()
    assert {n: vars(modeling).get(n) for n in kernels.replaced} == before_globals
    assert not [n for n, m in model.named_modules() if "forward" in vars(m)]


def test_liger_is_refused_for_a_language_model_it_was_not_written_for(stand_in: StandIn) -> None:
    from slakevqa.models.tiny import build_tiny_llava

    model, _ = build_tiny_llava("bpe", seed=0)
    reason = liger_unavailable(model, "cuda", family_named("llava_1_5"))  # a Mistral decoder under Llama's kernels
    assert reason == ("apply_liger_kernel_to_llama is written for llama language models; "
                      "this llava_1_5 model's is 'mistral'")
    assert stand_in.calls == []
