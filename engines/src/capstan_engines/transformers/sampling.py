"""The next token of each row from its logits: greedy at temperature 0, else temperature and nucleus
(top-p) sampling with the sequence's own generator (a ``seed`` makes a choice reproducible)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class RowSampling:
    temperature: float
    top_p: float
    generator: torch.Generator | None
    banned: tuple[int, ...] = ()  # e.g. the end-of-sequence ids before min_tokens


def next_tokens(logits: torch.Tensor, rows: list[RowSampling]) -> list[int]:
    logits = logits.float()
    greedy: list[int] | None = None
    out: list[int] = []
    for i, s in enumerate(rows):
        row = logits[i]
        if s.banned:
            row = row.clone()
            row[list(s.banned)] = float("-inf")
        if s.temperature == 0.0:
            if s.banned:
                out.append(int(row.argmax()))
            else:
                greedy = greedy if greedy is not None else logits.argmax(dim=-1).tolist()
                out.append(int(greedy[i]))
            continue
        probs = torch.softmax(row / s.temperature, dim=-1)
        if s.top_p < 1.0:
            probs = _nucleus(probs, s.top_p)
        out.append(int(torch.multinomial(probs, 1, generator=s.generator)))
    return out


def _nucleus(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    sorted_probs, order = probs.sort(descending=True)
    cumulative = sorted_probs.cumsum(dim=-1)
    drop = cumulative - sorted_probs > top_p  # keep the smallest prefix whose mass reaches top_p
    sorted_probs = sorted_probs.masked_fill(drop, 0.0)
    kept = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    return kept / kept.sum()
