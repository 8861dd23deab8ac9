"""The running batch's KV cache, left-padded: rows join (after their own prefill) and leave between decode
steps, so one forward pass serves every active sequence. ``mask`` marks which cached positions are real
tokens (1) and which are padding (0); leading columns that are padding in every row are trimmed."""

from __future__ import annotations

from typing import Any

import torch
from torch.nn import functional


def _layers(cache: Any) -> list[Any]:
    return [layer for layer in cache.layers if getattr(layer, "is_initialized", False) and layer.keys.numel()]


def _left_pad(t: torch.Tensor, n: int) -> torch.Tensor:
    """Pad dimension -2 (keys/values) or -1 (mask) on the left by n."""
    if n == 0:
        return t
    return functional.pad(t, (0, 0, n, 0)) if t.dim() == 4 else functional.pad(t, (n, 0))


class BatchCache:
    def __init__(self) -> None:
        self.cache: Any = None
        self.mask: torch.Tensor | None = None  # [rows, positions], long

    @property
    def rows(self) -> int:
        return 0 if self.mask is None else int(self.mask.shape[0])

    def join(self, cache: Any, mask: torch.Tensor) -> None:
        """Append the rows of a freshly prefilled ``cache`` (with its ``mask``) to the batch."""
        if self.mask is None or self.cache is None:
            self.cache, self.mask = cache, mask
            return
        width = max(self.mask.shape[1], mask.shape[1])
        mine, theirs = width - self.mask.shape[1], width - mask.shape[1]
        for a, b in zip(_layers(self.cache), _layers(cache), strict=True):
            a.keys = torch.cat([_left_pad(a.keys, mine), _left_pad(b.keys, theirs)])
            a.values = torch.cat([_left_pad(a.values, mine), _left_pad(b.values, theirs)])
        self.mask = torch.cat([_left_pad(self.mask, mine), _left_pad(mask, theirs)])

    def grow(self) -> torch.Tensor:
        """The attention mask for a decode step (every row gets one more real position)."""
        assert self.mask is not None
        self.mask = torch.cat([self.mask, self.mask.new_ones((self.mask.shape[0], 1))], dim=1)
        return self.mask

    def keep(self, rows: list[int]) -> None:
        """Keep only ``rows`` (in that order); drop the cache when none remain."""
        if not rows:
            self.cache = self.mask = None
            return
        if self.mask is None or rows == list(range(self.rows)):
            return
        index = torch.tensor(rows, device=self.mask.device)
        for layer in _layers(self.cache):
            layer.keys = layer.keys.index_select(0, index)
            layer.values = layer.values.index_select(0, index)
        self.mask = self.mask.index_select(0, index)
        self.trim()

    def trim(self) -> None:
        """Drop leading positions that are padding in every row (left behind by rows that left)."""
        if self.mask is None:
            return
        used = self.mask.any(dim=0).nonzero()
        start = int(used[0]) if used.numel() else 0
        if start == 0:
            return
        for layer in _layers(self.cache):
            layer.keys = layer.keys[..., start:, :]
            layer.values = layer.values[..., start:, :]
        self.mask = self.mask[:, start:]
