"""Live runner: the same workloads against any OpenAI-compatible URL, measured from the stream.

How it works: requests are sent open-loop at their (scaled) arrival times as streamed
``/v1/completions`` with the prompt as text (the segments' words: one token each, so the server
counts the intended length and shared segments are shared prefixes), ``max_tokens`` = the
workload's output length and ``ignore_eos`` so the server generates exactly that many tokens
(vLLM's and the simulator's extension; the usual practice of serving benchmarks). Priority,
SLOs and session travel as the gateway's headers (``X-Priority``, ``X-TTFT-SLO-Ms``,
``X-TPOT-SLO-Ms``, ``X-SLO-Deadline-Ms``, ``X-Session-Id``), which a plain vLLM ignores.

Per request, from the client's clock: TTFT = send → first chunk with text; ITL = gaps between
such chunks (a server that coalesces tokens shows fewer, longer gaps); E2E = send → end of
stream; TPOT = (E2E − TTFT)/(completion_tokens − 1) with the server's usage count. HTTP 429 is a
rejection, other errors and timeouts are failures. The prefix cache hit rate is the change of
``vllm:prefix_cache_hits/queries`` on the URL's ``/metrics`` over the run, when it serves them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import orjson

from vllm_control_plane.backends.openai_http import parse_load_sample
from vllm_control_plane.bench.prompts import prompt_text
from vllm_control_plane.bench.results import EngineTotals, Histogram, Outcome, RunResult
from vllm_control_plane.bench.scenarios import TRACE_CLASSES, get_scenario
from vllm_control_plane.bench.workloads import BenchRequest, TraceWorkload, Workload

Progress = Callable[[float], None]


@dataclass(frozen=True)
class LiveOptions:
    model: str | None = None  # None: the first model the server lists
    timeout_s: float = 600.0  # per request, send to end of stream
    api_key: str | None = None


def live_workload(
    spec: str, seed: int, max_model_len: int, traces_dir: Path | None
) -> tuple[str, Workload]:
    """A scenario's workload by name, or a trace file (Azure CSV / Mooncake JSONL)."""
    path = Path(spec)
    if path.suffix in (".csv", ".jsonl", ".json") or path.exists():
        wl = TraceWorkload(path, classes=TRACE_CLASSES, max_model_len=max_model_len, seed=seed)
        return path.stem, wl
    return get_scenario(spec).name, get_scenario(spec).workload(seed, traces_dir)


def _headers(req: BenchRequest, api_key: str | None) -> dict[str, str]:
    cls = req.cls
    h = {"X-Request-Id": req.request_id, "X-Priority": cls.priority.name.lower()}
    for name, value in (
        ("X-TTFT-SLO-Ms", cls.ttft_slo_ms),
        ("X-TPOT-SLO-Ms", cls.tpot_slo_ms),
        ("X-SLO-Deadline-Ms", cls.e2e_slo_ms),
    ):
        if value is not None:
            h[name] = f"{value:g}"
    if req.session_id:
        h["X-Session-Id"] = req.session_id
    if api_key:
        h["Authorization"] = f"Bearer {api_key}"
    return h


@dataclass
class _Stream:
    first: float | None = None
    last: float | None = None
    completion_tokens: int = 0
    cached_tokens: int = 0
    error: str | None = None


def _frame(line: bytes, st: _Stream, now: float, itl: Histogram) -> bool:
    """Fold one SSE line into ``st``; False at ``[DONE]``."""
    line = line.strip()
    if not line.startswith(b"data:"):
        return True
    payload = line[5:].strip()
    if payload == b"[DONE]":
        return False
    obj = orjson.loads(payload)
    if "error" in obj:
        err = obj["error"]
        st.error = err.get("message", str(err)) if isinstance(err, dict) else str(err)
        return True
    if any(c.get("text") for c in obj.get("choices") or ()):
        if st.first is None:
            st.first = now
        elif st.last is not None:
            itl.add(now - st.last)
        st.last = now
    usage = obj.get("usage")
    if usage:
        st.completion_tokens = int(usage.get("completion_tokens") or 0)
        details = usage.get("prompt_tokens_details") or {}
        st.cached_tokens = int(details.get("cached_tokens") or 0)
    return True


def _outcome(
    req: BenchRequest,
    arrival: float,
    status: str,
    reason: str | None,
    sent: float,
    st: _Stream,
    end: float,
) -> Outcome:
    cls = req.cls
    out = Outcome(
        req.request_id,
        cls.name,
        cls.priority.name.lower(),
        arrival,
        status,
        cls.has_slo,
        None,
        req.prompt_tokens,
        reason=reason,
    )
    if status == "completed":
        out.output_tokens, out.cached_tokens = st.completion_tokens, st.cached_tokens
        out.ttft = None if st.first is None else st.first - sent
        out.e2e = end - sent
        if out.ttft is not None and st.completion_tokens > 1:
            out.tpot = (out.e2e - out.ttft) / (st.completion_tokens - 1)
    if cls.has_slo:
        checks = (
            (cls.ttft_slo_ms, out.ttft),
            (cls.tpot_slo_ms, out.tpot),
            (cls.e2e_slo_ms, out.e2e),
        )
        out.met_slo = status == "completed" and all(
            limit is None or value is None or value * 1e3 <= limit for limit, value in checks
        )
    return out


async def _send(
    session: aiohttp.ClientSession,
    url: str,
    model: str,
    req: BenchRequest,
    arrival: float,
    opts: LiveOptions,
    itl: Histogram,
) -> Outcome:
    body = {
        "model": model,
        "prompt": prompt_text(req.segments),
        "max_tokens": req.output_tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
        "ignore_eos": True,
    }
    st, loop = _Stream(), asyncio.get_running_loop()
    sent = loop.time()
    try:
        async with session.post(
            f"{url}/v1/completions", data=orjson.dumps(body), headers=_headers(req, opts.api_key)
        ) as resp:
            if resp.status != 200:
                text = (await resp.text())[:300]
                status = "rejected" if resp.status == 429 else "failed"
                return _outcome(
                    req, arrival, status, f"HTTP {resp.status}: {text}", sent, st, loop.time()
                )
            async for line in resp.content:
                if not _frame(line, st, loop.time(), itl):
                    break
    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
        return _outcome(
            req, arrival, "failed", f"{type(exc).__name__}: {exc}", sent, st, loop.time()
        )
    status = "failed" if st.error or st.first is None else "completed"
    return _outcome(req, arrival, status, st.error, sent, st, loop.time())


async def _first_model(session: aiohttp.ClientSession, url: str) -> str:
    async with session.get(f"{url}/v1/models") as resp:
        resp.raise_for_status()
        data = await resp.json()
    models = [m["id"] for m in data.get("data", [])]
    if not models:
        raise OSError(f"{url}/v1/models lists no model")
    return str(models[0])


async def _prefix_counters(session: aiohttp.ClientSession, url: str) -> tuple[float, float]:
    """(queries, hits) from ``/metrics``; (0, 0) when the URL does not serve them."""
    try:
        async with session.get(f"{url}/metrics") as resp:
            if resp.status != 200:
                return 0.0, 0.0
            sample = parse_load_sample(await resp.text())
    except (aiohttp.ClientError, ValueError):
        return 0.0, 0.0
    return sample.prefix_cache_queries, sample.prefix_cache_hits


async def run_live(
    url: str,
    requests: Sequence[BenchRequest],
    opts: LiveOptions | None = None,
    *,
    scenario: str = "live",
    multiplier: float = 1.0,
    duration_s: float | None = None,
    progress: Progress | None = None,
) -> RunResult:
    """Replay ``requests`` against ``url`` at their arrival times; one outcome each."""
    opts = opts or LiveOptions()
    url = url.rstrip("/")
    wall = time.perf_counter()
    itl = Histogram()
    timeout = aiohttp.ClientTimeout(total=opts.timeout_s)
    async with aiohttp.ClientSession(
        timeout=timeout, connector=aiohttp.TCPConnector(limit=0)
    ) as session:
        model = opts.model or await _first_model(session, url)
        q0, h0 = await _prefix_counters(session, url)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        tasks = []
        ordered = sorted(requests, key=lambda r: r.arrival)
        for k, req in enumerate(ordered):
            delay = t0 + req.arrival - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(
                asyncio.create_task(_send(session, url, model, req, req.arrival, opts, itl))
            )
            if progress is not None:
                progress((k + 1) / len(ordered))
        outcomes = list(await asyncio.gather(*tasks))
        end = loop.time() - t0
        q1, h1 = await _prefix_counters(session, url)
    window = duration_s or max((r.arrival for r in requests), default=1.0) or 1.0
    counts = {
        s: sum(1 for o in outcomes if o.status == s) for s in ("completed", "rejected", "failed")
    }
    return RunResult(
        scenario=scenario,
        config=f"live {url}",
        policy="(server's)",
        strategy="(server's)",
        mode="live",
        seed=0,
        multiplier=multiplier,
        offered_rate=len(requests) / window,
        duration_s=window,
        outcomes=outcomes,
        itl=itl,
        engines=EngineTotals(prefix_queries=int(q1 - q0), prefix_hits=int(h1 - h0)),
        counters={"submitted": len(outcomes), **counts},
        end_s=end,
        wall_s=time.perf_counter() - wall,
        notes=[f"model {model}"],
    )
