"""Packed rows' attention through flash attention's variable-length kernel, not a dense 4-D mask.

A packed row (kernels/packing.py, evaluation/packed_prefill.py) holds an image prefix and then
one segment per question; a segment sees the prefix and, causally, itself. Cut into sequences::

    row        <s> [INST] <image>x576 | \\n q1 [/INST] a1 </s> | \\n q2 [/INST] a2 </s> | pad
    sequence 0 queries = keys = the prefix
    sequence 1                          queries q1..    keys = prefix + q1..
    sequence 2                                                   queries q2..  keys = prefix + q2..

Flash attention takes such sequences back to back (``cu_seqlens``), and with ``is_causal`` a
query sees the keys up to its own place counted from the *end* of its sequence's keys, which
is exactly "the whole prefix, then itself causally". With the dense ``(R, 1, T, T)`` mask sdpa
has to use its memory-efficient kernel and compute every (query, key) pair of the row, masked
or not: at the 7B shape it was 25% of a LoRA training step's GPU time (benchmarks/RESULTS.md).
The price of this layout is one gather per layer: each segment's keys are copied next to a copy
of its prefix's (~150 MB a layer at batch 64; the gradients flow back through the gather).

An image block that sees itself both ways (Gemma 3's; :meth:`SegmentLayout.with_blocks`) cuts the
prefix in three: the text before the block (causal), the block (its queries see the text before it
and the whole block: a second, non-causal kernel call, :attr:`SegmentLayout.bidirectional`) and the
text after it (causal, its keys the whole prefix up to itself).

:func:`segment_attention` is registered with transformers' ``AttentionInterface`` and swapped
into the language model's config inside :func:`segments_attended`; the layout reaches it as the
forward's ``segment_layout`` keyword (transformers passes unknown keywords down to attention,
and gradient checkpointing keeps them for the recomputation). Wherever the layout or the kernel
cannot serve (CPU, fp32 without autocast, a cache with earlier columns, no layout given) the same
call runs transformers' sdpa with the dense mask, which every packed batch still carries.

    >>> layout = SegmentLayout.build([[0, 0, 0, 1, 1, 2, -1]], width=7)  # prefix 0-2, segments 3-4 and 5
    >>> layout.cu_q.tolist(), layout.k_cols.tolist()
    ([0, 3, 5, 6], [0, 1, 2, 0, 1, 2, 3, 4, 0, 1, 2, 5])
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, replace

ATTENTION_NAME = "slakevqa_segments"
HALF = ("float16", "bfloat16")


@dataclass(frozen=True)
class SegmentLayout:
    """Where each sequence's queries and keys lie in the ``(rows, width)`` packed batch.

    ``q_rows``/``q_cols`` list every query token, sequence after sequence (``cu_q`` marks the
    boundaries); ``k_rows``/``k_cols`` the keys each sequence sees (``cu_k``), a prefix repeated
    for each of its segments.
    """

    q_rows: object
    q_cols: object
    k_rows: object
    k_cols: object
    cu_q: object  # int32 (sequences + 1,)
    cu_k: object
    max_q: int
    max_k: int
    width: int
    segments: tuple = ()  # the rows' segment ids it was built from (with_blocks rebuilds from them)
    bidirectional: "SegmentLayout | None" = None  # image blocks' sequences: one more kernel call, not causal
    flat: bool = False  # the rows laid end to end in one row (:meth:`flattened`): only this kernel can serve it

    @staticmethod
    def build(segments: list[list[int]], width: int,
              blocks: "list[tuple[int, int] | None] | None" = None) -> "SegmentLayout | None":
        """The layout of right-padded rows of segment ids (0 the prefix, k > 0 a segment, -1 padding).

        ``blocks``: per row, the ``(start, end)`` columns of an image block inside the prefix that sees
        itself both ways, or None. None when a row is not "prefix first, each segment in one piece,
        padding last", or a block is not inside its prefix: then the dense mask serves (no builder of
        ours makes such rows).
        """
        spans = [row_spans(row) for row in segments]
        blocks = blocks or [None] * len(spans)
        if any(s is None for s in spans) or any(b is not None and not 0 <= b[0] < b[1] <= s[0][1]
                                                for s, b in zip(spans, blocks)):
            return None
        causal, both_ways = [], []  # (row, query span, key spans) per sequence
        for r, ((_, p), pieces) in enumerate(spans):
            start, end = blocks[r] or (p, p)
            causal += [(r, (0, start), [(0, start)]), (r, (end, p), [(0, p)])]
            both_ways += [(r, (start, end), [(0, end)])]
            causal += [(r, piece, [(0, p), piece]) for piece in pieces]
        layout = sequences_layout(causal, width)
        if layout is None:
            return None
        return replace(layout, segments=tuple(map(tuple, segments)),
                       bidirectional=sequences_layout(both_ways, width))

    def with_blocks(self, blocks: "list[tuple[int, int] | None]") -> "SegmentLayout | None":
        """This layout with each row's ``blocks[r]`` seeing itself both ways (Gemma 3's image block)."""
        return SegmentLayout.build([list(row) for row in self.segments], self.width, blocks)

    def flattened(self, offsets: list[int], total: int) -> "SegmentLayout":
        """This layout for the rows laid end to end in one row of ``total`` columns, row ``r`` from ``offsets[r]``.

        A packed batch's rows are padded to the longest (17% of an evaluation batch's tokens on the English
        test split), and every padding token still runs through the projections and the MLP; one row has no
        padding. No dense mask can stand in for it (it would be ``total``² and cross images), so
        :func:`segment_attention` refuses one it cannot run through the kernel.

        >>> layout = SegmentLayout.build([[0, 1, -1], [0, 0, 1]], width=3).flattened([0, 2], total=5)
        >>> layout.q_rows.tolist(), layout.q_cols.tolist(), layout.k_cols.tolist()
        ([0, 0, 0, 0, 0], [0, 1, 2, 3, 4], [0, 0, 1, 2, 3, 2, 3, 4])
        """
        import torch

        start = torch.tensor(offsets, dtype=torch.long, device=self.q_rows.device)
        moved = {"q_rows": torch.zeros_like(self.q_rows), "q_cols": start[self.q_rows] + self.q_cols,
                 "k_rows": torch.zeros_like(self.k_rows), "k_cols": start[self.k_rows] + self.k_cols}
        return replace(self, **moved, width=total, flat=True, segments=(),
                       bidirectional=self.bidirectional and self.bidirectional.flattened(offsets, total))

    def to(self, device) -> "SegmentLayout":
        """On ``device`` (``batch = {k: v.to(device) ...}`` moves it with the tensors)."""
        moved = {name: getattr(self, name).to(device)
                 for name in ("q_rows", "q_cols", "k_rows", "k_cols", "cu_q", "cu_k")}
        return replace(self, **moved, bidirectional=self.bidirectional and self.bidirectional.to(device))


def sequences_layout(sequences: list[tuple[int, tuple[int, int], list[tuple[int, int]]]],
                     width: int) -> "SegmentLayout | None":
    """The layout of ``(row, query span, key spans)`` sequences; empty query spans are left out (None if all are)."""
    import torch

    q_runs, k_runs, q_lengths, k_lengths = [], [], [], []  # runs: (row, first column, end column)
    for r, queries, keys in sequences:
        if queries[1] <= queries[0]:
            continue
        q_runs.append((r, *queries))
        k_runs.extend((r, *k) for k in keys if k[1] > k[0])
        q_lengths.append(queries[1] - queries[0])
        k_lengths.append(sum(b - a for a, b in keys))
    if not q_lengths:
        return None

    def cumulative(lengths):
        return torch.tensor([0] + lengths, dtype=torch.int32).cumsum(0, dtype=torch.int32)

    return SegmentLayout(*run_indices(q_runs), *run_indices(k_runs), cumulative(q_lengths),
                         cumulative(k_lengths), max(q_lengths), max(k_lengths), width)


def row_spans(row: list[int]) -> tuple[tuple[int, int], list[tuple[int, int]]] | None:
    """``((0, P), [(start, end) per segment])`` of one row, or None if it is not prefix-segments-padding.

    >>> row_spans([0, 0, 1, 1, 2, -1])
    ((0, 2), [(2, 4), (4, 5)])
    >>> row_spans([0, 1, 2, 1]) is None  # segment 1 in two pieces
    True
    """
    n, prefix = len(row), 0
    while prefix < n and row[prefix] == 0:
        prefix += 1
    pieces, seen, i = [], set(), prefix
    while i < n:
        j = i
        while j < n and row[j] == row[i]:
            j += 1
        if row[i] == -1:
            if j != n:
                return None  # padding before a segment
        elif row[i] == 0 or row[i] in seen:
            return None  # a prefix token after a segment, or a segment in two pieces
        else:
            seen.add(row[i])
            pieces.append((i, j))
        i = j
    return (0, prefix), pieces


def run_indices(runs: list[tuple[int, int, int]]) -> tuple:
    """``(rows, columns)`` of every position of ``(row, start, end)`` runs, in order, without a Python loop
    per position (a batch of 256 questions has ~160k key positions).

    >>> [t.tolist() for t in run_indices([(0, 0, 2), (1, 5, 8)])]
    [[0, 0, 1, 1, 1], [0, 1, 5, 6, 7]]
    """
    import torch

    rows, starts, ends = torch.tensor(runs, dtype=torch.long).unbind(1)
    lengths = ends - starts
    offsets = torch.cumsum(lengths, 0) - lengths  # where each run begins in the output
    columns = torch.repeat_interleave(starts - offsets, lengths) + torch.arange(int(lengths.sum()))
    return torch.repeat_interleave(rows, lengths), columns


def varlen_kernel(query, dtype):
    """The flash variable-length kernel if it can run ``query`` in ``dtype`` here, else None.

    ``kernel(q, k, v, cu_q, cu_k, max_q, max_k, scale, causal=True)`` returns the output ``(tokens, H, d)``
    and the log-sum-exp of each query's scores ``(H, tokens)`` (fp32), which lets a caller merge it
    with attention over other keys (kernels/shared_prefix.py)."""
    import torch

    if not query.is_cuda or str(dtype).removeprefix("torch.") not in HALF or query.shape[-1] % 8 \
            or query.shape[-1] > 256 or torch.cuda.get_device_capability(query.device) < (8, 0):
        return None

    def flash(q, k, v, cu_q, cu_k, max_q, max_k, scale, causal=True):
        # aten's op (what sdpa's flash backend and torch.nn.attention.varlen call) is the same on torch 2.11
        # and 2.13, and carries its own backward; it takes fewer key heads than query heads (GQA) as they are
        out, lse = torch.ops.aten._flash_attention_forward(q, k, v, cu_q, cu_k, max_q, max_k, 0.0, causal, False,
                                                           scale=scale)[:2]
        return out, lse

    return flash


def varlen_serves(model) -> bool:
    """Whether :func:`varlen_kernel` runs the language model's attention here (its device, weights' dtype and head
    size): the condition for a flattened packed batch (:meth:`SegmentLayout.flattened`), which nothing else can
    attend. Conservative: a model whose weights are fp32 and computes under bf16 autocast gets False."""
    import torch

    from slakevqa.models.families import family_of

    decoder = family_of(model).parts.module(model, "language_model")
    config = decoder.config
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    weight = decoder.get_input_embeddings().weight
    return varlen_kernel(torch.empty((1, 1, 1, head_dim), device=weight.device), weight.dtype) is not None


def sliding_window(config) -> int | None:
    """The language model's sliding window where any layer slides, else None: Gemma 3's five of six layers
    (``layer_types``; Qwen2.5-VL lists only full ones though its config names a window), every Mistral layer
    when its config sets one (no ``layer_types``)."""
    types = getattr(config, "layer_types", None)
    slides = "sliding_attention" in types if types is not None else True
    return getattr(config, "sliding_window", None) if slides else None


def language_window(model) -> int | None:
    """:func:`sliding_window` of ``model``'s language model (its family's part; peft-wrapped or not)."""
    from slakevqa.models.families import family_of

    return sliding_window(family_of(model).parts.module(model, "language_model").config)


def compute_dtype(query):
    """The dtype sdpa would compute in: autocast's inside an autocast region, else the query's."""
    import torch

    device = query.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else query.dtype


def segment_attention(module, query, key, value, attention_mask, scaling: float | None = None, dropout: float = 0.0,
                      segment_layout: SegmentLayout | None = None, **kwargs):
    """transformers' attention signature: ``query`` ``(R, H, T, d)``, ``key``/``value`` ``(R, kv, T, d)``.

    Returns ``((R, T, H, d), None)``; padding tokens' outputs are zeros (no query ever reads them).
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    layout, dtype = segment_layout, compute_dtype(query)
    window = getattr(module, "sliding_window", None) or kwargs.get("sliding_window")
    usable = (layout is not None and query.shape[2] == key.shape[2] == layout.width and dropout == 0.0
              and (window is None or window >= layout.max_k) and kwargs.get("softcap") is None)
    kernel = varlen_kernel(query, dtype) if usable else None
    if kernel is None and layout is not None and layout.flat:
        raise RuntimeError("a flattened packed batch reached attention that flash attention's variable-length kernel "
                           "cannot run (it is built only where the kernel serves): a bug, please report it")
    if kernel is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    rows, heads, width, dim = query.shape
    full = query.new_zeros((rows, width, heads, dim), dtype=dtype)
    for part, causal in ((layout, True), (layout.bidirectional, False)):
        if part is None:
            continue
        q = query.transpose(1, 2)[part.q_rows, part.q_cols].to(dtype)  # (tokens, H, d), one copy
        k = key.transpose(1, 2)[part.k_rows, part.k_cols].to(dtype)    # (keys, kv, d)
        v = value.transpose(1, 2)[part.k_rows, part.k_cols].to(dtype)
        out, _ = kernel(q, k, v, part.cu_q, part.cu_k, part.max_q, part.max_k, scaling or dim ** -0.5,
                        causal=causal)
        full[part.q_rows, part.q_cols] = out
    return full, None


@contextlib.contextmanager
def segments_attended(model, enabled: bool = True):
    """Inside the block (forward and backward both), the language model's attention is :func:`segment_attention`
    (:func:`slakevqa.kernels.attention.attention_function`)."""
    if not enabled:
        yield
        return
    from slakevqa.kernels.attention import attention_function
    from slakevqa.models.families import family_of

    decoder = family_of(model).parts.module(model, "language_model")
    with attention_function(decoder.config, ATTENTION_NAME, segment_attention):
        yield
