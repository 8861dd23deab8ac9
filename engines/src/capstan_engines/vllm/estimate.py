"""How much GPU memory a model needs and on how many cards (SPEC 6.6):

weights GiB ≈ params (billions) × bytes per parameter; KV cache GiB = hidden × layers × kv_heads /
attn_heads × context × kv_bytes × 2 (keys and values) / 2^30; needed > (weights + KV) /
gpu_memory_utilization; cards = ceil(needed / card memory), raised until attn_heads % cards == 0
(tensor parallelism splits the attention heads evenly).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Estimate:
    weights_gib: float
    kv_cache_gib: float
    needed_gib: float
    cards: int | None  # None when no card memory was given


def estimate(*, params_billion: float, hidden: int, layers: int, kv_heads: int, attn_heads: int, context: int,
             bytes_per_param: float = 2.0, kv_bytes: float = 2.0, gpu_memory_utilization: float = 0.9,
             card_gib: float | None = None) -> Estimate:
    if not 0 < gpu_memory_utilization <= 1:
        raise ValueError("gpu_memory_utilization must be in (0, 1]")
    weights = params_billion * bytes_per_param
    kv = hidden * layers * kv_heads / attn_heads * context * kv_bytes * 2 / 2**30
    needed = (weights + kv) / gpu_memory_utilization
    cards = None
    if card_gib is not None:
        cards = max(1, math.ceil(needed / card_gib))
        while attn_heads % cards:
            cards += 1
    return Estimate(weights, kv, needed, cards)


def from_config(config: dict[str, Any], *, params_billion: float, context: int | None = None,
                **kwargs: Any) -> Estimate:
    """The estimate for a Hugging Face ``config.json`` (its context unless one is given)."""
    attn = int(config["num_attention_heads"])
    return estimate(
        params_billion=params_billion, hidden=int(config["hidden_size"]), layers=int(config["num_hidden_layers"]),
        kv_heads=int(config.get("num_key_value_heads") or attn), attn_heads=attn,
        context=int(context or config.get("max_position_embeddings") or 2048), **kwargs,
    )
