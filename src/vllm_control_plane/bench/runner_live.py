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
stream; TPOT = (E2E − TTFT)/(completion_tokens − 1) with the server's usage count, or — when
the server sends no ``usage`` — the number of chunks with text (one token each on vLLM; a lower
bound if a server coalesces), so a TPOT SLO is always judged. The prefix cache hit rate is the
change of ``vllm:prefix_cache_hits/queries`` on the URL's ``/metrics`` over the run, when it
serves them.

Outcomes, as the virtual runner's statuses (:func:`classify`): refusals count in the rejection
rate — HTTP 429 (queue full, a tenant's rate or concurrency limit) and the gateway's
``deadline_infeasible`` 504 and ``no_healthy_instance`` 503 are ``rejected``; a 504 for a
deadline that passed (``deadline_exceeded``, also as an error frame mid-stream, or any other 504)
is ``timeout`` (shed by the server). Every other error status, error frame, broken connection
and the client's own ``timeout_s`` are ``failed``. All of them miss their SLO.

Tenants: ``LiveOptions.tenant_keys`` maps a tenant to its API key; a request whose class has a
tenant is sent with that tenant's key (others with ``api_key``), and :func:`assign_tenants`
gives classes without a tenant one named like them, so any workload can be split by tenant.
Prompts of trace files are clipped to the context less ``reserve_tokens`` (the server's BOS).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import aiohttp
import orjson

from vllm_control_plane.backends.openai_http import parse_load_sample
from vllm_control_plane.bench.prompts import prompt_text
from vllm_control_plane.bench.results import EngineTotals, Histogram, Outcome, RunResult
from vllm_control_plane.bench.scenarios import TRACE_CLASSES, get_scenario
from vllm_control_plane.bench.workloads import BenchRequest, TraceWorkload, Workload

Progress = Callable[[float], None]


# Context kept free when clipping a trace's prompts for a live server: it adds a BOS token to a
# text prompt (vLLM, ``vcp sim``), so prompt + max_tokens = max_model_len exactly is refused.
LIVE_RESERVE_TOKENS = 16


@dataclass(frozen=True)
class LiveOptions:
    model: str | None = None  # None: the first model the server lists
    timeout_s: float = 600.0  # per request, send to end of stream
    api_key: str | None = None
    tenant_keys: Mapping[str, str] = field(default_factory=dict)  # tenant -> API key
    usd_per_hour: float | None = None  # the fleet's price, for cost figures (None: unknown)


def live_workload(
    spec: str,
    seed: int,
    max_model_len: int,
    traces_dir: Path | None,
    *,
    speedup: float = 1.0,
    sample: float = 1.0,
    limit: int | None = None,
    reserve_tokens: int = LIVE_RESERVE_TOKENS,
) -> tuple[str, Workload]:
    """A scenario's workload by name, or a trace file (Azure CSV / Mooncake JSONL).

    Trace replays (a file, or the ``azure`` / ``mooncake`` scenarios) keep ``reserve_tokens`` of
    the context free and take ``speedup``, ``sample`` and ``limit``; other workloads refuse them.
    """
    path = Path(spec)
    if path.suffix in (".csv", ".jsonl", ".json") or path.exists():
        wl = TraceWorkload(
            path,
            classes=TRACE_CLASSES,
            max_model_len=max_model_len,
            seed=seed,
            speedup=speedup,
            sample=sample,
            limit=limit,
            reserve_tokens=reserve_tokens,
        )
        return path.stem, wl
    sc = get_scenario(spec)
    base = sc.workload(seed, traces_dir)
    if isinstance(base, TraceWorkload):
        changes: dict[str, object] = {"reserve_tokens": reserve_tokens}
        if speedup != 1.0 or sample != 1.0 or limit is not None:
            changes.update(speedup=speedup, sample=sample, limit=limit)
        return sc.name, base.variant(**changes)
    if speedup != 1.0 or sample != 1.0 or limit is not None:
        raise ValueError(f"--speedup, --sample and --limit apply to trace replays, not {sc.name!r}")
    return sc.name, base


def fit_to_context(
    requests: Sequence[BenchRequest], max_model_len: int, reserve_tokens: int = LIVE_RESERVE_TOKENS
) -> list[BenchRequest]:
    """Cap each request's ``max_tokens`` so prompt + output fits the server's context less
    ``reserve_tokens``: a live server refuses what does not fit (HTTP 400), where the virtual
    engine trims the output. A prompt that alone overflows is left as is (and refused)."""
    room = max_model_len - reserve_tokens
    out = []
    for r in requests:
        cap = room - r.prompt_tokens
        out.append(replace(r, output_tokens=cap) if 1 <= cap < r.output_tokens else r)
    return out


def assign_tenants(requests: Sequence[BenchRequest], names: Sequence[str]) -> list[BenchRequest]:
    """Requests whose class has no tenant but is named like one of ``names`` become that
    tenant's; every name must be a class's tenant or a class's name (``ValueError`` lists them)."""
    classes = {r.cls for r in requests}
    tenants = {c.tenant for c in classes if c.tenant}
    by_name = {c.name for c in classes if not c.tenant}
    unknown = [n for n in names if n not in tenants and n not in by_name]
    if unknown:
        raise ValueError(
            f"no request class has tenant or name {', '.join(map(repr, unknown))}; "
            f"tenants: {', '.join(sorted(tenants)) or '(none)'}; "
            f"classes: {', '.join(sorted(c.name for c in classes))}"
        )
    wanted = set(names) - tenants
    renamed = {c: replace(c, tenant=c.name) for c in classes if not c.tenant and c.name in wanted}
    return [replace(r, cls=renamed[r.cls]) if r.cls in renamed else r for r in requests]


def _headers(req: BenchRequest, opts: LiveOptions) -> dict[str, str]:
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
    key = opts.tenant_keys.get(cls.tenant, opts.api_key) if cls.tenant else opts.api_key
    if key:
        h["Authorization"] = f"Bearer {key}"
    return h


@dataclass
class _Stream:
    first: float | None = None
    last: float | None = None
    chunks: int = 0  # chunks that carried text
    completion_tokens: int | None = None  # the server's usage count, when it sent one
    cached_tokens: int = 0
    error: str | None = None
    error_code: str | None = None

    @property
    def tokens(self) -> int:
        """Generated tokens: the usage count, else the chunks with text (one token each)."""
        return self.completion_tokens if self.completion_tokens else self.chunks


def classify(status: int, code: str | None) -> str:
    """An error answer's outcome status (see the module doc): rejected, timeout or failed."""
    if status == 429 or code in ("deadline_infeasible", "no_healthy_instance"):
        return "rejected"
    if status == 504 or code == "deadline_exceeded":
        return "timeout"
    return "failed"


def _error_of(payload: object) -> tuple[str, str | None]:
    """(message, code) of an OpenAI error envelope (or whatever else came)."""
    err = payload.get("error", payload) if isinstance(payload, dict) else payload
    if isinstance(err, dict):
        code = err.get("code")
        return str(err.get("message", err)), None if code is None else str(code)
    return str(err), None


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
        st.error, st.error_code = _error_of(obj)
        return True
    if any(c.get("text") for c in obj.get("choices") or ()):
        st.chunks += 1
        if st.first is None:
            st.first = now
        elif st.last is not None:
            itl.add(now - st.last)
        st.last = now
    usage = obj.get("usage")
    if usage:
        st.completion_tokens = int(usage.get("completion_tokens") or 0) or None
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
        tenant=cls.tenant,
    )
    if status == "completed":
        out.output_tokens, out.cached_tokens = st.tokens, st.cached_tokens
        out.ttft = None if st.first is None else st.first - sent
        out.e2e = end - sent
        if out.ttft is not None and st.tokens > 1:
            out.tpot = (out.e2e - out.ttft) / (st.tokens - 1)
    if cls.has_slo:
        checks = (
            (cls.ttft_slo_ms, out.ttft),
            (cls.tpot_slo_ms, out.tpot),
            (cls.e2e_slo_ms, out.e2e),
        )
        # A value is None only when it is undefined (TPOT of a one-token answer), as in the
        # core's own judgement; a completed request always has TTFT and E2E.
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
    counted: list[str],
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
            f"{url}/v1/completions", data=orjson.dumps(body), headers=_headers(req, opts)
        ) as resp:
            if resp.status != 200:
                text = await resp.text()
                try:
                    _, code = _error_of(orjson.loads(text))
                except orjson.JSONDecodeError:
                    code = None
                status = classify(resp.status, code)
                reason = f"HTTP {resp.status}: {text[:300]}"
                return _outcome(req, arrival, status, reason, sent, st, loop.time())
            async for line in resp.content:
                if not _frame(line, st, loop.time(), itl):
                    break
    except asyncio.TimeoutError:
        reason = f"client timeout after {opts.timeout_s:g} s"
        return _outcome(req, arrival, "failed", reason, sent, st, loop.time())
    except aiohttp.ClientError as exc:
        reason = f"{type(exc).__name__}: {exc}"
        return _outcome(req, arrival, "failed", reason, sent, st, loop.time())
    if st.error:
        status = classify(0, st.error_code)
    else:
        status = "failed" if st.first is None else "completed"
    reason = st.error or (None if st.first is not None else "stream ended without a token")
    if status == "completed" and not st.completion_tokens:
        counted.append(req.request_id)
    return _outcome(req, arrival, status, reason, sent, st, loop.time())


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
    counted: list[str] = []  # completed without a usage count
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
            send = _send(session, url, model, req, req.arrival, opts, itl, counted)
            tasks.append(asyncio.create_task(send))
            if progress is not None:
                progress((k + 1) / len(ordered))
        outcomes = list(await asyncio.gather(*tasks))
        end = loop.time() - t0
        q1, h1 = await _prefix_counters(session, url)
    window = duration_s or max((r.arrival for r in requests), default=1.0) or 1.0
    counts = {
        s: sum(1 for o in outcomes if o.status == s)
        for s in ("completed", "rejected", "timeout", "failed")
    }
    notes = [f"model {model}"]
    if counted:
        notes.append(f"{len(counted)} completed without usage: tokens counted from chunks")
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
        fleet_usd_per_hour=opts.usd_per_hour or 0.0,
        notes=notes,
    )
