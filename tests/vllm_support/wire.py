"""Record raw HTTP exchanges with a server, and reduce them to shapes that can be compared.

How it works: ``exchange`` sends one request with aiohttp and keeps the status line, the headers in
the order received and the body bytes exactly as sent (chunked transfer framing removed: chunk
boundaries depend on timing, not on the server's contract). ``WireExchange.to_bytes`` writes that
as an HTTP/1.1 message; ``parse_message`` reads it back. ``body_shape`` turns a JSON or SSE body
into its key order and value types, so a live server (or the simulator) can be compared with a
recorded sample without ids, timestamps or generated text getting in the way.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import aiohttp

CRLF = b"\r\n"


@dataclass(frozen=True)
class WireExchange:
    """One request and its response, with the response kept byte for byte."""

    name: str
    method: str
    path: str
    request_body: bytes
    status: int
    reason: str
    headers: tuple[tuple[str, str], ...]
    body: bytes

    def to_bytes(self) -> bytes:
        lines = [f"HTTP/1.1 {self.status} {self.reason}".encode()]
        lines += [f"{k}: {v}".encode() for k, v in self.headers]
        return CRLF.join(lines) + CRLF + CRLF + self.body

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)

    def describe(self) -> dict[str, Any]:
        """The request side, for the samples' index."""
        return {
            "method": self.method,
            "path": self.path,
            "request_body": self.request_body.decode(errors="replace"),
            "status": self.status,
        }


async def exchange(
    session: aiohttp.ClientSession,
    base_url: str,
    name: str,
    method: str,
    path: str,
    body: bytes | dict[str, Any] | None = None,
) -> WireExchange:
    """Send one request; ``body`` as bytes goes out verbatim (for malformed JSON)."""
    data = json.dumps(body).encode() if isinstance(body, dict) else (body or b"")
    headers = {"Content-Type": "application/json"} if data else {}
    async with session.request(method, base_url + path, data=data, headers=headers) as resp:
        raw = await resp.read()
        return WireExchange(
            name=name,
            method=method,
            path=path,
            request_body=data,
            status=resp.status,
            reason=resp.reason or "",
            headers=tuple((k.decode(), v.decode()) for k, v in resp.raw_headers),
            body=raw,
        )


def parse_message(data: bytes) -> tuple[int, dict[str, str], bytes]:
    """Status, headers (lower-cased names) and body of a message written by ``to_bytes``."""
    head, _, body = data.partition(CRLF + CRLF)
    status_line, *header_lines = head.decode().split("\r\n")
    headers = {}
    for line in header_lines:
        key, _, value = line.partition(": ")
        headers[key.lower()] = value
    return int(status_line.split()[1]), headers, body


def sse_frames(body: bytes) -> list[str]:
    """The ``data:`` payloads of an event stream, in order."""
    frames = []
    for block in body.decode().split("\n\n"):
        if block.startswith("data: "):
            frames.append(block[len("data: ") :])
    return frames


def json_shape(value: Any) -> Any:
    """Key order and value types of a JSON value; list items collapse when equal in shape."""
    if isinstance(value, dict):
        return [[k, json_shape(v)] for k, v in value.items()]
    if isinstance(value, list):
        return _collapse([json_shape(v) for v in value])
    if value is None:
        return "null"
    return type(value).__name__


def body_shape(content_type: str | None, body: bytes) -> Any:
    """Shape of a response body: JSON → ``json_shape``; SSE → the frames' shapes, repeats merged."""
    if not body:
        return "empty"
    if content_type and content_type.startswith("text/event-stream"):
        shapes = [f if f == "[DONE]" else json_shape(json.loads(f)) for f in sse_frames(body)]
        return ["sse", _collapse(shapes)]
    if content_type and content_type.startswith("application/json"):
        return json_shape(json.loads(body))
    return ["text", content_type]


def _collapse(items: list[Any]) -> list[Any]:
    """Drop consecutive duplicates: the number of token frames depends on timing, not contract."""
    out: list[Any] = []
    for item in items:
        if not out or out[-1] != item:
            out.append(item)
    return out
