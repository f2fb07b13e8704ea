"""Provider clients against httpx.MockTransport: what each answer of Twilio and SendGrid becomes."""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import time
from collections.abc import Callable
from email.utils import formatdate
from pathlib import Path
from urllib.parse import parse_qs

import httpx
import pytest

from connectors.sink_notify.providers import (
    Accepted,
    FileOutbox,
    OutgoingMessage,
    Rejected,
    RetryLater,
    SendGridEmail,
    SendResult,
    TwilioSms,
    retry_after_seconds,
)

PHONE = "+15550001234"
EMAIL = "canary.patient@example.org"
BODY = "CANARY-BODY your results are ready"
KEY = "6f1c2a4e-8d7b-4c1e-9a2f-0b3c4d5e6f70"
SMS = OutgoingMessage(key=KEY, channel="sms", to=PHONE, body=BODY, reference="ACC1")
MAIL = OutgoingMessage(key=KEY, channel="email", to=EMAIL, body=BODY, subject="Results ready", reference="ACC1")
Handler = Callable[[httpx.Request], httpx.Response]


def twilio(handler: Handler, **options: object) -> TwilioSms:
    settings: dict[str, object] = {"account_sid": "AC123", "auth_token": "tok", "from_number": "+15557654321"}
    return TwilioSms(base_url="https://sms.test", transport=httpx.MockTransport(handler), **(settings | options))


def sendgrid(handler: Handler, **options: object) -> SendGridEmail:
    settings: dict[str, object] = {"api_key": "SG.key", "from_email": "lab@example.com"}
    return SendGridEmail(base_url="https://mail.test", transport=httpx.MockTransport(handler), **(settings | options))


def send(provider: TwilioSms | SendGridEmail | FileOutbox, message: OutgoingMessage) -> SendResult:
    async def run() -> SendResult:
        try:
            return await provider.send(message)
        finally:
            await provider.aclose()

    return asyncio.run(run())


def answer(status: int, body: object = None, headers: dict[str, str] | None = None) -> Handler:
    return lambda request: httpx.Response(status, json=body, headers=headers)


def twilio_error(status: int, code: int) -> Handler:
    # Twilio's own message quotes the number: it must never reach a reason.
    return answer(status, {"code": code, "status": status, "message": f"The 'To' number {PHONE} is bad: {BODY}",
                           "more_info": f"https://www.twilio.com/docs/errors/{code}"})


# --- Twilio ---------------------------------------------------------------------------------------

def test_twilio_posts_form_with_basic_auth_and_idempotency_key() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(201, json={"sid": "SM42", "status": "queued"})

    assert send(twilio(handler), SMS) == Accepted("SM42")
    request = seen[0]
    assert request.method == "POST"
    assert str(request.url) == "https://sms.test/2010-04-01/Accounts/AC123/Messages.json"
    assert request.headers["Authorization"] == "Basic " + base64.b64encode(b"AC123:tok").decode()
    assert request.headers["Idempotency-Key"] == KEY
    assert request.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert parse_qs(request.content.decode()) == {"To": [PHONE], "From": ["+15557654321"], "Body": [BODY]}


def test_twilio_messaging_service_and_no_idempotency_header() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"sid": "SM43"})

    provider = twilio(handler, from_number=None, messaging_service_sid="MG9", idempotency_header=None)
    assert send(provider, SMS) == Accepted("SM43")
    form = parse_qs(seen[0].content.decode())
    assert form["MessagingServiceSid"] == ["MG9"] and "From" not in form
    assert "Idempotency-Key" not in seen[0].headers


@pytest.mark.parametrize("sender", [{}, {"from_number": "+1555", "messaging_service_sid": "MG9"}])
def test_twilio_needs_exactly_one_sender(sender: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="exactly one"):
        TwilioSms(account_sid="AC1", auth_token="secret-token", **sender)


@pytest.mark.parametrize(("handler", "expected"), [
    (twilio_error(400, 21610), Rejected("21610 recipient opted out (STOP)", "21610", "opted_out")),
    (twilio_error(400, 21211), Rejected("21211 invalid 'To' number", "21211", "invalid")),
    (twilio_error(400, 21614), Rejected("21614 'To' is not a mobile number", "21614", "landline")),
    (twilio_error(400, 21408), Rejected("21408 cannot route to the region of 'To'", "21408", None)),
    (twilio_error(400, 21612), Rejected("21612 cannot route to the 'To' number", "21612", None)),
    (twilio_error(400, 21602), Rejected("HTTP 400 error 21602", "21602", None)),
    (answer(404, {"detail": f"no {PHONE}"}), Rejected("HTTP 404 not found", "http-404", None)),
    (answer(400, None), Rejected("HTTP 400 bad request", "http-400", None)),
    (twilio_error(429, 20429), RetryLater("429 too many requests (20429)", None)),
    (twilio_error(400, 20429), RetryLater("400 too many requests (20429)", None)),
    (answer(429, None), RetryLater("429 too many requests", None)),
    (answer(503, None), RetryLater("HTTP 503", None)),
    (answer(500, {"message": PHONE}), RetryLater("HTTP 500", None)),
    (twilio_error(401, 20003), RetryLater("HTTP 401 authentication failed", None)),
    (answer(403, None), RetryLater("HTTP 403 forbidden", None)),
    (answer(408, None), RetryLater("HTTP 408 request timeout", None)),
])
def test_twilio_answers_map_to_results(handler: Handler, expected: SendResult) -> None:
    assert send(twilio(handler), SMS) == expected


def test_twilio_429_retry_after_seconds() -> None:
    result = send(twilio(answer(429, {"code": 20429}, {"Retry-After": "7"})), SMS)
    assert result == RetryLater("429 too many requests (20429)", 7.0)


def test_twilio_429_retry_after_http_date() -> None:
    result = send(twilio(answer(429, None, {"Retry-After": formatdate(time.time() + 120, usegmt=True)})), SMS)
    assert isinstance(result, RetryLater) and result.retry_after is not None
    assert 118 <= result.retry_after <= 120


def test_accepted_without_sid_falls_back_to_the_key() -> None:
    assert send(twilio(answer(201, {"status": "queued"})), SMS) == Accepted(KEY)


# --- transport failures ---------------------------------------------------------------------------

def failing(error: type[httpx.TransportError]) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        raise error(f"cannot send {PHONE} {EMAIL} {BODY}", request=request)

    return handler


@pytest.mark.parametrize(("error", "reason"), [
    (httpx.ReadTimeout, "timeout"),
    (httpx.ConnectTimeout, "timeout"),
    (httpx.PoolTimeout, "timeout"),
    (httpx.ConnectError, "connect error"),
    (httpx.ReadError, "transport error (ReadError)"),
    (httpx.RemoteProtocolError, "transport error (RemoteProtocolError)"),
])
def test_transport_failures_are_retried_later(error: type[httpx.TransportError], reason: str) -> None:
    assert send(twilio(failing(error)), SMS) == RetryLater(reason, None)
    assert send(sendgrid(failing(error)), MAIL) == RetryLater(reason, None)


# --- SendGrid -------------------------------------------------------------------------------------

def test_sendgrid_posts_json_with_bearer_token_and_idempotency_key() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(202, headers={"X-Message-Id": "sg-77"})

    assert send(sendgrid(handler, from_name="City Lab"), MAIL) == Accepted("sg-77")
    request = seen[0]
    assert str(request.url) == "https://mail.test/v3/mail/send"
    assert request.headers["Authorization"] == "Bearer SG.key"
    assert request.headers["Idempotency-Key"] == KEY
    assert json.loads(request.content) == {
        "personalizations": [{"to": [{"email": EMAIL}]}],
        "from": {"email": "lab@example.com", "name": "City Lab"},
        "subject": "Results ready",
        "content": [{"type": "text/plain", "value": BODY}],
    }  # no categories / custom_args: SendGrid shows them to anyone with dashboard access


def test_sendgrid_without_from_name_or_message_id() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(202)

    assert send(sendgrid(handler), MAIL) == Accepted(KEY)
    assert json.loads(seen[0].content)["from"] == {"email": "lab@example.com"}


def sendgrid_error(status: int, field: str | None) -> Handler:
    return answer(status, {"errors": [{"message": f"{EMAIL} does not look valid ({BODY})", "field": field}]})


@pytest.mark.parametrize(("handler", "expected"), [
    (sendgrid_error(400, "personalizations.0.to.0.email"),
     Rejected("HTTP 400 bad request (personalizations.0.to.0.email)", "http-400", "invalid")),
    (sendgrid_error(400, "personalizations.0.to"),
     Rejected("HTTP 400 bad request (personalizations.0.to)", "http-400", "invalid")),
    (sendgrid_error(400, "from.email"), Rejected("HTTP 400 bad request (from.email)", "http-400", None)),
    (sendgrid_error(400, "subject"), Rejected("HTTP 400 bad request (subject)", "http-400", None)),
    (sendgrid_error(400, EMAIL), Rejected("HTTP 400 bad request", "http-400", None)),
    (sendgrid_error(400, None), Rejected("HTTP 400 bad request", "http-400", None)),
    (sendgrid_error(413, "content"), Rejected("HTTP 413 request entity too large (content)", "http-413", None)),
    (answer(404, None), Rejected("HTTP 404 not found", "http-404", None)),
    (answer(429, None), RetryLater("429 too many requests", None)),
    (answer(502, None), RetryLater("HTTP 502", None)),
    (answer(401, {"errors": [{"message": "bad key"}]}), RetryLater("HTTP 401 authentication failed", None)),
    (answer(403, None), RetryLater("HTTP 403 forbidden", None)),
])
def test_sendgrid_answers_map_to_results(handler: Handler, expected: SendResult) -> None:
    assert send(sendgrid(handler), MAIL) == expected


def test_sendgrid_429_waits_until_rate_limit_reset() -> None:
    reset = str(int(time.time()) + 30)
    result = send(sendgrid(answer(429, None, {"X-RateLimit-Reset": reset, "X-RateLimit-Remaining": "0"})), MAIL)
    assert isinstance(result, RetryLater) and result.retry_after is not None
    assert 28 <= result.retry_after <= 30


def test_sendgrid_429_with_retry_after() -> None:
    assert send(sendgrid(answer(429, None, {"Retry-After": "3"})), MAIL) == RetryLater("429 too many requests", 3.0)


@pytest.mark.parametrize(("headers", "expected"), [
    ({"Retry-After": "12"}, 12.0),
    ({"Retry-After": "1.5"}, 1.5),
    ({"Retry-After": "-4"}, 0.0),
    ({"Retry-After": "Wed, 21 Oct 2015 07:28:30 GMT"}, 30.0),
    ({"Retry-After": "Wed, 21 Oct 2015 07:27:00 GMT"}, 0.0),  # already past
    ({"X-RateLimit-Reset": "1445412510"}, 30.0),  # epoch seconds
    ({"X-RateLimit-Reset": "1445412000"}, 0.0),  # epoch in the past: min 0
    ({"X-RateLimit-Reset": "20"}, 20.0),  # seconds-to-wait from servers that send that
    ({"Retry-After": "5", "X-RateLimit-Reset": "1445412510"}, 30.0),  # the later "not before" wins
    ({"Retry-After": "soon"}, None),
    ({"Retry-After": "inf"}, None),
    ({}, None),
])
def test_retry_after_seconds(headers: dict[str, str], expected: float | None) -> None:
    now = 1445412480.0  # Wed, 21 Oct 2015 07:28:00 GMT
    assert retry_after_seconds(httpx.Headers(headers), now=now) == expected


# --- PHI never leaves in a reason or an exception -------------------------------------------------

CANARY_HANDLERS: list[Handler] = [
    *(twilio_error(s, c) for s, c in [(400, 21610), (400, 21211), (400, 99999), (429, 20429), (500, 0)]),
    *(sendgrid_error(s, f) for s, f in [(400, "personalizations.0.to.0.email"), (400, EMAIL), (413, BODY)]),
    answer(400, {"errors": [{"field": PHONE.lstrip("+"), "message": PHONE}]}),
    answer(401, {"message": f"{PHONE} {EMAIL} {BODY}"}),
    lambda request: httpx.Response(400, text=f"<html>{PHONE} {EMAIL} {BODY}</html>"),
    failing(httpx.ConnectError), failing(httpx.ReadTimeout), failing(httpx.ReadError),
]


def assert_no_phi(text: str) -> None:
    for marker in (PHONE, PHONE.lstrip("+"), "5550001234", EMAIL, "canary", "CANARY-BODY"):
        assert marker.lower() not in text.lower()


@pytest.mark.parametrize("handler", CANARY_HANDLERS)
def test_no_reason_or_code_contains_the_recipient_or_body(handler: Handler) -> None:
    for provider, message in ((twilio(handler), SMS), (sendgrid(handler), MAIL)):
        result = send(provider, message)
        assert_no_phi(repr(result))


def test_message_repr_shows_no_phi() -> None:
    assert_no_phi(repr(SMS) + repr(MAIL))
    assert KEY in repr(SMS) and "ACC1" in repr(SMS)


def test_unencodable_text_is_rejected_without_quoting_it() -> None:
    bad = OutgoingMessage(key=KEY, channel="sms", to=PHONE, body="CANARY-BODY \ud800")
    result = send(twilio(answer(201, {"sid": "SM1"})), bad)
    assert isinstance(result, Rejected) and result.code == "encoding"
    assert_no_phi(repr(result))


def test_wrong_channel_raises_without_phi() -> None:
    for provider, message in ((twilio(answer(201)), MAIL), (sendgrid(answer(202)), SMS)):
        with pytest.raises(ValueError) as raised:
            send(provider, message)
        assert_no_phi(repr(raised.value))


def test_constructor_errors_do_not_show_secrets() -> None:
    with pytest.raises(ValueError) as raised:
        TwilioSms(account_sid="AC1", auth_token="secret-token")
    assert "secret-token" not in str(raised.value)
    with pytest.raises(ValueError):
        SendGridEmail(api_key="", from_email="lab@example.com")


# --- the pooled client ----------------------------------------------------------------------------

def test_client_is_made_in_the_sending_loop_and_reused_until_closed() -> None:
    holder: dict[str, TwilioSms] = {}
    thread = threading.Thread(target=lambda: holder.setdefault("p", twilio(answer(201, {"sid": "SM1"}))))
    thread.start()
    thread.join()
    provider = holder["p"]  # built in another thread, like the sink's configuration code does

    async def run() -> None:
        results = await asyncio.gather(*(provider.send(SMS) for _ in range(100)))
        assert results == [Accepted("SM1")] * 100
        clients = provider._http._clients
        assert clients and not any(client.is_closed for client in clients)
        await provider.aclose()
        assert all(client.is_closed for client in clients) and provider._http._clients == []
        await provider.aclose()  # twice is harmless

    asyncio.run(run())


# --- FileOutbox -----------------------------------------------------------------------------------

def lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_file_outbox_writes_one_line_and_answers_its_id(tmp_path: Path) -> None:
    path = tmp_path / "outbox.jsonl"
    assert send(FileOutbox(path, "email"), MAIL) == Accepted(f"file-{KEY}")
    [line] = lines(path)
    assert {k: line[k] for k in ("key", "channel", "to", "subject", "body")} == {
        "key": KEY, "channel": "email", "to": EMAIL, "subject": "Results ready", "body": BODY}
    assert isinstance(line["sent_at"], str) and line["sent_at"].endswith("+00:00")


def test_file_outbox_is_idempotent_across_instances(tmp_path: Path) -> None:
    path = tmp_path / "outbox.jsonl"
    assert send(FileOutbox(path, "sms"), SMS) == Accepted(f"file-{KEY}")
    assert send(FileOutbox(path, "sms"), SMS) == Accepted(f"file-{KEY}")  # a restart reads the file
    first, second = FileOutbox(path, "sms"), FileOutbox(path, "sms")
    other = OutgoingMessage(key="k-2", channel="sms", to=PHONE, body=BODY)
    assert send(first, other) == Accepted("file-k-2")
    assert send(second, other) == Accepted("file-k-2")  # second learns of first's line before writing
    assert [line["key"] for line in lines(path)] == [KEY, "k-2"]


def test_file_outbox_concurrent_writes_from_sms_and_email_share_one_file(tmp_path: Path) -> None:
    path = tmp_path / "outbox.jsonl"
    sms, email = FileOutbox(path, "sms"), FileOutbox(path, "email")
    messages = [OutgoingMessage(key=f"s{i}", channel="sms", to=PHONE, body=BODY * 20) for i in range(60)]
    messages += [OutgoingMessage(key=f"e{i}", channel="email", to=EMAIL, body=BODY * 20, subject="x")
                 for i in range(60)]

    async def run() -> list[SendResult]:
        sends = [(sms if m.channel == "sms" else email).send(m) for m in messages * 2]  # each one twice
        return await asyncio.gather(*sends)

    results = asyncio.run(run())
    assert results == [Accepted(f"file-{m.key}") for m in messages] * 2
    written = lines(path)  # every line whole and parseable
    assert sorted(line["key"] for line in written) == sorted(m.key for m in messages)


def test_file_outbox_survives_a_torn_last_line(tmp_path: Path) -> None:
    path = tmp_path / "outbox.jsonl"
    path.write_text(json.dumps({"key": "old"}) + "\n" + '{"key": "torn", "to": "+1')  # crash mid-write
    assert send(FileOutbox(path, "sms"), SMS) == Accepted(f"file-{KEY}")
    assert send(FileOutbox(path, "sms"), OutgoingMessage(key="old", channel="sms", to=PHONE, body=BODY)) \
        == Accepted("file-old")
    text = path.read_text().splitlines()
    assert json.loads(text[0])["key"] == "old" and json.loads(text[2])["key"] == KEY and len(text) == 3


def test_file_outbox_write_failure_is_retried_later(tmp_path: Path) -> None:
    result = send(FileOutbox(tmp_path / "missing-dir" / "outbox.jsonl", "sms"), SMS)
    assert result == RetryLater("outbox write failed (ENOENT)", None)
