"""Sans-I/O pieces of the engine HTTP/1.1 client: errors, request encoding, response parsing.

Nothing here touches a socket or a clock, so every piece is tested by feeding bytes. The parsing
is deliberately narrow — responses from engine servers (uvicorn, aiohttp), not the whole web:

* :func:`parse_head` reads a status line and header block (CRLF line endings) and extracts only
  what framing needs (Content-Length, Transfer-Encoding, Connection) with bulk ``find`` calls on a
  lower-cased copy; the full header dict is built only if someone asks for it.
* :class:`BodyDecoder` turns raw bytes into payload for the three framings (Content-Length,
  chunked, until-close); it loops once per chunk, never per byte.
* :class:`SSESplitter` cuts the payload into events on blank lines with one ``bytes.split`` per
  read, carrying the unfinished tail to the next read.
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = [
    "BodyDecoder",
    "ConnectError",
    "ConnectTimeout",
    "ConnectionLost",
    "HTTPClientError",
    "Head",
    "ProtocolError",
    "ResponseTimeout",
    "SSESplitter",
    "encode_request",
    "parse_head",
]

MAX_HEAD = 64 * 1024  # a larger response head is treated as malformed


class HTTPClientError(Exception):
    """Base of every error the engine client raises."""


class ConnectError(HTTPClientError):
    """No connection could be made (refused, unresolvable, pool closed): nothing was sent, so the
    request is always safe to retry elsewhere."""


class ConnectTimeout(ConnectError):
    """The TCP connect did not finish within the pool's connect timeout."""


class ConnectionLost(HTTPClientError):
    """The server closed or reset the connection before the response was complete."""


class ProtocolError(HTTPClientError):
    """The server sent something that is not a valid HTTP/1.x response."""


class ResponseTimeout(HTTPClientError):
    """The watchdog fired; ``phase`` is ``"first"`` (nothing of the body yet) or ``"idle"``."""

    def __init__(self, phase: str, seconds: float) -> None:
        what = "first byte" if phase == "first" else "idle"
        super().__init__(f"{what} timeout ({seconds:g} s)")
        self.phase = phase
        self.seconds = seconds


# ------------------------------------------------------------------------------------ requests


def encode_request(
    method: str, path: bytes, host: bytes, body: bytes, headers: Mapping[str, str] | bytes | None
) -> bytes:
    """The request as one bytes object. ``headers`` may be pre-encoded ``Name: value\\r\\n`` lines;
    a mapping is checked for CR/LF so a header value can never inject a second request."""
    if headers is None:
        extra = b""
    elif isinstance(headers, bytes):
        extra = headers
    else:
        text = "".join([f"{k}: {v}\r\n" for k, v in headers.items()])
        n = len(headers)
        if text.count("\n") != n or text.count("\r") != n:
            raise ValueError("header names and values must not contain CR or LF")
        extra = text.encode("latin-1")
    if body or method not in ("GET", "HEAD"):
        return b"%s %s HTTP/1.1\r\nHost: %s\r\nContent-Length: %d\r\n%s\r\n%s" % (
            method.encode("ascii"), path, host, len(body), extra, body
        )  # fmt: skip
    return b"%s %s HTTP/1.1\r\nHost: %s\r\n%s\r\n" % (method.encode("ascii"), path, host, extra)


# ------------------------------------------------------------------------------------ response head


class Head:
    """A parsed response head. ``length`` is None when the body is chunked or runs until close."""

    __slots__ = ("chunked", "keep_alive", "length", "raw", "reason", "status")

    def __init__(
        self, status: int, reason: str, raw: bytes, length: int | None, chunked: bool, keep: bool
    ) -> None:
        self.status = status
        self.reason = reason
        self.raw = raw  # status line and headers, without the blank line that ends them
        self.length = length
        self.chunked = chunked
        self.keep_alive = keep

    def headers(self) -> dict[str, str]:
        """All headers, names lower-cased; repeated names are joined with ", "."""
        out: dict[str, str] = {}
        for line in self.raw.split(b"\r\n")[1:]:
            name, sep, value = line.partition(b":")
            if not sep:
                continue
            key = name.strip().lower().decode("latin-1")
            val = value.strip().decode("latin-1")
            out[key] = f"{out[key]}, {val}" if key in out else val
        return out


def _header(lower: bytes, name: bytes) -> bytes | None:
    """The value of header ``name`` (given as ``b"\\r\\nname:"``) in a lower-cased head block."""
    i = lower.find(name)
    if i < 0:
        return None
    start = i + len(name)
    end = lower.find(b"\r\n", start)
    return lower[start : end if end >= 0 else None].strip()


def parse_head(block: bytes, no_body: bool = False) -> Head:
    """Parse ``block`` (status line + headers, without the final CRLFCRLF).

    ``no_body`` is True for answers to HEAD requests; 1xx, 204 and 304 never have a body either.
    """
    eol = block.find(b"\r\n")
    line = block if eol < 0 else block[:eol]
    if not line.startswith(b"HTTP/1.") or len(line) < 12 or line[12:13] not in (b" ", b""):
        raise ProtocolError(f"malformed status line {line[:80]!r}")
    code = line[9:12]
    if not code.isdigit() or line[8:9] != b" ":
        raise ProtocolError(f"malformed status line {line[:80]!r}")
    status = int(code)
    lower = block.lower()
    conn = _header(lower, b"\r\nconnection:")
    if line[7:8] == b"1":
        keep = conn is None or b"close" not in conn
    else:  # HTTP/1.0 keeps the connection only when asked to
        keep = conn is not None and b"keep-alive" in conn
    chunked = False
    length: int | None = None
    if no_body or status < 200 or status in (204, 304):
        length = 0
    else:
        te = _header(lower, b"\r\ntransfer-encoding:")
        if te is not None and te.endswith(b"chunked"):
            chunked = True
        else:
            length = _content_length(lower)
            if length is None:
                keep = False  # the body runs until the server closes
    return Head(status, line[13:].decode("latin-1"), block, length, chunked, keep)


def _content_length(lower: bytes) -> int | None:
    value = _header(lower, b"\r\ncontent-length:")
    if value is None:
        return None
    if not value.isdigit():
        raise ProtocolError(f"bad Content-Length {value[:40]!r}")
    return int(value)


# ------------------------------------------------------------------------------------ body framing

_SIZE, _DATA, _TRAILER, _DONE = 0, 1, 2, 3


class BodyDecoder:
    """Payload out of raw body bytes. After ``done`` turns True, ``extra`` holds any bytes the
    server sent past the end of the message (a protocol violation for a client that never
    pipelines; the caller discards the connection)."""

    __slots__ = (
        "_buf",
        "_crlf",
        "_left",
        "_state",
        "chunked",
        "done",
        "extra",
        "feed",
        "until_close",
    )

    def __init__(self, head: Head) -> None:
        self.chunked = head.chunked
        self.until_close = not head.chunked and head.length is None
        self._left = head.length or 0  # bytes left in the body (or in the current chunk)
        self._buf = b""  # an unfinished chunk-size line or trailer
        self._crlf = False  # a chunk's data ended; its CRLF is still due
        self._state = _SIZE
        self.extra = b""
        self.done = not self.chunked and head.length == 0
        # feed(data) -> the payload carried by ``data`` (possibly empty); bound once, not
        # dispatched on every read
        self.feed = (
            self._feed_chunked
            if self.chunked
            else self._feed_until_close
            if self.until_close
            else self._feed_length
        )

    @staticmethod
    def _feed_until_close(data: bytes) -> bytes:
        return data

    def _feed_length(self, data: bytes) -> bytes:
        left = self._left
        if len(data) < left:
            self._left = left - len(data)
            return data
        self._left = 0
        self.done = True
        if len(data) > left:
            self.extra = data[left:]
            return data[:left]
        return data

    def _feed_chunked(self, data: bytes) -> bytes:
        if self._buf:
            data = self._buf + data
            self._buf = b""
        elif self._state == _SIZE and not self._crlf:
            # the usual read of an SSE stream: exactly one whole chunk, ``size CRLF data CRLF``
            eol = data.find(b"\r\n", 0, 18)
            if eol > 0 and data.endswith(b"\r\n"):
                try:
                    size = int(data[:eol], 16)
                except ValueError:
                    size = 0  # an extension or garbage: the general path decides
                if size > 0 and len(data) == eol + size + 4:
                    return data[eol + 2 : -2]
        out: list[bytes] = []
        pos, end = 0, len(data)
        while pos < end:
            state = self._state
            if state == _SIZE:
                pos = self._size_line(data, pos)
                if pos < 0:
                    break
            elif state == _DATA:
                left = self._left
                if end - pos >= left + 2:  # the whole rest of the chunk and its CRLF: the usual
                    stop = pos + left
                    if data[stop : stop + 2] != b"\r\n":
                        raise ProtocolError("chunk data not followed by CRLF")
                    out.append(data[pos:stop])
                    pos = stop + 2
                    self._state = _SIZE
                else:
                    pos = self._partial(data, pos, out)
            else:
                pos = self._trailer(data, pos)
                if pos < 0:
                    break
        if not out:
            return b""
        return out[0] if len(out) == 1 else b"".join(out)

    def _partial(self, data: bytes, pos: int, out: list[bytes]) -> int:
        """The read ends inside a chunk's data or its CRLF: take what is there."""
        take = min(self._left, len(data) - pos)
        if take:
            out.append(data[pos : pos + take])
            self._left -= take
        if self._left == 0:
            self._state, self._crlf = _SIZE, True
        return pos + take

    def _size_line(self, data: bytes, pos: int) -> int:
        """Consume [the CRLF ending the previous chunk] + a chunk-size line; -1 if incomplete."""
        if self._crlf:
            if len(data) - pos < 2:
                self._buf = data[pos:]
                return -1
            if data[pos : pos + 2] != b"\r\n":
                raise ProtocolError("chunk data not followed by CRLF")
            pos += 2
            self._crlf = False
        eol = data.find(b"\r\n", pos)
        if eol < 0:
            if len(data) - pos > 1024:
                raise ProtocolError("chunk-size line too long")
            self._buf = data[pos:]
            return -1
        try:
            size = int(data[pos:eol], 16)
        except ValueError:
            size = _chunk_size_with_extension(data[pos:eol])
        if size < 0:
            raise ProtocolError(f"bad chunk size {data[pos:eol][:40]!r}")
        self._left = size
        self._state = _DATA if size else _TRAILER
        return eol + 2

    def _trailer(self, data: bytes, pos: int) -> int:
        """Consume the trailer section after the last chunk; -1 when incomplete."""
        if self._state == _DONE:
            self.extra = data[pos:]
            return -1
        if data.startswith(b"\r\n", pos):
            end = pos + 2
        else:
            found = data.find(b"\r\n\r\n", pos)
            if found < 0:
                if len(data) - pos > MAX_HEAD:
                    raise ProtocolError("trailer section too long")
                self._buf = data[pos:]
                return -1
            end = found + 4
        self._state, self.done = _DONE, True
        return end

    def eof(self) -> bool:
        """The connection closed: True when that ends the body normally."""
        return self.done or self.until_close


def _chunk_size_with_extension(line: bytes) -> int:
    """A chunk-size line with an extension (``1a;name=value``), which servers rarely send."""
    try:
        return int(line.split(b";", 1)[0], 16)
    except ValueError:
        raise ProtocolError(f"bad chunk size {line[:40]!r}") from None


# ------------------------------------------------------------------------------------ SSE


class SSESplitter:
    """Cuts an SSE payload into events: each event is its lines without the blank line that
    ends it (``b"data: {...}"`` for vLLM). CRLF line endings are normalised to LF; runs of blank
    lines yield nothing; an unfinished event at the end of the stream is dropped, as the SSE
    specification says."""

    __slots__ = ("_rest",)

    def __init__(self) -> None:
        self._rest = b""

    def feed(self, data: bytes) -> list[bytes]:
        if self._rest:
            data = self._rest + data
        if b"\r" in data:
            data = data.replace(b"\r\n", b"\n")
        if b"\n\n\n" in data:
            while b"\n\n\n" in data:
                data = data.replace(b"\n\n\n", b"\n\n")
        if data.startswith(b"\n"):
            data = data.lstrip(b"\n")
        events = data.split(b"\n\n")
        self._rest = events.pop()
        return events

    @property
    def pending(self) -> bytes:
        """The unfinished event carried over to the next read."""
        return self._rest
