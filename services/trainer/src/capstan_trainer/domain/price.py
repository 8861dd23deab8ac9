"""The estimated price per hour of what a task asks for (SPEC §0 "Price", §3.1 "the form shows the price
per hour"), from the operator's price table: per card type, per CPU core and per GiB of memory.

The table is a JSON file (``CAPSTAN_PRICE_TABLE``, default ``<data-dir>/prices.json``)::

    {"currency": "USD", "cpu_core_hour": 0.04, "memory_gib_hour": 0.005, "gpu_hour": {"A100": 2.5}}

No table: every price is 0 in the currency "" (the install charges nothing).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from capstan_core.contracts.common import ResourceSpec


@dataclass(frozen=True)
class PriceTable:
    currency: str = ""
    cpu_core_hour: float = 0.0
    memory_gib_hour: float = 0.0
    gpu_hour: dict[str, float] = field(default_factory=dict)

    @classmethod
    def parse(cls, data: object) -> PriceTable:
        if not isinstance(data, dict):
            raise ValueError("the price table must be a JSON object")
        gpu = data.get("gpu_hour", {})
        if not isinstance(gpu, dict):
            raise ValueError("gpu_hour must map card types to prices")
        table = cls(currency=str(data.get("currency", "")), cpu_core_hour=float(data.get("cpu_core_hour", 0)),
                    memory_gib_hour=float(data.get("memory_gib_hour", 0)),
                    gpu_hour={str(k): float(v) for k, v in gpu.items()})
        prices = [table.cpu_core_hour, table.memory_gib_hour, *table.gpu_hour.values()]
        if not all(math.isfinite(p) and p >= 0 for p in prices):
            raise ValueError("prices must be finite and >= 0")
        return table

    @classmethod
    def load(cls, path: Path) -> PriceTable:
        """The table in ``path``; an absent file is the free table."""
        try:
            text = path.read_text()
        except FileNotFoundError:
            return cls()
        return cls.parse(json.loads(text))


@dataclass(frozen=True)
class Price:
    per_hour: float
    currency: str
    per_instance_hour: float
    note: str = ""  # what the estimate leaves out (a card type the table does not price)


def price_per_hour(table: PriceTable, resources: ResourceSpec, instance_count: int) -> Price:
    gpu_price, note = 0.0, ""
    if resources.gpu > 0:
        if resources.gpu_type not in table.gpu_hour and table.gpu_hour:
            note = f"the price table has no price for card type {resources.gpu_type}; its cards are not counted"
        gpu_price = table.gpu_hour.get(resources.gpu_type, 0.0) * resources.gpu
    one = resources.cpu * table.cpu_core_hour + resources.memory_gib * table.memory_gib_hour + gpu_price
    count = max(1, instance_count)
    return Price(per_hour=round(one * count, 6), currency=table.currency, per_instance_hour=round(one, 6), note=note)
