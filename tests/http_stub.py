"""The base of the tests' stand-in HTTP servers, shared by the tests."""

from __future__ import annotations

import json
from http.server import BaseHTTPRequestHandler
from typing import Any


class JsonHandler(BaseHTTPRequestHandler):
    """A stub server's request handler: logs nothing, and answers with `send_json`."""

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def send_body(self, code: int, data: bytes, content_type: str = "application/json") -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def send_json(self, code: int, body: Any = None) -> None:
        """Answer `code` with `body` as JSON, or with no body where it is None (a 204)."""
        self.send_body(code, b"" if body is None else json.dumps(body).encode())
