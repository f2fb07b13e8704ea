from __future__ import annotations

from datetime import date
from decimal import Decimal
from pathlib import Path

import pytest

from common.errors import ConfigError
from connectors.sink_billing.price_list import load_price_list, parse_price_rows
from connectors.sink_billing.settings import EXAMPLE_PRICE_LIST

HEADER = "test_code,price,currency,effective_from,effective_to\n"


def write_csv(tmp_path: Path, body: str, header: str = HEADER) -> Path:
    path = tmp_path / "prices.csv"
    path.write_text(header + body)
    return path


def test_shipped_example_loads_and_prices_glucose_by_service_date() -> None:
    prices = load_price_list(EXAMPLE_PRICE_LIST)
    assert prices.lookup("2345-7", date(2025, 12, 31)).amount == Decimal("8.50")  # type: ignore[union-attr]
    assert prices.lookup("2345-7", date(2026, 1, 1)).amount == Decimal("9.00")  # type: ignore[union-attr]


def test_range_ends_are_inclusive_and_gaps_have_no_price(tmp_path: Path) -> None:
    prices = load_price_list(write_csv(tmp_path, "X,1.00,usd,2024-01-01,2024-06-30\nX,2.00,USD,2024-08-01,\n"))
    assert prices.lookup("X", date(2024, 6, 30)).currency == "USD"  # type: ignore[union-attr]
    assert prices.lookup("X", date(2024, 7, 15)) is None
    assert prices.lookup("X", date(2023, 12, 31)) is None
    assert prices.lookup("X", date(2099, 1, 1)).amount == Decimal("2.00")  # type: ignore[union-attr]
    assert prices.lookup("Y", date(2024, 1, 1)) is None
    assert "X" in prices and "Y" not in prices


def test_overlapping_ranges_are_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="BILLING_PRICE_LIST: overlapping price ranges for test code X"):
        load_price_list(write_csv(tmp_path, "X,1.00,USD,2024-01-01,\nX,2.00,USD,2024-08-01,\n"))


@pytest.mark.parametrize("row, problem", [
    ("X,abc,USD,2024-01-01,", "line 2: price"),
    ("X,-1,USD,2024-01-01,", "line 2: price"),
    ("X,1.00,US,2024-01-01,", "line 2: currency"),
    ("X,1.00,USD,01/02/2024,", "line 2"),
    (",1.00,USD,2024-01-01,", "line 2: empty test_code"),
    ("X,1.00,USD,2024-02-01,2024-01-01", "line 2: effective_to is before"),
])
def test_malformed_rows_name_the_line(tmp_path: Path, row: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=f"BILLING_PRICE_LIST: {problem}"):
        load_price_list(write_csv(tmp_path, row + "\n"))


def test_missing_file_and_missing_columns_are_configuration_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="BILLING_PRICE_LIST: cannot read"):
        load_price_list(tmp_path / "absent.csv")
    with pytest.raises(ConfigError, match="missing columns currency"):
        load_price_list(write_csv(tmp_path, "X,1,2024-01-01,\n", header="test_code,price,effective_from,effective_to\n"))


def test_parse_rows_builds_an_empty_list_from_no_rows() -> None:
    assert len(parse_price_rows([])) == 0


@pytest.mark.parametrize("row, problem", [
    ("X,1.255,USD,2024-01-01,", "line 3: price has more than 2 decimal places"),
    ("X,10000000000,USD,2024-01-01,", "line 3: price must be less than 10000000000"),
    ("X,1E+10,USD,2024-01-01,", "line 3: price must be less than 10000000000"),
    ("X,1E+30,USD,2024-01-01,", "line 3: price must be less than 10000000000"),
    ("X,0.001,USD,2024-01-01,", "line 3: price has more than 2 decimal places"),
])
def test_prices_the_money_column_cannot_hold_exactly_are_rejected_naming_the_line(
        tmp_path: Path, row: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=f"BILLING_PRICE_LIST: {problem}"):
        load_price_list(write_csv(tmp_path, "Y,1.00,USD,2024-01-01,\n" + row + "\n"))


def test_prices_that_fit_the_money_column_load_unchanged(tmp_path: Path) -> None:
    prices = load_price_list(write_csv(tmp_path, "X,9999999999.99,USD,2024-01-01,\nY,1.250,USD,2024-01-01,\n"
                                                 "Z,7,USD,2024-01-01,\n"))
    assert prices.lookup("X", date(2024, 1, 1)).amount == Decimal("9999999999.99")  # type: ignore[union-attr]
    assert prices.lookup("Y", date(2024, 1, 1)).amount == Decimal("1.25")  # type: ignore[union-attr]
    assert prices.lookup("Z", date(2024, 1, 1)).amount == Decimal("7")  # type: ignore[union-attr]
