"""A tiny in-process Confluent Schema Registry: real HTTP on 127.0.0.1, the endpoints tidegate uses.

``POST /subjects/{subject}/versions`` registers a schema (the same schema text gets the same id, as
in the real registry) and ``GET /schemas/ids/{id}`` returns it. Setting ``fail_with`` makes every
request answer with that HTTP status, to exercise error handling.

Example::

    with StubRegistry() as registry:
        codec = Codec(registry_url=registry.url)
"""

from __future__ import annotations

import json
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["StubRegistry"]


class StubRegistry:
    """The registry's state, the requests it saw, and the server thread serving it."""

    def __init__(self) -> None:
        self.schemas: dict[int, dict[str, Any]] = {}  # id -> {"schema": text, "schemaType"?: ...}
        self.subjects: dict[str, list[int]] = {}
        self.requests: list[tuple[str, str]] = []  # (method, path)
        self.authorizations: list[str | None] = []
        self.fail_with: int | None = None
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> StubRegistry:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def add(self, schema_text: str, schema_type: str | None = None) -> int:
        """Store a schema as another producer would have; returns its id."""
        for schema_id, entry in self.schemas.items():
            if entry["schema"] == schema_text and entry.get("schemaType") == schema_type:
                return schema_id
        schema_id = len(self.schemas) + 1
        self.schemas[schema_id] = {"schema": schema_text}
        if schema_type is not None:
            self.schemas[schema_id]["schemaType"] = schema_type
        return schema_id

    def answer(self, method: str, path: str, body: bytes) -> tuple[int, dict[str, Any]]:
        """The status and JSON reply for one request."""
        self.requests.append((method, path))
        if self.fail_with is not None:
            return self.fail_with, {"error_code": self.fail_with, "message": "stub failure"}
        parts = path.strip("/").split("/")
        if method == "POST" and len(parts) == 3 and parts[::2] == ["subjects", "versions"]:
            schema_id = self.add(json.loads(body)["schema"])
            subject = urllib.parse.unquote(parts[1])
            self.subjects.setdefault(subject, [])
            if schema_id not in self.subjects[subject]:
                self.subjects[subject].append(schema_id)
            return 200, {"id": schema_id}
        if method == "GET" and len(parts) == 3 and parts[:2] == ["schemas", "ids"]:
            entry = self.schemas.get(int(parts[2]))
            if entry is None:
                return 404, {"error_code": 40403, "message": "Schema not found"}
            return 200, entry
        return 404, {"error_code": 404, "message": "Not found"}


def _handler_for(stub: StubRegistry) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self._respond("GET")

        def do_POST(self) -> None:
            self._respond("POST")

        def _respond(self, method: str) -> None:
            stub.authorizations.append(self.headers.get("Authorization"))
            length = int(self.headers.get("Content-Length") or 0)
            status, reply = stub.answer(method, self.path, self.rfile.read(length))
            data = json.dumps(reply).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/vnd.schemaregistry.v1+json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            """Keep test output quiet."""

    return Handler
