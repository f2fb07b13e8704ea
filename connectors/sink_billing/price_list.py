"""The operator's price list: test code -> price and currency for a date range.

CSV columns ``test_code,price,currency,effective_from,effective_to`` (dates as
YYYY-MM-DD, both ends inclusive, an empty ``effective_to`` means open-ended). A
test code absent from the list is not billable automatically: its events are
recorded as unpriced for review (README.md, "Unpriced events").
"""

from __future__ import annotations

import csv
from bisect import bisect_right
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date
from decimal import Decimal, InvalidOperation
from pathlib import Path

from common import ConfigError

COLUMNS = ("test_code", "price", "currency", "effective_from", "effective_to")
_SETTING = "BILLING_PRICE_LIST"
# The money columns are NUMERIC(12, 2): the database would round a third decimal silently and
# reject 10**10 or more on every event priced by that row, so such prices are refused up front.
_CENT = Decimal("0.01")
_PRICE_LIMIT = Decimal(10) ** 10


@dataclass(frozen=True, slots=True)
class Price:
    test_code: str
    amount: Decimal
    currency: str
    effective_from: date
    effective_to: date | None  # inclusive; None = open-ended

    def covers(self, day: date) -> bool:
        return self.effective_from <= day and (self.effective_to is None or day <= self.effective_to)


class PriceList:
    """Prices by test code, looked up by the date the test became final."""

    def __init__(self, prices: Iterable[Price]) -> None:
        by_code: dict[str, list[Price]] = {}
        for price in prices:
            by_code.setdefault(price.test_code, []).append(price)
        for code, ranges in by_code.items():
            ranges.sort(key=lambda p: p.effective_from)
            for earlier, later in zip(ranges, ranges[1:]):
                if earlier.effective_to is None or earlier.effective_to >= later.effective_from:
                    raise ValueError(f"overlapping price ranges for test code {code}")
        self._by_code = by_code
        self._starts = {code: [p.effective_from for p in ranges] for code, ranges in by_code.items()}

    def __contains__(self, test_code: str) -> bool:
        return test_code in self._by_code

    def __len__(self) -> int:
        return sum(len(r) for r in self._by_code.values())

    def lookup(self, test_code: str, day: date) -> Price | None:
        """The price in effect on ``day``, or None (not on the list, or no range covers the day)."""
        ranges = self._by_code.get(test_code)
        if not ranges:
            return None
        index = bisect_right(self._starts[test_code], day) - 1
        if index >= 0 and ranges[index].covers(day):
            return ranges[index]
        return None


def parse_price_rows(rows: Iterable[dict[str, str]]) -> PriceList:
    """Build a PriceList from CSV dict rows; ValueError names the (1-based, header = 1) line."""
    prices = []
    for line, row in enumerate(rows, start=2):
        try:
            code = (row.get("test_code") or "").strip()
            currency = (row.get("currency") or "").strip().upper()
            if not code:
                raise ValueError("empty test_code")
            if len(currency) != 3 or not currency.isalpha():
                raise ValueError("currency must be a 3-letter ISO 4217 code")
            try:
                amount = Decimal((row.get("price") or "").strip())
            except InvalidOperation:
                raise ValueError("price must be a non-negative number") from None
            if not amount.is_finite() or amount < 0:
                raise ValueError("price must be a non-negative number")
            if amount >= _PRICE_LIMIT:
                raise ValueError(f"price must be less than {_PRICE_LIMIT:f}")
            if amount != amount.quantize(_CENT):
                raise ValueError("price has more than 2 decimal places")
            start = date.fromisoformat((row.get("effective_from") or "").strip())
            end_text = (row.get("effective_to") or "").strip()
            end = date.fromisoformat(end_text) if end_text else None
            if end is not None and end < start:
                raise ValueError("effective_to is before effective_from")
        except ValueError as exc:
            raise ValueError(f"line {line}: {exc}") from None
        prices.append(Price(code, amount, currency, start, end))
    return PriceList(prices)


def load_price_list(path: str | Path) -> PriceList:
    """Read the operator's CSV; a missing or malformed file is a configuration error."""
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise ConfigError([f"{_SETTING}: missing columns {', '.join(missing)}"])
            return parse_price_rows(reader)
    except OSError as exc:
        raise ConfigError([f"{_SETTING}: cannot read {path} ({exc.strerror})"]) from None
    except ValueError as exc:
        raise ConfigError([f"{_SETTING}: {exc}"]) from None
