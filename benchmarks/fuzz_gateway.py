#!/usr/bin/env python3
"""Fuzz the gateway's HTTP surface: no input may produce a 500, a malformed answer or a hang.

The gateway (``vcp serve``'s app) runs in a background thread on a loopback port, in front of
two simulated vLLM servers, with an admin token and no tenant keys (so client requests reach the
control plane). Two fuzzers then hit it:

1. **raw** — Hypothesis builds whole HTTP/1.1 requests byte by byte and sends them on a plain
   socket: any method and path (known routes, junk, very long, percent-encoded garbage), odd
   and duplicated headers (``X-Priority``, ``X-SLO-Deadline-Ms`` with ``nan``/``-1e308``/
   ``1e999``, huge ``X-Request-Id``, wrong ``Content-Length``, odd ``Content-Type``), bodies that
   are OpenAI requests with every field mutated (negative and enormous numbers, wrong types,
   deep nesting, unicode), arbitrary JSON, malformed JSON, invalid UTF-8, and bodies over the
   size limit. A request "hangs" when no complete answer arrives within ``--timeout`` seconds.
2. **schemathesis** — property-based tests generated from the gateway's ``/openapi.json``
   (positive and negative data), with the ``not_a_server_error`` check: client routes; every
   admin route without the token; the admin GET routes with it. (Admin mutations with a valid
   token are left out: they legitimately reshape the fleet, e.g. drain its only instance.)

Afterwards the gateway must still serve a normal request and its counters must satisfy the
accounting identity with nothing in flight.

    python benchmarks/fuzz_gateway.py                       # 3,000 raw cases + schemathesis
    python benchmarks/fuzz_gateway.py --examples 500 --no-schemathesis
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st

from vllm_control_plane.config import parse_config
from vllm_control_plane.gateway import Gateway, GatewayServer

ADMIN = "fuzz-admin-token"
MAX_BODY = 64 * 1024
ROUTES = [
    "/v1/chat/completions", "/v1/completions", "/v1/models", "/health", "/ready", "/metrics",
    "/openapi.json", "/dashboard", "/admin/status", "/admin/instances", "/admin/policy",
    "/admin/metrics", "/admin/requests/x", "/admin/config", "/admin/instances/sim-a/drain",
]  # fmt: skip
ALLOWED_5XX = {502, 503, 504}  # engine failure, no healthy instance / cancelled, deadline


class Server:
    """The gateway on its own event loop in a background thread."""

    def __init__(self) -> None:
        sims = [{"name": n, "model": "llama-3-8b", "time_scale": 0.01, "mean_output_tokens": 8.0,
                 "seed": i} for i, n in enumerate(("sim-a", "sim-b"))]  # fmt: skip
        config = {"admin": {"token": ADMIN}, "server": {"max_body_bytes": MAX_BODY},
                  "simulated": sims}  # fmt: skip
        self.gateway = Gateway(parse_config(config))
        self.server = GatewayServer(self.gateway, port=0)
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> Server:
        self._thread.start()
        self.call(self.server.start())
        return self

    def __exit__(self, *exc: object) -> None:
        self.call(self.server.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()

    def call(self, coro: Any, timeout: float = 60.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    @property
    def port(self) -> int:
        return self.server.port

    def counters(self) -> dict[str, int]:
        async def read() -> dict[str, int]:
            return self.gateway.cp.core.counters().as_dict()

        return self.call(read())


# ---------------------------------------------------------------- raw HTTP


def send_raw(port: int, request: bytes, timeout: float) -> tuple[int | None, bytes, bytes, str]:
    """Send bytes, read until the server closes; (status, head, body, problem)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(request)  # no half-close: aiohttp takes EOF as the client leaving
            deadline = time.monotonic() + timeout
            data = b""
            while time.monotonic() < deadline:
                s.settimeout(max(deadline - time.monotonic(), 0.01))
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
            else:
                return None, b"", data, "hang"
    except TimeoutError:
        return None, b"", b"", "hang"
    except (ConnectionResetError, BrokenPipeError):
        return None, b"", b"", "reset"
    while data.startswith((b"HTTP/1.1 100 ", b"HTTP/1.0 100 ")):  # interim answer to Expect
        data = data.partition(b"\r\n\r\n")[2]
    m = re.match(rb"HTTP/1\.[01] (\d{3})", data)
    if not m:
        return None, b"", data, "no-status-line" if data else "closed-without-answer"
    head, _, body = data.partition(b"\r\n\r\n")
    return int(m.group(1)), head, body, ""


def classify(request: bytes, status: int | None, head: bytes, body: bytes, problem: str) -> str:
    """'' when the answer is acceptable, else what is wrong with it."""
    first = request.split(b"\r\n", 1)[0][:80]
    if problem:
        return f"{problem}: {first!r}"
    assert status is not None
    if status >= 500 and status not in ALLOWED_5XX:
        return f"HTTP {status}: {request[:400]!r} -> {body[:160]!r}"
    if status < 400 or request.startswith(b"HEAD ") or body.startswith(b'{"error"'):
        return ""
    if status == 400 and b"text/plain" in head.lower():
        return ""  # aiohttp's HTTP parser refused the message itself, before any route ran
    return f"HTTP {status} without an error envelope: {first!r} -> {body[:100]!r}"


_numbers = st.one_of(
    st.integers(-(2**70), 2**70), st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, -1, 1, 2**31, 2**63, -(2**63), 10**400 // 10**300, 1e308]),
)  # fmt: skip
_scalars = st.one_of(st.none(), st.booleans(), _numbers, st.text(max_size=40))
_json = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
_messages = st.one_of(
    st.just([{"role": "user", "content": "hi"}]),
    st.lists(
        st.dictionaries(st.sampled_from(["role", "content", "name"]), _json, max_size=3), max_size=3
    ),
    _json,
)


@st.composite
def openai_body(draw: st.DrawFn) -> dict[str, Any]:
    body: dict[str, Any] = {"model": draw(st.sampled_from(["llama-3-8b", "nope", None, 7]))}
    if draw(st.booleans()):
        body["messages"] = draw(_messages)
    else:
        body["prompt"] = draw(st.one_of(st.text(max_size=60), _json))
    for key in ("max_tokens", "max_completion_tokens", "temperature", "top_p", "n", "seed",
                "stream", "stream_options", "stop", "user", "logprobs", "ignore_eos"):  # fmt: skip
        if draw(st.integers(0, 3)) == 0:
            body[key] = draw(_json)
    if draw(st.booleans()):  # a sane core so deeper code runs too
        body["max_tokens"] = draw(st.integers(1, 64))
    return body


_header_value = st.one_of(
    st.sampled_from(
        [
            "nan",
            "inf",
            "-inf",
            "-1e308",
            "1e999",
            "0",
            "-5",
            "",
            " ",
            "critical",
            "4",
            "99",
            "tp",
            "x" * 300,
        ]
    ),
    st.text(st.characters(min_codepoint=32, max_codepoint=255), max_size=30),
)
_header_name = st.sampled_from(
    [
        "X-Priority",
        "X-SLO-Deadline-Ms",
        "X-TTFT-SLO-Ms",
        "X-TPOT-SLO-Ms",
        "X-Cost-Budget",
        "X-Parallelism-Hint",
        "X-Request-Id",
        "X-User-Id",
        "X-Session-Id",
        "Authorization",
        "Content-Type",
        "Accept",
        "X-Tenant",
        "Expect",
    ]
)


@st.composite
def raw_request(draw: st.DrawFn) -> bytes:
    method = draw(st.sampled_from([b"POST", b"POST", b"GET", b"PUT", b"DELETE", b"PATCH",
                                   b"OPTIONS", b"HEAD", b"BREW"]))  # fmt: skip
    path = draw(st.one_of(
        st.sampled_from(ROUTES).map(str.encode),
        st.binary(max_size=40).map(lambda b: b"/" + b.hex().encode()),
        st.sampled_from([b"/v1/completions?x=%ff%00", b"/" + b"a" * 5000, b"/%2e%2e/admin",
                         b"/admin/requests/" + b"%" * 3, b"*"]),
    ))  # fmt: skip
    kind = draw(st.sampled_from(["openai", "json", "malformed", "utf8", "huge", "empty"]))
    if kind == "openai":
        body = json.dumps(draw(openai_body())).encode()  # NaN and huge ints included  # fmt: skip
    elif kind == "json":
        body = json.dumps(draw(_json)).encode()
    elif kind == "malformed":
        body = draw(st.sampled_from([b"{", b'{"model": }', b"[1,2", b'{"a":1}{"b":2}', b"nul"]))
    elif kind == "utf8":
        body = b'{"model":"llama-3-8b","prompt":"' + draw(st.binary(max_size=50)) + b'"}'
    elif kind == "huge":
        body = b'{"prompt":"' + b"a" * (MAX_BODY + draw(st.integers(1, 10_000))) + b'"}'
    else:
        body = b""
    headers = [(n.encode(), v.encode("latin-1")) for n, v in
               draw(st.lists(st.tuples(_header_name, _header_value), max_size=5))]  # fmt: skip
    if path.startswith(b"/admin") and draw(st.booleans()):
        headers.append((b"Authorization", b"Bearer " + ADMIN.encode()))
    length = len(body) - draw(st.sampled_from([0, 0, 0, 1]))  # too short: trailing junk
    lines = [method + b" " + path + b" HTTP/1.1", b"Host: fuzz", b"Connection: close",
             b"Content-Length: " + str(max(length, 0)).encode()]  # fmt: skip
    lines += [n + b": " + v for n, v in headers]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def sane_request() -> bytes:
    body = b'{"model":"llama-3-8b","prompt":"hi","max_tokens":3}'
    head = b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
    head += b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
    return head + body


def fuzz_raw(port: int, examples: int, timeout: float, seed: int) -> dict[str, Any]:
    statuses: Counter[str] = Counter()
    problems: list[str] = []

    @hypothesis_seed(seed)
    @settings(max_examples=examples, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))  # fmt: skip
    @given(raw_request())
    def case(request: bytes) -> None:
        status, head, body, problem = send_raw(port, request, timeout)
        key = str(status) if status is not None else problem
        if status == 400 and b"text/plain" in head.lower():
            key = "400 (HTTP parser)"
        statuses[key] += 1
        wrong = classify(request, status, head, body, problem)
        if wrong:
            problems.append(wrong)

    started = time.monotonic()
    case()  # problems are collected, not raised: the run goes through every case
    return {"cases": sum(statuses.values()), "elapsed_s": round(time.monotonic() - started, 1),
            "outcomes": dict(sorted(statuses.items())), "problems": problems[:30],
            "problem_count": len(problems)}  # fmt: skip


# ---------------------------------------------------------------- schemathesis


def run_schemathesis(port: int, examples: int, seed: int, phases: str) -> dict[str, Any]:
    url = f"http://127.0.0.1:{port}/openapi.json"
    common = [
        "--checks",
        "not_a_server_error",
        "-n",
        str(examples),
        "--seed",
        str(seed),
        "--generation-database",
        "none",
        "--phases",
        phases,
        "--request-timeout",
        "20",
        "--no-color",
        "--suppress-health-check",
        "all",
        "-w",
        "1",  # one worker: CPython 3.11's ast.parse is not thread-safe (hypothesis uses it)
    ]
    runs = {
        "client routes": ["--include-path-regex", r"^/(v1/.*|health|ready|metrics)$"],
        "admin without token": ["--include-path-regex", r"^/admin"],
        "GET routes with the admin token": [
            "--include-method",
            "GET",
            "-H",
            f"Authorization: Bearer {ADMIN}",
        ],
    }
    out: dict[str, Any] = {}
    exe = Path(sys.executable).with_name("schemathesis")
    for name, extra in runs.items():
        started = time.monotonic()
        proc = subprocess.run([str(exe), "run", url, *common, *extra], capture_output=True,
                              text=True, timeout=1800)  # fmt: skip
        tail = [ln for ln in proc.stdout.splitlines() if ln.strip()][-6:]
        out[name] = {"exit_code": proc.returncode, "elapsed_s": round(time.monotonic() - started),
                     "summary": tail}  # fmt: skip
        print(f"schemathesis {name}: exit {proc.returncode}", flush=True)
        if proc.returncode != 0:
            print(proc.stdout[-4000:], flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--examples", type=int, default=3000, help="raw fuzz cases")
    ap.add_argument("--st-examples", type=int, default=100, help="schemathesis cases per route")
    ap.add_argument("--timeout", type=float, default=15.0, help="seconds before a 'hang'")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-schemathesis", action="store_true")
    ap.add_argument("--st-phases", default="examples,coverage,fuzzing")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    report: dict[str, Any] = {}
    with Server() as srv:
        report["raw"] = fuzz_raw(srv.port, args.examples, args.timeout, args.seed)
        print("raw:", json.dumps(report["raw"])[:2000], flush=True)
        if not args.no_schemathesis:
            report["schemathesis"] = run_schemathesis(
                srv.port, args.st_examples, args.seed, args.st_phases
            )
        status, _, _, _ = send_raw(srv.port, sane_request(), 15)
        time.sleep(0.5)  # let cancelled streams of hung-up fuzz cases close
        counters = srv.counters()
    ended = sum(counters[k] for k in ("completed", "failed", "cancelled", "rejected", "timeout"))
    checks = {
        "raw: no 500, no hang, every error in the envelope": report["raw"]["problem_count"] == 0,
        "schemathesis not_a_server_error": all(
            r["exit_code"] == 0 for r in report.get("schemathesis", {}).values()
        ),
        "still serves afterwards": status == 200,
        "accounting identity, nothing in flight": counters["submitted"] == ended
        and counters["in_flight"] == 0,
    }  # fmt: skip
    report.update(counters=counters, checks=checks, ok=all(checks.values()))
    print(json.dumps({"checks": checks, "counters": counters}, indent=2))
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    sys.exit(0 if report["ok"] else 1)


if __name__ == "__main__":
    main()
