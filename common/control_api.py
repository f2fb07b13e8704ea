"""The status and control HTTP API of one task process (Kafka Connect's REST names).

Reads, open to whoever can reach the port: ``GET /`` (version), ``/health`` (200 healthy,
503 starting or stopped, 500 failed), ``/ready`` (200 only when the task is RUNNING, no
retry is in progress and its Kafka client is connected), ``/connectors``,
``/connectors/<name>/status`` and ``/metrics`` (Prometheus).

Mutations change what the task does, so they are locked down: ``PUT
/connectors/<name>/pause|resume|stop`` and ``POST /connectors/<name>/restart`` need
``Authorization: Bearer <ADMIN_TOKEN>`` (compared in constant time); without
``ADMIN_TOKEN`` every mutation is refused (403). A request carrying an ``Origin`` header
comes from a browser page and is refused, no CORS header is ever sent and no mutation
answers GET, so a web page the operator visits cannot drive the API. The server listens
on ``STATUS_BIND`` (default ``127.0.0.1``: nothing off the host reaches it).
"""

from __future__ import annotations

import hmac
import json
import logging
import socket
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from common.status import VERSION, Control, StatusReporter

log = logging.getLogger(__name__)

_NO_TOKEN = ("mutations are disabled: set ADMIN_TOKEN (or ADMIN_TOKEN_FILE) and send it as "
             "'Authorization: Bearer <token>'")


class _Server(ThreadingHTTPServer):
    daemon_threads = True


class _Server6(_Server):
    address_family = socket.AF_INET6


def serve_http(port: int, reporter: StatusReporter, control: Control, bind: str = "127.0.0.1",
               admin_token: str | None = None) -> ThreadingHTTPServer:
    """Start the status/control HTTP server in a daemon thread."""
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    base = f"/connectors/{reporter.connector}"
    mutations: dict[str, tuple[str, Callable[[], None]]] = {
        f"{base}/pause": ("PUT", control.paused.set), f"{base}/resume": ("PUT", control.resume),
        f"{base}/stop": ("PUT", control.halt), f"{base}/restart": ("POST", control.restart)}
    expected = admin_token.encode() if admin_token else None

    class Handler(BaseHTTPRequestHandler):
        server_version = "labconnect"
        sys_version = ""

        def _send(self, code: int, body: bytes, content_type: str = "application/json",
                  headers: dict[str, str] | None = None) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        def _json(self, code: int, value: Any, headers: dict[str, str] | None = None) -> None:
            self._send(code, json.dumps(value).encode(), headers=headers)

        def _error(self, code: int, message: str, headers: dict[str, str] | None = None) -> None:
            self._json(code, {"error_code": code, "message": message}, headers)

        def _path(self) -> str:
            return self.path.split("?", 1)[0].rstrip("/") or "/"

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            path = self._path()
            if path == "/":
                self._json(200, {"version": VERSION, "connector": reporter.connector})
            elif path == "/health":
                self._json(*reporter.health())
            elif path == "/ready":
                problems = reporter.readiness()
                self._json(503 if problems else 200, {"ready": not problems, "state": reporter.state.value,
                                                      **({"reasons": problems} if problems else {})})
            elif path == "/connectors":
                self._json(200, [reporter.connector])
            elif path == f"{base}/status":
                self._json(200, reporter.connector_view())
            elif path == "/metrics":
                self._send(200, generate_latest(), CONTENT_TYPE_LATEST)
            elif path in mutations:
                self._refuse_method(path)
            else:
                self._error(404, "not found")

        def do_PUT(self) -> None:  # noqa: N802
            self._mutate("PUT")

        def do_POST(self) -> None:  # noqa: N802
            self._mutate("POST")

        def do_OPTIONS(self) -> None:  # noqa: N802 (a CORS preflight: answered without any CORS header)
            self._error(405, "method not allowed")

        def do_DELETE(self) -> None:  # noqa: N802
            self._error(405, "method not allowed")

        do_PATCH = do_DELETE

        def _refuse_method(self, path: str) -> None:
            method = mutations[path][0] if path in mutations else "GET"
            self._error(405, f"use {method}", {"Allow": method})

        def _mutate(self, method: str) -> None:
            path = self._path()
            if path not in mutations:
                self._error(404, "not found")
                return
            if mutations[path][0] != method:
                self._refuse_method(path)
                return
            action = path.rsplit("/", 1)[1]
            refusal = self._refusal()
            if refusal is not None:
                code, message = refusal
                log.warning("refused %s %s from %s: %s", method, action, self.client_address[0], message)
                self._error(code, message, {"WWW-Authenticate": 'Bearer realm="labconnect"'} if code == 401 else None)
                return
            log.info("operator request: %s (from %s)", action, self.client_address[0])
            mutations[path][1]()
            self._send(202, b"")

        def _refusal(self) -> tuple[int, str] | None:
            if self.headers.get("Origin") is not None:
                return 403, "requests from a web page (with an Origin header) are refused"
            if expected is None:
                return 403, _NO_TOKEN
            scheme, _, presented = (self.headers.get("Authorization") or "").strip().partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(presented.strip().encode(), expected):
                return 401, "a valid 'Authorization: Bearer <ADMIN_TOKEN>' header is required"
            return None

        def log_message(self, *args: Any) -> None:  # requests are not worth a log line each
            pass

    server_class = _Server6 if ":" in bind else _Server
    server = server_class((bind, port), Handler)
    threading.Thread(target=server.serve_forever, name="status-http", daemon=True).start()
    log.info("status API on %s port %d; mutations %s", bind, server.server_address[1],
             "need the admin token" if admin_token else "refused (no ADMIN_TOKEN)")
    return server
