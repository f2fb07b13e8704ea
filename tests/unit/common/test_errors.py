from __future__ import annotations

import httpx
import pytest

from common.errors import PermanentError, RetriableError, is_retriable, redact_url_secrets, safe_message, scrub


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


URLS_WITH_SECRETS = [
    ("https://lis.example/fhir/DiagnosticReport?_count=100&access_token=eyJhbGciOi.abc&_sort=_lastUpdated",
     "eyJhbGciOi.abc", "https://lis.example/fhir/DiagnosticReport?_count=100&access_token=********&_sort=_lastUpdated"),
    ("postgresql://billing:hunter2@db:5432/billing?sslmode=require", "hunter2",
     "postgresql://********@db:5432/billing?sslmode=require"),
    ("https://b.s3.amazonaws.com/k?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAEXAMPLE%2F20260101"
     "&X-Amz-Signature=9f86d08188", "9f86d08188",
     "https://b.s3.amazonaws.com/k?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=********&X-Amz-Signature=********"),
    ("https://acct.blob.core.windows.net/c/b?sv=2022-11-02&sig=AbC%2Bd%3D&se=2026-01-01", "AbC%2Bd%3D",
     "https://acct.blob.core.windows.net/c/b?sv=2022-11-02&sig=********&se=2026-01-01"),
    ("https://api.example/v1?key=K123&token=T456&password=p&secret=s&signature=x&client_secret=c", "K123",
     "https://api.example/v1?key=********&token=********&password=********&secret=********&signature=********"
     "&client_secret=********"),
    ("connection to host=db user=billing password='p w' failed", "p w",
     "connection to host=db user=billing password=******** failed"),
]


@pytest.mark.parametrize(("text", "secret", "redacted"), URLS_WITH_SECRETS)
def test_credentials_in_urls_are_redacted_wherever_text_leaves_the_process(text: str, secret: str,
                                                                           redacted: str) -> None:
    assert redact_url_secrets(text) == redacted
    assert secret not in scrub(f"request failed: {text}")
    assert secret not in safe_message(RetriableError(f"FHIR server unreachable: {text}"))


def test_what_is_not_a_secret_is_kept() -> None:
    for text in ("https://lis.example/fhir/Observation?code=1234-5&_count=10", "no parameters here: a=b",
                 "jane@example.org wrote", "lab-results[3]@42"):
        assert redact_url_secrets(text) == text
