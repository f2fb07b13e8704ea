"""A Confluent-compatible schema registry in memory, for tests of the registry client's TLS
and basic authentication: the part of the REST API the project's serde uses (register a
schema under a subject, fetch a schema by id, a subject's latest version), served over HTTPS
with a certificate from :mod:`devstack.tls` and refusing requests without the user's password.
"""

from __future__ import annotations

import base64
import hmac
import json
import ssl
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlparse

from devstack.tls import Certificate

_CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"


@dataclass
class RegistryState:
    username: str
    password: str
    schemas: list[str] = field(default_factory=list)  # id - 1 -> schema string
    subjects: dict[str, list[int]] = field(default_factory=dict)  # subject -> ids by version
    requests: int = 0
    refused: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def register(self, subject: str, schema: str) -> dict[str, Any]:
        with self.lock:
            if schema not in self.schemas:
                self.schemas.append(schema)
            schema_id = self.schemas.index(schema) + 1
            versions = self.subjects.setdefault(subject, [])
            if schema_id not in versions:
                versions.append(schema_id)
            return {"id": schema_id, "subject": subject, "version": versions.index(schema_id) + 1}


class _Handler(BaseHTTPRequestHandler):
    server: _RegistryServer

    def log_message(self, *_: Any) -> None:  # quiet: tests read the state, not a log
        pass

    def _authorised(self) -> bool:
        state = self.server.state
        expected = base64.b64encode(f"{state.username}:{state.password}".encode()).decode()
        given = self.headers.get("Authorization", "")
        return hmac.compare_digest(given.encode(), f"Basic {expected}".encode())

    def _answer(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", _CONTENT_TYPE)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _route(self, method: str) -> None:
        state = self.server.state
        state.requests += 1
        if not self._authorised():
            state.refused += 1
            self._answer(401, {"error_code": 401, "message": "Unauthorized"})
            return
        parts = [unquote(p) for p in urlparse(self.path).path.strip("/").split("/")]
        if method == "POST" and len(parts) == 3 and parts[0] == "subjects" and parts[2] == "versions":
            length = int(self.headers.get("Content-Length", "0"))
            schema = json.loads(self.rfile.read(length))["schema"]
            self._answer(200, state.register(parts[1], schema))
        elif method == "GET" and len(parts) == 3 and parts[:2] == ["schemas", "ids"] and parts[2].isdigit():
            index = int(parts[2]) - 1
            if 0 <= index < len(state.schemas):
                self._answer(200, {"schema": state.schemas[index]})
            else:
                self._answer(404, {"error_code": 40403, "message": "Schema not found"})
        elif method == "GET" and len(parts) == 4 and parts[0] == "subjects" and parts[2:] == ["versions", "latest"]:
            versions = state.subjects.get(parts[1])
            if not versions:
                self._answer(404, {"error_code": 40401, "message": "Subject not found"})
            else:
                schema_id = versions[-1]
                self._answer(200, {"id": schema_id, "subject": parts[1], "version": len(versions),
                                   "schema": state.schemas[schema_id - 1]})
        else:
            self._answer(404, {"error_code": 404, "message": "not served by the test registry"})

    def do_GET(self) -> None:  # noqa: N802 (http.server's names)
        self._route("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._route("POST")


class _RegistryServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, state: RegistryState, certificate: Certificate) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.state = state
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(certificate.cert), str(certificate.key))
        self.socket = context.wrap_socket(self.socket, server_side=True)


class SchemaRegistry:
    """An HTTPS schema registry on 127.0.0.1 with one basic-auth user; ``url`` once started."""

    def __init__(self, certificate: Certificate, username: str, password: str) -> None:
        self.state = RegistryState(username, password)
        self._server = _RegistryServer(self.state, certificate)
        self._thread = threading.Thread(target=self._server.serve_forever, name="schema-registry", daemon=True)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> SchemaRegistry:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
