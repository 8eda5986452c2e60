"""What differs between the transformers releases we support (``transformers>=5.17,<6``), asked in one place.

The GPU box runs 5.17 and CI 5.24; every difference our fast paths meet is answered here, by the
release number or the signature, never by reading transformers' source text:

* ``MASK_SLICING``: whether a 2-D boolean ``logits_to_keep`` keeps exactly the ``True`` positions
  (``modeling_utils.slice_logits_to_keep``, added in 5.21 with that branch; checked in the 5.17,
  5.20, 5.21, 5.22, 5.23 and 5.24 wheels). Before it, a 1-D index tensor shared by the batch is the
  only per-position form.
* :func:`cache_argument` / :func:`returned_cache`: the forward's KV-cache keyword and output field
  (``cache`` in later 5.x, ``past_key_values`` earlier).
"""

from __future__ import annotations

BOOLEAN_LOGITS_TO_KEEP_SINCE = (5, 21)


def accepts_mask_logits_to_keep(version: str | None = None) -> bool:
    """Whether transformers ``version`` (default: the installed one) slices hidden states with a 2-D boolean
    ``logits_to_keep``.

    >>> accepts_mask_logits_to_keep("5.20.3"), accepts_mask_logits_to_keep("5.21.0.dev0")
    (False, True)
    """
    from packaging.version import Version

    if version is None:
        import transformers

        version = transformers.__version__
    return Version(version).release >= BOOLEAN_LOGITS_TO_KEEP_SINCE  # a 5.21 development build counts


MASK_SLICING = accepts_mask_logits_to_keep()


def cache_argument(model) -> str:
    """``cache`` (transformers >= 5.2x) or ``past_key_values`` (earlier 5.x): the forward's KV-cache keyword."""
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(type(base).forward).parameters else "past_key_values"


def returned_cache(output):
    """The KV cache of a forward output under either name."""
    cache = output.get("cache") if hasattr(output, "get") else None
    return cache if cache is not None else output.past_key_values
