from __future__ import annotations

import httpx
import pytest

from common.errors import PermanentError, RetriableError, is_retriable, safe_message, scrub


@pytest.mark.parametrize("message", [
    "duplicate key value violates unique constraint; DETAIL: Key (email)=(jane.doe@example.org) already exists",
    "value '+1 (555) 010-2345' is not valid",
    "result 13.7 out of range for patient 'Jane Roe'",
])
def test_scrub_removes_contact_details_and_values(message: str) -> None:
    cleaned = scrub(message)
    for secret in ("jane.doe@example.org", "555", "13.7", "Jane Roe"):
        assert secret not in cleaned


def test_own_errors_keep_their_safe_message() -> None:
    assert safe_message(PermanentError("accession A123 has no patient id")) == "accession A123 has no patient id"


def test_classification() -> None:
    request = httpx.Request("POST", "http://x")
    assert is_retriable(RetriableError("x"))
    assert not is_retriable(PermanentError("x"))
    assert is_retriable(ConnectionRefusedError())
    assert is_retriable(httpx.ConnectTimeout("t", request=request))
    assert is_retriable(httpx.HTTPStatusError("s", request=request, response=httpx.Response(503, request=request)))
    assert is_retriable(httpx.HTTPStatusError("s", request=request, response=httpx.Response(429, request=request)))
    assert not is_retriable(httpx.HTTPStatusError("s", request=request, response=httpx.Response(400, request=request)))
    assert not is_retriable(ValueError("bad data"))
