"""Local Twilio (SMS) and SendGrid (e-mail) provider APIs with scripted faults, for tests and benchmarks.

One asyncio HTTP/1.1 server (keep-alive) answers ``POST /2010-04-01/Accounts/{sid}/Messages.json``
and ``POST /v3/mail/send``, stores what it accepts and answers a repeated ``Idempotency-Key``
(per channel; only accepted messages are remembered) with the original response. Admin API:
``GET /_admin/health``, ``GET /_admin/messages[?channel=sms|email]`` (messages and stats),
``GET /_admin/stats``, ``GET|POST /_admin/faults`` (POST appends a JSON list of rules),
``POST /_admin/reset`` (messages, stats, keys and rules). A fault rule matches ``channel``
(sms | email | any) and optionally ``to``, waits ``after`` matching requests and fires ``count``
times (default forever; 1 for kill_pid): ``{"status": 429, "retry_after": s}``, ``{"status": 5xx}``,
``{"status": 400}`` or ``{"code": 21610}`` (permanent), ``{"delay": s}``, ``{"rate_limit": R}``
(token bucket per channel), ``{"kill_pid": pid, "signal": 9}`` (store, signal, drop the connection).
``python -m devstack.providers --port N`` runs it; tests use ``start_providers()``. It never
logs message bodies or recipients.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import math
import os
import secrets
import signal as signals
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs

import httpx

from devstack.ports import free_port

TWILIO_PREFIX, TWILIO_SUFFIX, SENDGRID_PATH = "/2010-04-01/Accounts/", "/Messages.json", "/v3/mail/send"
TWILIO_MESSAGES = {
    20003: "Authenticate", 20404: "The requested resource was not found", 20429: "Too Many Requests",
    20500: "An internal server error has occurred", 20503: "Service unavailable",
    21211: "The 'To' number is not a valid phone number.", 21602: "Message body is required.",
    21603: "A 'From' phone number is required.", 21604: "A 'To' phone number is required.",
    21610: "Attempt to send to unsubscribed recipient", 21614: "'To' number is not a valid mobile number",
}
STATS = ("requests", "accepted", "rejected", "throttled", "errors_5xx", "duplicates_suppressed")


@dataclass
class Response:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)

    def encode(self, close: bool) -> bytes:
        head = [f"HTTP/1.1 {self.status} {HTTPStatus(self.status).phrase}", f"Content-Length: {len(self.body)}",
                *(["Content-Type: application/json"] if self.body else []),
                *(f"{name}: {value}" for name, value in self.headers.items()),
                *(["Connection: close"] if close else [])]
        return ("\r\n".join(head) + "\r\n\r\n").encode() + self.body


def json_response(status: int, payload: Any, **headers: str) -> Response:
    return Response(status, json.dumps(payload).encode(), headers)


def twilio_error(code: int, status: int, **headers: str) -> Response:
    return json_response(status, {"code": code, "message": TWILIO_MESSAGES.get(code, "Error"),
                                  "more_info": f"https://www.twilio.com/docs/errors/{code}", "status": status},
                         **headers)


def sendgrid_error(status: int, message: str, field_name: str | None = None, **headers: str) -> Response:
    return json_response(status, {"errors": [{"message": message, "field": field_name, "help": None}]}, **headers)


def seconds_text(seconds: float) -> str:
    """Retry-After in seconds, fractional on purpose: a client-side limiter needs sub-second precision."""
    return f"{max(seconds, 0.001):.3f}".rstrip("0").rstrip(".")


@dataclass
class FaultRule:
    channel: str = "any"
    to: str | None = None
    count: int | None = None
    after: int = 0
    status: int | None = None
    code: int | None = None
    retry_after: float = 1.0
    delay: float = 0.0
    rate_limit: float | None = None
    kill_pid: int | None = None
    signal: int = int(signals.SIGKILL)

    def __post_init__(self) -> None:
        if self.channel not in ("sms", "email", "any"):
            raise ValueError(f"channel must be sms, email or any, not {self.channel!r}")
        if self.status is not None and not 400 <= self.status <= 599:
            raise ValueError(f"status must be 4xx or 5xx, not {self.status}")
        if self.rate_limit is not None and self.rate_limit <= 0:
            raise ValueError("rate_limit must be a positive number of requests per second")
        if self.kill_pid is not None and self.kill_pid <= 1:
            raise ValueError("kill_pid must be the id of one process")  # 0 or -1 would signal groups
        answers = self.status is not None or self.code is not None or self.rate_limit is not None
        self.kind = "kill" if self.kill_pid is not None else "answer" if answers else "delay"
        if self.kind == "delay" and not self.delay:
            raise ValueError("a rule needs status, code, delay, rate_limit or kill_pid")
        if self.kind == "kill" and self.count is None:
            self.count = 1
        self._buckets: dict[str, tuple[float, float]] = {}  # channel -> (tokens, monotonic time)
        self.wait = 0.0  # of the last request the rate limit refused

    def fires(self, channel: str, to: str | None) -> bool:
        """Whether the rule applies to this request now; consumes ``after`` and ``count``."""
        if self.channel not in ("any", channel) or self.to not in (None, to) or self.count == 0:
            return False
        if self.rate_limit is not None:
            self.wait = self.take_token(channel)
            return self.wait > 0
        if self.after > 0:
            self.after -= 1
            return False
        if self.count is not None:
            self.count -= 1
        return True

    def take_token(self, channel: str) -> float:
        """0 if a token was taken from the channel's bucket, else the seconds until one is available."""
        assert self.rate_limit is not None
        now = time.monotonic()
        tokens, then = self._buckets.get(channel, (self.rate_limit, now))
        tokens = min(self.rate_limit, tokens + (now - then) * self.rate_limit)
        self._buckets[channel] = (tokens - 1 if tokens >= 1 else tokens, now)
        return 0.0 if tokens >= 1 else (1 - tokens) / self.rate_limit


@dataclass
class Request:
    channel: str
    to: str | None
    fields: dict[str, Any]
    key: str | None


class ProviderState:
    """Messages, counters, idempotency keys and fault rules of one running server."""

    def __init__(self, sid: str, token: str, api_key: str) -> None:
        self.sid, self.token, self.api_key = sid, token, api_key
        self.reset()

    def reset(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.stats = dict.fromkeys(STATS, 0)
        self.rules: list[FaultRule] = []
        self.replies: dict[tuple[str, str], Response] = {}

    def counted(self, response: Response) -> Response:
        code = response.status
        self.stats["accepted" if code < 300 else "throttled" if code == 429 else
                   "errors_5xx" if code >= 500 else "rejected"] += 1
        return response

    async def provider(self, method: str, path: str, headers: dict[str, str], body: bytes) -> Response | None:
        """Answer one provider API call; None means: drop the connection without answering."""
        self.stats["requests"] += 1
        if path.startswith(TWILIO_PREFIX) and path.endswith(TWILIO_SUFFIX) and method == "POST":
            request = self.parse_sms(path, headers, body)
        elif path == SENDGRID_PATH and method == "POST":
            request = self.parse_email(headers, body)
        else:
            request = json_response(404, {"message": "Not Found"})
        if isinstance(request, Response):
            return self.counted(request)
        for rule in self.rules:
            if rule.kind == "delay" and rule.fires(request.channel, request.to):
                await asyncio.sleep(rule.delay)
        # No awaits from here until the message is stored, so concurrent replays cannot race.
        if (request.channel, request.key) in self.replies:
            self.stats["duplicates_suppressed"] += 1
            return self.replies[(request.channel, request.key)]
        for rule in self.rules:
            if rule.kind == "answer" and rule.fires(request.channel, request.to):
                fault = self.fault(rule, request.channel, request.to)
                await asyncio.sleep(rule.delay)
                return self.counted(fault)
        response = self.accept(request)
        for rule in self.rules:
            if rule.kind == "kill" and rule.fires(request.channel, request.to):
                try:
                    os.kill(rule.kill_pid or 0, rule.signal)
                except ProcessLookupError:
                    pass
                return None
        return response

    def parse_sms(self, path: str, headers: dict[str, str], body: bytes) -> Request | Response:
        if basic_credentials(headers.get("authorization", "")) != (self.sid, self.token):
            return twilio_error(20003, 401, **{"WWW-Authenticate": 'Basic realm="Twilio API"'})
        if path[len(TWILIO_PREFIX):-len(TWILIO_SUFFIX)] != self.sid:
            return twilio_error(20404, 404)
        form = {k: v[0] for k, v in parse_qs(body.decode(errors="replace"), keep_blank_values=True).items()}
        for code, present in ((21604, form.get("To")), (21603, form.get("From") or form.get("MessagingServiceSid")),
                              (21602, form.get("Body"))):
            if not present:
                return twilio_error(code, 400)
        return Request("sms", form["To"], form, headers.get("idempotency-key"))

    def parse_email(self, headers: dict[str, str], body: bytes) -> Request | Response:
        if headers.get("authorization") != f"Bearer {self.api_key}":
            return sendgrid_error(401, "The provided authorization grant is invalid, expired, or revoked")
        try:
            mail = json.loads(body)
            to = mail["personalizations"][0]["to"][0]["email"]
            missing = [name for name, value in (
                ("from", mail.get("from", {}).get("email")),
                ("subject", mail.get("subject") or mail["personalizations"][0].get("subject")),
                ("content", (mail.get("content") or [{}])[0].get("value"))) if not value]
        except (ValueError, LookupError, TypeError, AttributeError):
            return sendgrid_error(400, "The personalizations field is required and must have at least one "
                                       "personalization with a to address.", "personalizations")
        if missing:
            return sendgrid_error(400, f"The {missing[0]} parameter is required.", missing[0])
        return Request("email", to, mail, headers.get("idempotency-key"))

    def fault(self, rule: FaultRule, channel: str, to: str | None = None) -> Response:
        status = rule.status or 400
        if rule.rate_limit is not None or status == 429:
            wait = rule.wait if rule.rate_limit is not None else rule.retry_after
            if channel == "sms":
                return twilio_error(20429, 429, **{"Retry-After": seconds_text(wait)})
            return sendgrid_error(429, "too many requests", **{
                "Retry-After": seconds_text(wait), "X-RateLimit-Remaining": "0",
                "X-RateLimit-Reset": str(math.ceil(time.time() + wait))})
        if channel == "sms":
            code = rule.code or (20000 + status if status >= 500 else 21211)
            if code == 21211 and to:  # as Twilio does: the refused number is in the message (PHI a client must drop)
                return json_response(status, {"code": code, "message": f"The 'To' number {to} is not a valid "
                                              "phone number.", "more_info": "https://www.twilio.com/docs/errors/21211",
                                              "status": status})
            return twilio_error(code, status)
        if status >= 500:
            return sendgrid_error(status, "internal error" if status == 500 else "service unavailable")
        return sendgrid_error(status, "Does not contain a valid address.", "personalizations.0.to.0.email")

    def accept(self, request: Request) -> Response:
        f = request.fields
        if request.channel == "sms":
            provider_id, subject, text = "SM" + secrets.token_hex(16), None, f["Body"]
            sender = f.get("From") or f.get("MessagingServiceSid")
            response = json_response(201, {
                "sid": provider_id, "status": "queued", "to": f["To"], "from": f.get("From"), "body": text,
                "account_sid": self.sid, "messaging_service_sid": f.get("MessagingServiceSid"),
                "num_segments": "1", "direction": "outbound-api", "error_code": None, "error_message": None})
        else:
            provider_id, sender, text = secrets.token_urlsafe(16)[:22], f["from"]["email"], f["content"][0]["value"]
            subject = f.get("subject") or f["personalizations"][0].get("subject")
            response = Response(202, headers={"X-Message-Id": provider_id})
        self.messages.append({
            "channel": request.channel, "to": request.to, "from": sender, "body": text, "subject": subject,
            "idempotency_key": request.key, "provider_id": provider_id, "received_at": time.time()})
        if request.key is not None:
            self.replies[(request.channel, request.key)] = response
        return self.counted(response)

    def admin(self, method: str, path: str, query: str, body: bytes) -> Response:
        route = f"{method} {path.removeprefix('/_admin/')}"
        if route == "GET health":
            return json_response(200, {"status": "ok"})
        if route == "GET stats":
            return json_response(200, {"stats": self.stats})
        if route == "GET messages":
            channel = parse_qs(query).get("channel", [None])[0]
            chosen = [m for m in self.messages if channel in (None, m["channel"])]
            return json_response(200, {"messages": chosen, "stats": self.stats})
        if route == "POST reset":
            self.reset()
            return json_response(200, {"status": "reset"})
        if route == "GET faults":
            return json_response(200, {"rules": [asdict(rule) for rule in self.rules]})
        if route != "POST faults":
            return json_response(404, {"message": "Not Found"})
        try:
            given = json.loads(body)
            given = given if isinstance(given, list) else [given]
            known = {f.name for f in fields(FaultRule)}
            if unknown := {key for rule in given for key in rule} - known:
                raise ValueError(f"unknown rule keys: {sorted(unknown)}")
            self.rules += [FaultRule(**rule) for rule in given]
        except (ValueError, TypeError) as error:
            return json_response(400, {"message": str(error)})
        return json_response(200, {"rules": len(self.rules)})


def basic_credentials(header: str) -> tuple[str, str]:
    scheme, _, encoded = header.partition(" ")
    try:
        user, _, password = base64.b64decode(encoded).decode().partition(":")
    except ValueError:
        return "", ""
    return (user, password) if scheme.lower() == "basic" else ("", "")


async def serve_connection(state: ProviderState, verbose: bool,
                           reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answer requests on one keep-alive connection until the client closes it."""
    try:
        while True:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
            method, target, version = head[0].split(" ", 2)
            headers = {name.strip().lower(): value.strip() for name, _, value in
                       (line.partition(":") for line in head[1:] if line)}
            if "chunked" in headers.get("transfer-encoding", ""):
                writer.write(json_response(411, {"message": "send a Content-Length"}).encode(close=True))
                break
            if headers.get("expect", "").lower() == "100-continue":
                writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            body = await reader.readexactly(int(headers.get("content-length") or 0))
            path, _, query = target.partition("?")
            if path.startswith("/_admin/"):
                response: Response | None = state.admin(method, path, query, body)
            else:
                response = await state.provider(method, path, headers, body)
            if verbose:  # the request line only: bodies and recipients are PHI
                print(f"{method} {path} {response.status if response else 'dropped'}", file=sys.stderr)
            if response is None:
                break
            close = headers.get("connection", "").lower() == "close" or version == "HTTP/1.0"
            writer.write(response.encode(close))
            await writer.drain()
            if close:
                break
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, ValueError):
        pass  # the client hung up or sent something that is not HTTP/1.1: close
    finally:
        writer.close()


async def serve(host: str, port: int, state: ProviderState, verbose: bool = False,
                exit_with_parent: bool = False) -> None:
    """Serve until SIGTERM or SIGINT (or, with ``exit_with_parent``, until the parent process dies)."""
    server = await asyncio.start_server(lambda r, w: serve_connection(state, verbose, r, w), host, port, backlog=1024)
    stop = asyncio.Event()
    for signum in (signals.SIGTERM, signals.SIGINT):
        asyncio.get_running_loop().add_signal_handler(signum, stop.set)
    parent = os.getppid()
    async with server:
        # A test run that was SIGKILLed cannot stop its server: notice being orphaned instead.
        while not stop.is_set() and not (exit_with_parent and os.getppid() != parent):
            try:
                await asyncio.wait_for(stop.wait(), 1.0)
            except TimeoutError:
                pass


@dataclass
class ProviderServer:
    """A provider server process on 127.0.0.1, with thin calls to its admin API."""

    port: int
    sid: str = "ACtest"
    token: str = "test-token"
    api_key: str = "SG.test"
    process: subprocess.Popen[bytes] | None = None
    client: httpx.Client | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "devstack.providers", "--port", str(self.port), "--sid", self.sid,
             "--token", self.token, "--api-key", self.api_key, "--exit-with-parent"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        self.client = httpx.Client(base_url=self.url, timeout=10)
        deadline = time.monotonic() + 15
        while True:
            try:
                self.client.get("/_admin/health").raise_for_status()
                return
            except httpx.TransportError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"the provider server on port {self.port} did not start") from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self.client is not None:
            self.client.close()
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def admin(self, method: str, path: str, **kwargs: Any) -> Any:
        assert self.client is not None, "start() the server first"
        response = self.client.request(method, f"/_admin/{path}", **kwargs)
        response.raise_for_status()
        return response.json()

    def messages(self, channel: str | None = None) -> list[dict[str, Any]]:
        return list(self.admin("GET", "messages", params={"channel": channel} if channel else None)["messages"])

    def stats(self) -> dict[str, int]:
        return dict(self.admin("GET", "stats")["stats"])

    def faults(self, rules: list[dict[str, Any]]) -> None:
        self.admin("POST", "faults", json=rules)

    def reset(self) -> None:
        self.admin("POST", "reset")

    def __enter__(self) -> ProviderServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def start_providers(port: int | None = None, sid: str = "ACtest", token: str = "test-token",
                    api_key: str = "SG.test") -> ProviderServer:
    """Start the provider server as its own process; ``stop()`` it, or use it as a context manager."""
    server = ProviderServer(port=port or free_port(), sid=sid, token=token, api_key=api_key)
    server.start()
    return server


def main() -> None:
    parser = argparse.ArgumentParser(description="Local Twilio and SendGrid APIs with scripted faults.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8089)
    parser.add_argument("--sid", default="ACtest", help="expected Twilio AccountSid")
    parser.add_argument("--token", default="test-token", help="expected Twilio auth token")
    parser.add_argument("--api-key", default="SG.test", help="expected SendGrid API key")
    parser.add_argument("--verbose", action="store_true", help="log request lines (never bodies) to stderr")
    parser.add_argument("--exit-with-parent", action="store_true", help="exit when the parent process dies")
    args = parser.parse_args()
    state = ProviderState(args.sid, args.token, args.api_key)
    asyncio.run(serve(args.host, args.port, state, args.verbose, args.exit_with_parent))


if __name__ == "__main__":
    main()
