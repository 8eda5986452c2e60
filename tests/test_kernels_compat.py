"""kernels/compat.py: transformers-version differences are asked by release number or signature, and the
answers agree with what this transformers does."""

from __future__ import annotations

import inspect

import pytest
import torch
import transformers

from slakevqa.kernels import compat


@pytest.mark.parametrize(("version", "expected"), [
    ("5.17.0", False), ("5.20.3", False), ("5.21.0.dev0", True), ("5.21.0", True), ("5.24.0", True), ("6.0.0rc1", True),
])
def test_boolean_logits_to_keep_is_known_by_release(version: str, expected: bool) -> None:
    assert compat.accepts_mask_logits_to_keep(version) is expected


def test_the_release_check_agrees_with_this_transformers_slicing() -> None:
    from transformers import modeling_utils

    assert compat.accepts_mask_logits_to_keep() == compat.accepts_mask_logits_to_keep(transformers.__version__)

    slicer = getattr(modeling_utils, "slice_logits_to_keep", None)
    assert compat.MASK_SLICING == (slicer is not None)
    if slicer is not None:  # a boolean (B, T) mask keeps exactly its True positions, flattened row-major
        hidden = torch.arange(2 * 3 * 4, dtype=torch.float32).view(2, 3, 4)
        keep = torch.tensor([[True, False, True], [False, True, False]])
        assert torch.equal(slicer(hidden, keep), hidden[keep])


def test_the_cache_keyword_and_field_follow_this_transformers(tiny_model) -> None:
    model, _ = tiny_model
    assert compat.cache_argument(model) in inspect.signature(type(model).forward).parameters
    with torch.no_grad():
        out = model.model.language_model(input_ids=torch.tensor([[1, 5, 7]]), use_cache=True)
    cache = compat.returned_cache(out)
    assert cache is not None and cache.get_seq_length() == 3
