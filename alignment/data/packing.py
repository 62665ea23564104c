"""Rows of the batch contract: right padding, and SFT packing with segment ids.

A packed row holds several examples back to back; `segment_ids` number them 1, 2, ... (0 on
padding) and `positions` restart at 0 for each, so attention restricted to equal segment ids
plus per-document positions makes a packed row compute exactly what the separate rows would.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def pad_sft_row(
    ids: np.ndarray, loss: np.ndarray, *, max_len: int, pad_id: int
) -> dict[str, np.ndarray]:
    """One example right-padded to max_len: segment 1, positions 0..n-1 (0 on padding)."""
    return pack_row([(ids, loss)], max_len=max_len, pad_id=pad_id)


def pad_preference_row(
    example: dict[str, np.ndarray], *, max_len: int, pad_id: int
) -> dict[str, np.ndarray]:
    out = {}
    for side in ("chosen", "rejected"):
        ids, loss = example[f"{side}_ids"], example[f"{side}_loss"]
        n = len(ids)
        if n > max_len:
            raise ValueError(f"{side} example of {n} tokens exceeds max_len={max_len}")
        row = np.full(max_len, pad_id, np.int32)
        row[:n] = ids
        out[f"{side}_input_ids"] = row
        out[f"{side}_attention_mask"] = (np.arange(max_len) < n).astype(np.int32)
        lm = np.zeros(max_len, np.int32)
        lm[:n] = loss
        out[f"{side}_loss_mask"] = lm
    return out


def pack_row(
    examples: Sequence[tuple[np.ndarray, np.ndarray]], *, max_len: int, pad_id: int
) -> dict[str, np.ndarray]:
    """Concatenate (ids, loss) examples into one row of the SFT batch contract."""
    input_ids = np.full(max_len, pad_id, np.int32)
    loss_mask = np.zeros(max_len, np.int32)
    segment_ids = np.zeros(max_len, np.int32)
    positions = np.zeros(max_len, np.int32)
    start = 0
    for seg, (ids, loss) in enumerate(examples, start=1):
        n = len(ids)
        if start + n > max_len:
            raise ValueError(f"packed examples need {start + n} tokens > max_len={max_len}")
        input_ids[start : start + n] = ids
        loss_mask[start : start + n] = loss
        segment_ids[start : start + n] = seg
        positions[start : start + n] = np.arange(n)
        start += n
    return {
        "input_ids": input_ids,
        "attention_mask": (segment_ids > 0).astype(np.int32),
        "loss_mask": loss_mask,
        "segment_ids": segment_ids,
        "positions": positions,
    }


def first_fit_bins(
    lengths: Sequence[int], order: Sequence[int], *, max_len: int, open_bins: int
) -> list[list[int]]:
    """Pack examples (visited in `order`) into bins of capacity max_len, first fit over at
    most `open_bins` partly filled bins (the oldest is closed when a new one is needed).

    Deterministic; keeps the visiting order inside each bin, and bins are returned in the order
    they were opened so that the stream stays close to the shuffled order.
    """
    bins: list[list[int]] = []
    free: list[int] = []
    open_: list[int] = []  # indices into bins, oldest first
    for i in order:
        n = int(lengths[i])
        if n > max_len:
            raise ValueError(f"example {i} has {n} tokens > max_len={max_len}")
        for b in open_:
            if free[b] >= n:
                bins[b].append(i)
                free[b] -= n
                break
        else:
            if len(open_) == open_bins:
                open_.pop(0)
            bins.append([i])
            free.append(max_len - n)
            open_.append(len(bins) - 1)
        open_ = [b for b in open_ if free[b] > 0]
    return bins
