"""One forward per batch: each image's prefix and all its questions, packed in one row.

The layout is training's (:mod:`slakevqa.kernels.packing`)::

    row of image A   <s> [INST] <image>x576 | \\n q1 [/INST] | \\n q2 [/INST] | ... | pad
    positions        0 ............... P-1  | P  P+1 ...    | P  P+1 ...    |
    sees             causal                 | prefix + self | prefix + self |

so no question is padded to the longest (a batch of 256 left-padded tails held ~1.8x
their real tokens on the English test split), the tails' matrix products join the
prefix's large ones, and the images run through the vision tower once. Afterwards the
packed cache is split: the prefixes (one row per image) and each question's own keys
and values, right-aligned in a :class:`~.shared_prefix.RowCache` row, where CLOSED
scoring and greedy decoding (:mod:`.row_decoding`) continue.
"""

from __future__ import annotations

from slakevqa.kernels import compat
from slakevqa.kernels.packing import IGNORE_INDEX, Row, flatten_packed, mask_stand_in, segment_batch
from slakevqa.kernels.shared_prefix import ImageGroups, RowCache, language_parts, prefix_layers


def pack_prompts(prompts: list[list[int]], prefix: int) -> Row:
    """Tokens, (ignored) labels, positions and segment ids of prompts sharing their first ``prefix`` tokens.

    >>> pack_prompts([[1, 7, 7, 3, 4], [1, 7, 7, 5]], prefix=3)[2:]
    ([0, 1, 2, 3, 4, 3], [0, 0, 0, 1, 1, 2])
    """
    tokens, positions, segments = list(prompts[0][:prefix]), list(range(prefix)), [0] * prefix
    for k, prompt in enumerate(prompts, start=1):
        tokens += prompt[prefix:]
        positions += range(prefix, len(prompt))
        segments += [k] * (len(prompt) - prefix)
    return tokens, [IGNORE_INDEX] * len(tokens), positions, segments


def encode_packed(model, cache_keyword: str, prompts: list[list[int]], groups: list[list[int]], pixels,
                  prefix: int, pad_id: int, varlen: bool = True, flat: bool = False):
    """Run ``prompts`` (grouped by image: ``groups[i]`` lists image ``i``'s prompts; ``pixels`` one per
    group) and return their :class:`~.row_decoding.EncodedRows`, row ``j`` for ``prompts[j]``.

    ``varlen``: the rows read their prefixes through flash attention's variable-length kernel
    where it runs (:func:`~.shared_prefix.prefix_and_own_attention`). ``flat``: the images' rows laid end
    to end in one row, no padding (:func:`~slakevqa.kernels.packing.flatten_packed`; only where that
    kernel serves the forward)."""
    import torch

    from slakevqa.evaluation.row_decoding import EncodedRows

    _, head = language_parts(model)
    device = head.weight.device
    rows_of_images = [pack_prompts([prompts[j] for j in group], prefix) for group in groups]
    batch = segment_batch(rows_of_images, pad_id, mask_device=device, dense_mask=not flat)  # the mask where used
    if flat:
        batch = flatten_packed(batch)
        row_of_image, offset = torch.zeros(len(groups), dtype=torch.long), torch.tensor(batch["row_starts"])
    else:
        row_of_image, offset = torch.arange(len(groups)), torch.zeros(len(groups), dtype=torch.long)
    lengths = torch.tensor([len(p) - prefix for p in prompts])
    image_of = torch.empty(len(prompts), dtype=torch.long)
    start = torch.empty(len(prompts), dtype=torch.long)  # each prompt's first column after the prefix, in its row
    for image, group in enumerate(groups):
        column = int(offset[image]) + prefix
        for j in group:
            image_of[j], start[j] = image, column
            column += int(lengths[j])
    row = row_of_image[image_of]
    last = torch.zeros(batch["input_ids"].shape, dtype=torch.bool)
    last[row, start + lengths - 1] = True  # the column predicting each prompt's first answer token
    inputs = {k: batch[k].to(device) for k in ("input_ids", "position_ids", "attention_mask", "segment_layout")
              if k in batch}  # the layout serves inside segments_attended (slakevqa.kernels.segment_attention)
    if flat:
        inputs["attention_mask"] = mask_stand_in(batch["input_ids"].shape[1], device)
    if compat.MASK_SLICING:  # logits at the marked columns only, row-major
        keep = last.to(device)
    else:  # the union of those columns, each row then picks its own
        keep = torch.nonzero(last.any(dim=0)).flatten().to(device)
    out = model(**inputs, pixel_values=pixels, use_cache=True, logits_to_keep=keep)
    rows, columns = torch.nonzero(last, as_tuple=True)  # row-major, as the logits come
    logits = out.logits if compat.MASK_SLICING else out.logits[rows.to(device), torch.searchsorted(keep, columns.to(device))]
    order = torch.empty(len(prompts), dtype=torch.long)
    order[torch.argsort(row * last.shape[1] + start + lengths - 1)] = torch.arange(len(prompts))
    keys, values = prefix_layers(compat.returned_cache(out))
    width = int(lengths.max())
    # prompt j's column c (right-aligned, c >= width - length) is packed column start + c - (width - length)
    column_of = (start - (width - lengths))[:, None] + torch.arange(width)
    valid = column_of >= start[:, None]
    column_of = torch.where(valid, column_of, start[:, None]).to(device)
    own_rows = row[:, None].expand(-1, width).to(device)
    cache = RowCache([k[own_rows, :, column_of].permute(0, 2, 1, 3).contiguous() for k in keys],
                     [v[own_rows, :, column_of].permute(0, 2, 1, 3).contiguous() for v in values])
    prefix_rows = row_of_image[:, None].expand(-1, prefix).to(device)
    prefix_columns = (offset[:, None] + torch.arange(prefix)).to(device)
    groups_of_rows = ImageGroups.stored_once(image_of.tolist(),
                                             [k[prefix_rows, :, prefix_columns].permute(0, 2, 1, 3) for k in keys],
                                             [v[prefix_rows, :, prefix_columns].permute(0, 2, 1, 3) for v in values],
                                             device, varlen)
    return EncodedRows(cache, groups_of_rows, valid.to(device), (prefix + lengths).to(device),
                       logits[order.to(device)], width)
