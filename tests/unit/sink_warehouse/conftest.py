"""Fixtures of the warehouse sink's unit tests (helpers live in warehouse_records.py)."""

from __future__ import annotations

import pytest

from warehouse_records import FakeContext, RecordFactory, records_factory


@pytest.fixture
def context() -> FakeContext:
    return FakeContext()


@pytest.fixture
def make_records(context: FakeContext) -> RecordFactory:
    """``make_records(offsets, ts=lambda i: ..., schema=..., topic=..., partition=..., extra=...)``;
    ``extra`` adds fields: a dict, or a function of the offset."""
    return records_factory(context)
