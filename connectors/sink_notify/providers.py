"""The notification sink's providers: one async ``send`` per message, answered as data.

    SendResult = Accepted    the provider took the message (its id is kept in the ledger)
               | RetryLater  transient or operator-side (429, 5xx, timeouts, bad credentials):
                             the message stays queued; ``retry_after`` backs off every sender
               | Rejected    this message will never go out (opted out, invalid number...):
                             ``contact_flag`` says what it tells about the contact

``TwilioSms`` and ``SendGridEmail`` speak the Twilio Messages and SendGrid v3 APIs over one
pooled ``httpx.AsyncClient`` each, created on first use inside the sink's event loop;
``FileOutbox`` appends JSON lines to a file for the demo. Reasons, codes and exception
messages never contain the recipient or the body: provider error texts quote the
number or address, so only status codes, error codes and our own fixed wording are kept.
"""

from __future__ import annotations

import asyncio
import errno
import json
import math
import os
import re
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, Literal, Protocol

import httpx

Channel = Literal["sms", "email"]
ContactFlag = Literal["opted_out", "invalid", "landline"]


@dataclass(frozen=True, slots=True)
class OutgoingMessage:
    key: str  # the ledger's message key (a UUID string); sent as the idempotency key
    channel: Channel
    to: str = field(repr=False)  # PHI: kept out of repr, so a logged message or a traceback shows none
    body: str = field(repr=False)
    subject: str | None = field(default=None, repr=False)
    reference: str = ""  # short non-PHI reference, may be logged


@dataclass(frozen=True, slots=True)
class Accepted:
    provider_message_id: str


@dataclass(frozen=True, slots=True)
class RetryLater:
    reason: str
    retry_after: float | None  # seconds


@dataclass(frozen=True, slots=True)
class Rejected:
    reason: str
    code: str  # provider error code ("21211") or "http-400"
    contact_flag: ContactFlag | None


SendResult = Accepted | RetryLater | Rejected


class Provider(Protocol):
    name: str
    channel: str

    async def send(self, message: OutgoingMessage) -> SendResult: ...

    async def aclose(self) -> None: ...


# Twilio error codes that are final for the message, with our wording (theirs quotes the number).
TWILIO_PERMANENT_CODES: dict[int, tuple[str, ContactFlag | None]] = {
    21610: ("recipient opted out (STOP)", "opted_out"),
    21211: ("invalid 'To' number", "invalid"),
    21614: ("'To' is not a mobile number", "landline"),
    21408: ("cannot route to the region of 'To'", None),
    21612: ("cannot route to the 'To' number", None),
}
_TWILIO_TOO_MANY_REQUESTS = 20429
_AUTH_STATUSES = {401: "authentication failed", 403: "forbidden"}
# A SendGrid field path such as "personalizations.0.to.0.email" is safe to show, unlike its message.
_FIELD_PATH = re.compile(r"(personalizations|from|reply_to|subject|content|headers|mail_settings"
                         r"|tracking_settings)(\.([a-z_]{1,40}|\d{1,3})){0,6}")


class _PooledClient:
    """Pooled ``httpx.AsyncClient``s, made on first use: the provider is built in another thread
    than the event loop that sends. Transport failures come back as RetryLater, never raised.

    httpcore's pool scans every connection on each request (its cost grows with the square of
    the pool size: 64 connections in one pool measured ~4x slower than 8 pools of 8), so the
    connections are spread over several small clients, used in turn."""

    SHARD_CONNECTIONS = 8

    def __init__(self, *, timeout_s: float, max_connections: int, idempotency_header: str | None,
                 transport: httpx.AsyncBaseTransport | None, **options: Any) -> None:
        per_client = min(max_connections, self.SHARD_CONNECTIONS)
        self._shards = -(-max_connections // per_client)
        limits = httpx.Limits(max_connections=per_client, max_keepalive_connections=per_client)
        self._options = dict(options, timeout=httpx.Timeout(timeout_s), limits=limits, transport=transport)
        self._idempotency_header = idempotency_header
        self._clients: list[httpx.AsyncClient] = []
        self._turn = 0

    async def post(self, url: str, message: OutgoingMessage, **content: Any) -> httpx.Response | SendResult:
        if not self._clients:
            self._clients = [httpx.AsyncClient(**self._options) for _ in range(self._shards)]
        self._turn = (self._turn + 1) % len(self._clients)
        client = self._clients[self._turn]
        headers = {self._idempotency_header: message.key} if self._idempotency_header else {}
        try:
            return await client.post(url, headers=headers, **content)
        except httpx.TimeoutException:
            return RetryLater("timeout", None)
        except httpx.ConnectError:
            return RetryLater("connect error", None)
        except httpx.RequestError as error:
            return RetryLater(f"transport error ({type(error).__name__})", None)
        except UnicodeEncodeError:  # its args hold the whole text: it must not escape
            return Rejected("message text cannot be encoded", "encoding", None)

    async def aclose(self) -> None:
        clients, self._clients = self._clients, []
        for client in clients:
            await client.aclose()


def _not_the_messages_fault(response: httpx.Response) -> RetryLater | None:
    """Answers that say nothing about the message: keep it queued (401/403 show an outage)."""
    status = response.status_code
    if status in _AUTH_STATUSES:
        return RetryLater(f"HTTP {status} {_AUTH_STATUSES[status]}", None)
    if status == 408:  # the provider timed out reading our request: a timeout like any other
        return RetryLater("HTTP 408 request timeout", None)
    if status >= 500 or status < 400:
        return RetryLater(f"HTTP {status}", retry_after_seconds(response.headers))
    return None


def _check_channel(provider: Provider, message: OutgoingMessage) -> None:
    if message.channel != provider.channel:
        raise ValueError(f"{provider.name} sends {provider.channel}, not {message.channel} (key {message.key})")


class TwilioSms:
    """SMS through a Twilio-compatible Messages API (form-encoded, basic auth)."""

    name = "twilio"
    channel = "sms"

    def __init__(self, *, base_url: str = "https://api.twilio.com", account_sid: str, auth_token: str,
                 from_number: str | None = None, messaging_service_sid: str | None = None,
                 timeout_s: float = 10.0, max_connections: int = 64,
                 idempotency_header: str | None = "Idempotency-Key",
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        if not account_sid or not auth_token:
            raise ValueError("twilio: account_sid and auth_token are required")
        if bool(from_number) == bool(messaging_service_sid):
            raise ValueError("twilio: set exactly one of from_number and messaging_service_sid")
        self._url = f"{base_url.rstrip('/')}/2010-04-01/Accounts/{account_sid}/Messages.json"
        self._sender = {"From": from_number} if from_number else {"MessagingServiceSid": messaging_service_sid}
        self._http = _PooledClient(timeout_s=timeout_s, max_connections=max_connections, transport=transport,
                                   idempotency_header=idempotency_header, auth=(account_sid, auth_token))

    async def send(self, message: OutgoingMessage) -> SendResult:
        _check_channel(self, message)
        response = await self._http.post(self._url, message,
                                         data={"To": message.to, **self._sender, "Body": message.body})
        if not isinstance(response, httpx.Response):
            return response
        status, body = response.status_code, _json(response)
        if 200 <= status < 300:
            sid = body.get("sid")
            return Accepted(sid if isinstance(sid, str) and sid else message.key)
        raw = body.get("code")
        code = int(raw) if isinstance(raw, int) or (isinstance(raw, str) and raw.isdigit()) else None
        if status == 429 or code == _TWILIO_TOO_MANY_REQUESTS:
            suffix = f" ({code})" if code else ""
            return RetryLater(f"{status} too many requests{suffix}", retry_after_seconds(response.headers))
        if transient := _not_the_messages_fault(response):
            return transient
        if code in TWILIO_PERMANENT_CODES:
            wording, flag = TWILIO_PERMANENT_CODES[code]
            return Rejected(f"{code} {wording}", str(code), flag)
        if code is not None:
            return Rejected(f"HTTP {status} error {code}", str(code), None)
        return Rejected(f"HTTP {status} {_phrase(status)}", f"http-{status}", None)

    async def aclose(self) -> None:
        await self._http.aclose()


class SendGridEmail:
    """E-mail through a SendGrid-compatible v3 mail/send (JSON, bearer token)."""

    name = "sendgrid"
    channel = "email"

    def __init__(self, *, base_url: str = "https://api.sendgrid.com", api_key: str, from_email: str,
                 from_name: str | None = None, timeout_s: float = 10.0, max_connections: int = 64,
                 idempotency_header: str | None = "Idempotency-Key",
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        if not api_key or not from_email:
            raise ValueError("sendgrid: api_key and from_email are required")
        self._url = f"{base_url.rstrip('/')}/v3/mail/send"
        self._from = {"email": from_email, **({"name": from_name} if from_name else {})}
        self._http = _PooledClient(timeout_s=timeout_s, max_connections=max_connections, transport=transport,
                                   idempotency_header=idempotency_header,
                                   headers={"Authorization": f"Bearer {api_key}"})

    async def send(self, message: OutgoingMessage) -> SendResult:
        _check_channel(self, message)
        # No categories or custom_args: SendGrid stores and shows them, so they must not carry PHI.
        response = await self._http.post(self._url, message, json={
            "personalizations": [{"to": [{"email": message.to}]}],
            "from": self._from,
            "subject": message.subject or "",
            "content": [{"type": "text/plain", "value": message.body}],
        })
        if not isinstance(response, httpx.Response):
            return response
        status = response.status_code
        if 200 <= status < 300:
            return Accepted(response.headers.get("X-Message-Id") or message.key)
        if status == 429:
            return RetryLater("429 too many requests", retry_after_seconds(response.headers))
        if transient := _not_the_messages_fault(response):
            return transient
        fields = _sendgrid_error_fields(response)
        # Only an error about the recipient says something about the contact ("from.email" is ours).
        recipient = any(f.startswith("personalizations") and "to" in f.split(".") for f in fields)
        shown = f" ({', '.join(fields[:3])})" if fields else ""
        return Rejected(f"HTTP {status} {_phrase(status)}{shown}", f"http-{status}",
                        "invalid" if status == 400 and recipient else None)

    async def aclose(self) -> None:
        await self._http.aclose()


def retry_after_seconds(headers: httpx.Headers, now: float | None = None) -> float | None:
    """Seconds to wait from ``Retry-After`` (seconds or HTTP date) and ``X-RateLimit-Reset``
    (epoch seconds). When both are given the later one wins: each says "not before"."""
    now = time.time() if now is None else now
    waits = [_number(headers.get("Retry-After"))]
    if waits[0] is None and (date := _http_date(headers.get("Retry-After"))) is not None:
        waits[0] = date - now
    if (reset := _number(headers.get("X-RateLimit-Reset"))) is not None:
        # SendGrid sends epoch seconds; some compatible servers send seconds-to-wait instead.
        waits.append(reset - now if reset > 1e9 else reset)
    finite = [max(0.0, w) for w in waits if w is not None and math.isfinite(w)]
    return max(finite) if finite else None


def _number(value: str | None) -> float | None:
    try:
        return float(value) if value else None
    except ValueError:
        return None


def _http_date(value: str | None) -> float | None:
    try:
        date = parsedate_to_datetime(value or "")
    except (TypeError, ValueError, IndexError):
        return None
    return (date if date.tzinfo else date.replace(tzinfo=timezone.utc)).timestamp()  # HTTP dates are GMT


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _sendgrid_error_fields(response: httpx.Response) -> list[str]:
    errors = _json(response).get("errors")
    fields = [e.get("field") for e in errors if isinstance(e, dict)] if isinstance(errors, list) else []
    return [f for f in fields if isinstance(f, str) and _FIELD_PATH.fullmatch(f)]


def _phrase(status: int) -> str:
    return httpx.codes.get_reason_phrase(status).lower() or "error"


class FileOutbox:
    """The demo's provider: one JSON line per message, appended to ``path`` and fsync'ed.

    A key already in the file is answered Accepted without a second line: before each write,
    under a lock, the lines appended since this object last looked (by itself, another
    FileOutbox on the path or an earlier run) are read. The file work runs in a worker thread
    so that fsync does not stall the event loop."""

    name = "file"
    # One lock for every outbox file: the demo writes little, and aliased paths stay safe.
    _lock = threading.Lock()

    def __init__(self, path: str | Path, channel: Channel) -> None:
        self.path = Path(path)
        self.channel = channel
        self._keys: set[str] = set()
        self._offset = 0  # bytes of the file already read into _keys

    async def send(self, message: OutgoingMessage) -> SendResult:
        _check_channel(self, message)
        try:
            await asyncio.to_thread(self._append_once, message)
        except OSError as error:  # disk full, permissions: the operator's problem, keep it queued
            return RetryLater(f"outbox write failed ({errno.errorcode.get(error.errno or 0, 'OSError')})", None)
        return Accepted(f"file-{message.key}")

    async def aclose(self) -> None:
        return None

    def _append_once(self, message: OutgoingMessage) -> None:
        line = {"key": message.key, "channel": message.channel, "to": message.to, "subject": message.subject,
                "body": message.body, "sent_at": datetime.now(timezone.utc).isoformat()}
        data = json.dumps(line).encode() + b"\n"  # ASCII-escaped: no encoding error can quote the text
        with self._lock, open(self.path, "a+b") as file:
            size = file.seek(0, os.SEEK_END)
            file.seek(self._offset)
            for raw in file.read().splitlines():
                try:
                    self._keys.add(json.loads(raw)["key"])
                except (ValueError, KeyError, TypeError):
                    continue  # a line torn by a crash before its fsync: it was never Accepted
            self._offset = size
            if message.key in self._keys:
                return
            if size and os.pread(file.fileno(), 1, size - 1) != b"\n":
                data = b"\n" + data  # end a torn line so ours stays parseable
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
            self._offset = file.tell()
            self._keys.add(message.key)
        if size == 0:  # a new file's directory entry must be durable too
            directory = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)
