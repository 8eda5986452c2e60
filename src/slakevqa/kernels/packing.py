"""Packing the questions of one image into one row: the image prefix once, then a segment per question.

SLAKE asks about eleven questions per image, and each LLaVA-Med training text
starts with the same ``<s> [INST] <image>×N`` prefix (578 tokens at 7B, most of the
sequence). Packed, a micro-batch holds one row per distinct image::

    tokens     <s> [INST] <image>×N | \\n q1 [/INST] a1 </s> | \\n q2 [/INST] a2 </s> | pad
    positions  0 ............. P-1  | P  P+1 ...            | P  P+1 ...            |
    segment    0                    | 1                     | 2                     | -1
    sees       causal               | prefix + itself       | prefix + itself       | itself

Every question segment sees the prefix and, causally, itself only, with positions
continuing from the prefix end. So each answer token's logits are those of the
unpacked row (same keys, values and rotary positions), and the loss, a token mean
over the same answer tokens, equals the unpacked batch's (tested within 1e-5 in fp32,
gradients too). Segments are cut from the already encoded examples, never re-tokenised.

A packed batch carries that visibility twice: as the ``segment_layout`` that flash attention's
variable-length kernel reads (:mod:`slakevqa.kernels.segment_attention`: the default on CUDA in
bf16/fp16, each question attending to its own keys only) and as a dense 4-D boolean
``attention_mask`` for sdpa wherever that kernel cannot serve (CPU, fp32, ``--no-varlen_attention``).

Rows are grouped by the pixel key (:meth:`slakevqa.inputs.builder.InputBuilder.pixel_key`):
with a mask mode each question has its own pixels, hence its own row.

:func:`segment_mask` and :func:`segment_batch` are the shared mechanism: the CLOSED
choice objective (:mod:`slakevqa.training.choice`) packs candidate segments with them.
"""

from __future__ import annotations

from slakevqa.inputs.encoding import IGNORE_INDEX, EncodedExample

Row = tuple[list, list, list, list]  # tokens, labels, positions, segment ids (0 = shared prefix)


def segment_mask(segments: list[int], width: int):
    """``(width, width)`` boolean mask: causal, and a non-prefix token sees the prefix and its own segment only."""
    return segment_masks([segments], width)[0, 0]


def segment_masks(rows: list[list[int]], width: int, device=None):
    """``(R, 1, width, width)``: :func:`segment_mask` of every row, built on ``device`` (an evaluation batch's
    ~25 rows of ~1,100 tokens take ~0.1-0.4 s on a CPU, next to nothing on a GPU)."""
    import torch

    seg = torch.full((len(rows), width), -1, dtype=torch.long)
    for i, segments in enumerate(rows):
        seg[i, :len(segments)] = torch.tensor(segments)
    seg = seg.to(device)
    causal = torch.ones(width, width, dtype=torch.bool, device=seg.device).tril()
    visible = (seg[:, None, :] == 0) | (seg[:, None, :] == seg[:, :, None])
    mask = causal & visible & (seg[:, None, :] >= 0)
    # padding rows see themselves: no all-masked softmax row
    return (mask | torch.eye(width, dtype=torch.bool, device=seg.device))[:, None]


def segment_batch(rows: list[Row], pad_id: int, mask_device=None, dense_mask: bool = True) -> dict:
    """Right-padded ``input_ids``, ``labels``, ``position_ids``, the ``(R, 1, T, T)`` segment ``attention_mask``
    (on ``mask_device``, default the CPU; ``dense_mask=False``: none) and its ``segment_layout`` (the same
    visibility as flash attention's sequences: slakevqa.kernels.segment_attention)."""
    import torch

    from slakevqa.kernels.segment_attention import SegmentLayout

    width = max(len(r[0]) for r in rows)
    batch = {"input_ids": torch.full((len(rows), width), pad_id, dtype=torch.long),
             "labels": torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long),
             "position_ids": torch.zeros((len(rows), width), dtype=torch.long)}
    for i, (tokens, labels, positions, _) in enumerate(rows):
        n = len(tokens)
        batch["input_ids"][i, :n], batch["labels"][i, :n] = torch.tensor(tokens), torch.tensor(labels)
        batch["position_ids"][i, :n] = torch.tensor(positions)
    layout = SegmentLayout.build([r[3] for r in rows], width)
    if layout is not None:
        batch["segment_layout"] = layout
    if dense_mask or layout is None:  # without a layout only the dense mask can say who sees whom
        batch["attention_mask"] = segment_masks([r[3] for r in rows], width, mask_device)
    return batch


def flatten_packed(batch: dict) -> dict:
    """A packed batch (:func:`segment_batch`'s right-padded rows, and whatever a family added per token: positions,
    ``token_type_ids``) with its rows laid end to end in one row, no padding, for flash attention's
    variable-length kernel only (:meth:`~slakevqa.kernels.segment_attention.SegmentLayout.flattened`).

    Per-token tensors are the integer ones shaped like ``input_ids`` ``(R, W)``, and ``position_ids`` (also
    ``(3, R, W)``: M-RoPE); they become ``(1, T)`` / ``(3, 1, T)``. The dense ``attention_mask`` goes (use
    :func:`mask_stand_in` on the device it runs on); ``row_starts`` says where each row begins. Images' tensors
    stay: a model takes a row's images in token order, which is still the rows' order.

    >>> batch = flatten_packed(segment_batch([([1, 5], [-100, 5], [0, 1], [0, 1]), ([1, 6, 7], [-100] * 3, [0, 1, 2],
    ...                                                                              [0, 1, 2])], 0))
    >>> batch["input_ids"].tolist(), batch["position_ids"].tolist(), batch["row_starts"], "attention_mask" in batch
    ([[1, 5, 1, 6, 7]], [[0, 1, 0, 1, 2]], [0, 2], False)
    """
    import itertools

    import torch

    from slakevqa.kernels.segment_attention import run_indices

    layout, ids = batch["segment_layout"], batch["input_ids"]
    lengths = [sum(1 for s in row if s >= 0) for row in layout.segments]  # padding (-1) only at a row's end
    starts = [0, *itertools.accumulate(lengths[:-1])]
    rows, columns = (t.to(ids.device) for t in run_indices([(r, 0, n) for r, n in enumerate(lengths)]))

    def per_token(key: str, value) -> bool:
        return torch.is_tensor(value) and not value.is_floating_point() and (
            value.shape == ids.shape or (key == "position_ids" and value.shape[-2:] == ids.shape))

    flat = {key: value[..., rows, columns][..., None, :] if per_token(key, value) else value
            for key, value in batch.items() if key not in ("attention_mask", "segment_layout")}
    return {**flat, "segment_layout": layout.flattened(starts, sum(lengths)), "row_starts": starts}


def flat_for_kernel(batch: dict) -> dict:
    """:func:`flatten_packed` of a batch already on its device, with the :func:`mask_stand_in` transformers needs."""
    flat = flatten_packed(batch)
    del flat["row_starts"]
    return {**flat, "attention_mask": mask_stand_in(flat["input_ids"].shape[1], flat["input_ids"].device)}


def mask_stand_in(width: int, device=None):
    """A ``(1, 1, width, width)`` all-true boolean mask that costs one element (an expanded view), for a flat batch:
    transformers passes a 4-D mask on untouched, and the only attention that may run reads the layout instead.
    Made on the device it is used on (moving an expanded view copies it whole)."""
    import torch

    return torch.ones((1, 1, 1, 1), dtype=torch.bool, device=device).expand(1, 1, width, width)


def with_image_blocks(batch: dict, image_id: int) -> dict:
    """``batch`` with each row's image tokens seeing one another both ways (Gemma 3's image block; one image per
    row, its tokens in one run): in the dense mask, and in the ``segment_layout`` as a non-causal sequence of
    its own (:meth:`slakevqa.kernels.segment_attention.SegmentLayout.with_blocks`).

    >>> mask = with_image_blocks(segment_batch([([1, 9, 9, 2], [-100] * 4, [0, 1, 2, 3], [0, 0, 0, 1])], 0), 9)
    >>> mask["attention_mask"][0, 0].int().tolist(), mask["segment_layout"].bidirectional.q_cols.tolist()
    ([[1, 0, 0, 0], [1, 1, 1, 0], [1, 1, 1, 0], [1, 1, 1, 1]], [1, 2])
    """
    image = batch["input_ids"] == image_id
    out = {name: value for name, value in batch.items() if name != "segment_layout"}
    if "attention_mask" in batch:  # none: segment_batch(dense_mask=False), for the kernel's layout only
        block = image[:, None, :, None] & image[:, None, None, :]
        out["attention_mask"] = batch["attention_mask"] | block.to(batch["attention_mask"].device)
    if "segment_layout" in batch:
        spans = [(int(cols[0]), int(cols[-1]) + 1) if len(cols) else None
                 for cols in (row.nonzero().flatten() for row in image)]
        if all(s is None or int(image[r, s[0]:s[1]].sum()) == s[1] - s[0] for r, s in enumerate(spans)):
            layout = batch["segment_layout"].with_blocks(spans)
            if layout is not None:
                out["segment_layout"] = layout
    if "attention_mask" not in out and "segment_layout" not in out:
        raise ValueError("image blocks that no layout can carry need the dense mask")  # a bug: ours are one run each
    return out


def prefix_length(input_ids: tuple[int, ...], image_id: int) -> int:
    """Tokens up to and including the last image token: the part every question of an image shares."""
    return len(input_ids) - input_ids[::-1].index(image_id)


def image_groups(keys: list) -> list[list[int]]:
    """Indices grouped by key, groups in order of first appearance.

    >>> image_groups(["a", "b", "a", "c", "b"])
    [[0, 2], [1, 4], [3]]
    """
    groups: dict = {}
    for i, key in enumerate(keys):
        groups.setdefault(key, []).append(i)
    return list(groups.values())


def pack_group(examples: list[EncodedExample], image_id: int) -> Row:
    """Tokens, labels, positions and segment ids of one image's questions in one row (module docstring)."""
    p = prefix_length(examples[0].input_ids, image_id)
    prefix = list(examples[0].input_ids[:p])
    tokens, labels, positions, segments = prefix[:], [IGNORE_INDEX] * p, list(range(p)), [0] * p
    for k, example in enumerate(examples, start=1):
        if list(example.input_ids[:p]) != prefix or prefix_length(example.input_ids, image_id) != p:
            raise ValueError("examples packed into one row must share the image prefix")  # a bug, not user input
        tokens += example.input_ids[p:]
        labels += example.labels[p:]
        positions += range(p, len(example.input_ids))
        segments += [k] * (len(example.input_ids) - p)
    return tokens, labels, positions, segments


def pack_by_image(examples: list[EncodedExample], keys: list, image_id: int, pad_id: int,
                  dense_mask: bool = True) -> tuple[dict, list[int]]:
    """One right-padded row per distinct ``keys`` value; returns the batch and, per row, its first example.

    The batch holds ``input_ids``, ``labels``, ``position_ids``, a ``(R, 1, T, T)``
    boolean ``attention_mask`` and ``sample_index`` (``(R, T)``: which example each
    token belongs to, -1 for prefix and padding), which the loss uses to report every
    question's own loss. Pixels are the caller's: one per row, from the returned example.
    Where flash attention's kernel serves, :func:`flatten_packed` lays the rows end to end afterwards, and
    ``dense_mask=False`` spares the mask nobody reads (:func:`segment_batch`).
    """
    import torch

    groups = image_groups(keys)
    rows = [pack_group([examples[i] for i in group], image_id) for group in groups]
    batch = segment_batch(rows, pad_id, dense_mask=dense_mask)
    batch["sample_index"] = torch.full(batch["input_ids"].shape, -1, dtype=torch.long)
    for r, (group, (_, _, _, segments)) in enumerate(zip(groups, rows)):
        owner = torch.tensor([-1] + group)  # segment k (1-based) belongs to example group[k - 1]
        batch["sample_index"][r, :len(segments)] = owner[torch.tensor(segments)]
    return batch, [group[0] for group in groups]


def per_sample_losses(per_token, targets, sample_index, n_samples: int):
    """Each example's token-mean loss from packed rows: ``per_token[b, t]`` scores ``targets[b, t]``,
    the label of token ``t + 1``, which belongs to example ``sample_index[b, t + 1]``."""
    import torch

    owner = torch.full_like(targets, -1)
    owner[:, :-1] = sample_index[:, 1:]
    counted = (targets != IGNORE_INDEX) & (owner >= 0)
    sums = torch.zeros(n_samples, dtype=per_token.dtype, device=per_token.device)
    counts = torch.zeros(n_samples, dtype=per_token.dtype, device=per_token.device)
    sums.index_add_(0, owner[counted], per_token[counted])
    counts.index_add_(0, owner[counted], torch.ones_like(per_token[counted]))
    return sums / counts
