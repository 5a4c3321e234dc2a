"""The sans-I/O half of the engine HTTP client: request encoding, heads, body framing, SSE."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vllm_control_plane.backends.http1 import ConnectionPool, Response, _Connection
from vllm_control_plane.backends.http1_wire import (
    BodyDecoder,
    ProtocolError,
    SSESplitter,
    encode_request,
    parse_head,
)


def test_encode_post_adds_host_and_length() -> None:
    wire = encode_request("POST", b"/v1/completions", b"h:1", b"{}", {"X-Request-Id": "r1"})
    assert wire == (
        b"POST /v1/completions HTTP/1.1\r\nHost: h:1\r\nContent-Length: 2\r\n"
        b"X-Request-Id: r1\r\n\r\n{}"
    )


def test_encode_get_has_no_length_and_accepts_raw_header_lines() -> None:
    wire = encode_request("GET", b"/health", b"h", b"", b"Accept: */*\r\n")
    assert wire == b"GET /health HTTP/1.1\r\nHost: h\r\nAccept: */*\r\n\r\n"


@pytest.mark.parametrize("bad", ["a\r\nX-Evil: 1", "a\nb", "a\rb"])
def test_encode_refuses_header_injection(bad: str) -> None:
    with pytest.raises(ValueError):
        encode_request("POST", b"/", b"h", b"", {"X-Request-Id": bad})


def test_head_framing_fields() -> None:
    head = parse_head(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 12")
    assert (head.status, head.reason, head.length, head.chunked, head.keep_alive) == (
        200, "OK", 12, False, True
    )  # fmt: skip
    assert head.headers() == {"content-type": "text/plain", "content-length": "12"}
    chunked = parse_head(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nconnection: close")
    assert chunked.chunked and chunked.length is None and not chunked.keep_alive


def test_head_http10_and_until_close() -> None:
    assert not parse_head(b"HTTP/1.0 200 OK\r\nContent-Length: 1").keep_alive
    assert parse_head(b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 1").keep_alive
    until_close = parse_head(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain")
    assert until_close.length is None and not until_close.keep_alive  # body runs until close


@pytest.mark.parametrize("status", [204, 304, 100])
def test_head_statuses_without_body(status: int) -> None:
    head = parse_head(b"HTTP/1.1 %d X\r\nContent-Length: 10" % status)
    assert head.length == 0 and BodyDecoder(head).done


def test_head_of_a_head_request_has_no_body() -> None:
    assert parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: 10", no_body=True).length == 0


def test_repeated_headers_are_joined() -> None:
    head = parse_head(b"HTTP/1.1 200 OK\r\nVary: a\r\nvary: b\r\nContent-Length: 0")
    assert head.headers()["vary"] == "a, b"


@pytest.mark.parametrize(
    "block",
    [
        b"HTTP/1.1 2000 OK",
        b"HTTP/2 200 OK",
        b"HTTP/1.1 abc OK",
        b"SSH-2.0-OpenSSH_9.6",
        b"HTTP/1.1  200 OK",
        b"HTTP/1.1 200 OK\r\nContent-Length: -4",
        b"HTTP/1.1 200 OK\r\nContent-Length: 4x",
    ],
)
def test_malformed_heads(block: bytes) -> None:
    with pytest.raises(ProtocolError):
        parse_head(block)


def test_content_length_body_and_extra_bytes() -> None:
    body = BodyDecoder(parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: 5"))
    assert body.feed(b"ab") == b"ab" and not body.done
    assert body.feed(b"cdeXY") == b"cde" and body.done and body.extra == b"XY"


def test_chunked_with_extension_and_trailer() -> None:
    body = BodyDecoder(parse_head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked"))
    out = body.feed(b"3;name=v\r\nabc\r\n2\r\nde\r\n0\r\nX-Trailer: 1\r\n\r\n")
    assert out == b"abcde" and body.done and body.extra == b""


@pytest.mark.parametrize("wire", [b"zz\r\nab\r\n", b"2\r\nabXX", b"-2\r\nab\r\n"])
def test_chunked_malformed(wire: bytes) -> None:
    body = BodyDecoder(parse_head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked"))
    with pytest.raises(ProtocolError):
        body.feed(wire)


def test_chunked_eof_before_last_chunk_is_not_a_normal_end() -> None:
    body = BodyDecoder(parse_head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked"))
    body.feed(b"2\r\nab\r\n")
    assert not body.eof()


def test_sse_splitter_normalises_crlf_and_blank_runs() -> None:
    split = SSESplitter()
    assert split.feed(b"data: 1\r\n\r\n\n\ndata: 2\r") == [b"data: 1"]
    assert split.feed(b"\n\r\n: comment\n\nevent: x\ndata: 3\n\n") == [
        b"data: 2",
        b": comment",
        b"event: x\ndata: 3",
    ]
    assert split.feed(b"data: incomplete") == [] and split.pending == b"data: incomplete"


# ------------------------------------------------------------------------------------ property

_frame_text = st.text(
    alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="\r\n"), max_size=40
)


def _chunked_wire(frames: list[bytes], sizes: list[int]) -> bytes:
    """``frames`` as an SSE body, chunk-encoded with chunk sizes drawn from ``sizes``."""
    body = b"".join(f + b"\n\n" for f in frames)
    out, pos, i = [], 0, 0
    while pos < len(body):
        n = sizes[i % len(sizes)]
        out.append(b"%x\r\n%s\r\n" % (len(body[pos : pos + n]), body[pos : pos + n]))
        pos, i = pos + n, i + 1
    return b"".join(out) + b"0\r\n\r\n"


def _cut(wire: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(wire) + 1) for c in cuts})
    return [wire[a:b] for a, b in zip([0, *points], [*points, len(wire)], strict=True)]


@given(
    texts=st.lists(_frame_text, min_size=1, max_size=12),
    sizes=st.lists(st.integers(1, 64), min_size=1, max_size=6),
    cuts=st.lists(st.integers(0, 10_000), max_size=30),
)
def test_any_split_of_a_chunked_sse_body_yields_the_same_frames(
    texts: list[str], sizes: list[int], cuts: list[int]
) -> None:
    frames = [b"data: " + t.encode() for t in texts]
    body = BodyDecoder(parse_head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked"))
    split = SSESplitter()
    got: list[bytes] = []
    for piece in _cut(_chunked_wire(frames, sizes), cuts):
        got += split.feed(body.feed(piece))
    assert got == frames
    assert body.done and body.extra == b"" and split.pending == b""


# ------------------------------------------------------------------------------------ protocol


class _FakeTransport:
    """Enough of a transport for the connection to write to and close."""

    def __init__(self) -> None:
        self.written = b""
        self.aborted = False

    def write(self, data: bytes) -> None:
        self.written += data

    def abort(self) -> None:
        self.aborted = True

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...


async def _through_connection(pieces: list[bytes]) -> tuple[list[bytes], ConnectionPool]:
    pool = ConnectionPool()
    conn = _Connection(pool, ("http", "h", 1))
    conn.connection_made(_FakeTransport())  # type: ignore[arg-type]
    resp = Response(pool.loop, None, None)
    conn.send(resp, b"GET / HTTP/1.1\r\n\r\n", no_body=False)
    for piece in pieces:
        conn.data_received(piece)
    assert resp.status == 200
    return [f async for f in resp.sse_frames()], pool


@given(
    texts=st.lists(_frame_text, min_size=1, max_size=8),
    sizes=st.lists(st.integers(1, 64), min_size=1, max_size=4),
    cuts=st.lists(st.integers(0, 10_000), max_size=20),
)
@settings(max_examples=60, deadline=None)
def test_any_split_through_the_connection_protocol(
    texts: list[str], sizes: list[int], cuts: list[int]
) -> None:
    """The same property one level up: head and body cut anywhere, fed to the protocol."""
    frames = [b"data: " + t.encode() for t in texts]
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    got, pool = asyncio.run(_through_connection(_cut(head + _chunked_wire(frames, sizes), cuts)))
    assert got == frames
    assert pool.num_idle == 1  # the fully read connection went back to the pool
