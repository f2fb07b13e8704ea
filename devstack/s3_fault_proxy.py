"""A tiny HTTP proxy in front of moto that answers 503 SlowDown: to the first N requests,
or to every request during an outage (``fail_for(seconds)``).

moto's server has no fault injection; this stands in for S3 having a bad minute.
"""

from __future__ import annotations

import http.client
import threading
import time
from http.server import BaseHTTPRequestHandler
from urllib.parse import urlsplit

from devstack.quiet_http import QuietThreadingHTTPServer

_SLOW_DOWN = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
              b"<Message>Please reduce your request rate.</Message></Error>")


class FaultProxy:
    def __init__(self, upstream: str, fail_first: int = 0) -> None:
        self.upstream = urlsplit(upstream)
        self.remaining = fail_first
        self.outage_until = 0.0  # time.monotonic() before which every request fails
        self.failed = 0
        self.forwarded = 0
        self._lock = threading.Lock()
        self.server = QuietThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> FaultProxy:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> str:
        """Serve in a background thread; returns the endpoint URL."""
        self.thread.start()
        return self.endpoint_url

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def fail_for(self, seconds: float) -> None:
        """Answer 503 SlowDown to every request for the next ``seconds``."""
        with self._lock:
            self.outage_until = time.monotonic() + seconds

    def _should_fail(self) -> bool:
        with self._lock:
            if time.monotonic() < self.outage_until:
                self.failed += 1
                return True
            if self.remaining > 0:
                self.remaining -= 1
                self.failed += 1
                return True
            self.forwarded += 1
            return False

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _relay(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                if proxy._should_fail():
                    self.send_response(503)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(_SLOW_DOWN)))
                    self.end_headers()
                    self.wfile.write(_SLOW_DOWN)
                    return
                upstream = http.client.HTTPConnection(proxy.upstream.hostname, proxy.upstream.port, timeout=30)
                try:
                    upstream.request(self.command, self.path, body=body, headers=dict(self.headers.items()))
                    response = upstream.getresponse()
                    data = response.read()
                finally:
                    upstream.close()
                self.send_response(response.status)
                for name, value in response.getheaders():
                    if name.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _relay

        return Handler
