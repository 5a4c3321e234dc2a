"""Virtual-time runner: the project's own core over simulated engines, event by event.

Theory of operation
-------------------
The same :class:`~vllm_control_plane.core.core.ControlCore` (policy, strategy, estimator) that
serves live traffic drives a fleet of :class:`~vllm_control_plane.sim.engine.SimEngine` in
virtual time. Requests enter the core's queue at their arrival; the core dispatches when an
instance has room; the runner hands each dispatch to its engine and reports first tokens and
completions to the core at the engines' event times. Every ``scrape_interval`` s the engines'
running / waiting counts and KV usage are fed to ``update_load``, as a metrics scrape would —
the core never has perfect knowledge of engine queues.

Events are ordered by ``(time, phase)``: engine step *ends* (outputs take effect), then external
events (arrivals, scrapes, core wake-ups for retries and deadlines), then engine step *starts*,
so a request dispatched at ``t`` joins a step starting at ``t`` and otherwise the next one, as in
vLLM. An engine's step is computed when it starts (``step``), or many decode-only beats at once
with the fast path (``advance``), up to a horizon that nothing can interrupt:

* the next external event always bounds it;
* when the core holds queued requests and this instance can take a dispatch, any other engine's
  step end may free a slot elsewhere and dispatch here, so the horizon is also the earliest
  pending step end of the other engines (lockstep, exact);
* otherwise nothing can reach this engine before the horizon (an instance that cannot take
  work only becomes able to at its own completion or at a scrape), and ``advance`` stops by
  itself at the engine's first completion.

So results are exact event for event, and identical for a seed. Scrapes read engine state after
the step in progress (at most one beat, ~10–50 ms, ahead of the scrape time).
"""

from __future__ import annotations

import heapq
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from vllm_control_plane.bench.prompts import block_hashes, prompt_text
from vllm_control_plane.bench.results import (
    EngineTotals,
    Histogram,
    LoadSeries,
    Outcome,
    RunResult,
)
from vllm_control_plane.bench.setup import BenchConfig, FleetSpec, instance_capacity, with_history
from vllm_control_plane.bench.workloads import BenchRequest
from vllm_control_plane.core.core import ControlCore, Dispatch
from vllm_control_plane.core.cost import hourly_rate
from vllm_control_plane.core.estimator import resolve_gpu
from vllm_control_plane.sim.engine import SimEngine
from vllm_control_plane.sim.types import EngineInputError, EngineRequest, TokenOutput
from vllm_control_plane.types import ExecutionInstance, RequestMetadata, RequestStatus

_END, _EXTERNAL, _START = 0, 1, 2
DEFAULT_SCRAPE_S = 0.5
DRAIN_LIMIT_S = 4 * 3600.0  # after the last arrival; anything still live is "unfinished"

Progress = Callable[[float], None]  # called with the share of arrivals submitted, 0..1


@dataclass
class _Engine:
    iid: str
    engine: SimEngine
    inst: ExecutionInstance
    pending: float = math.inf  # time of its next heap event (inf: idle)


class VirtualRun:
    """One run; call :meth:`run` once."""

    def __init__(
        self,
        fleet: FleetSpec,
        config: BenchConfig,
        requests: Sequence[BenchRequest],
        *,
        seed: int = 0,
        scrape_interval: float = DEFAULT_SCRAPE_S,
        progress: Progress | None = None,
        max_misses: int | None = None,
    ) -> None:
        self.config = with_history(config, len(requests))
        self.requests = sorted(requests, key=lambda r: r.arrival)
        self.by_id = {r.request_id: r for r in self.requests}
        self.seed = seed
        self.scrape_interval = scrape_interval
        self.progress = progress
        self.core = ControlCore(
            config.policy, config.strategy, seed=seed, limits=self.config.limits
        )
        self.engines: list[_Engine] = []
        self.index: dict[str, int] = {}
        for k, (iid, group) in enumerate(fleet.members()):
            cap = self.config.max_concurrent(instance_capacity(group))
            inst = fleet.instance(iid, group, cap)
            self.core.add_instance(inst)
            eng = SimEngine(fleet.engine_spec(group, k, seed))
            self.index[iid] = k
            self.engines.append(_Engine(iid, eng, self.core.instance(iid)))
        self.load = LoadSeries(
            [e.iid for e in self.engines], [instance_capacity(g) for _, g in fleet.members()]
        )
        self.itl = Histogram()
        self.heap: list[tuple[float, int, int, int, tuple[TokenOutput, ...]]] = []
        self._tie = 0
        self._next_arrival = 0
        self._next_scrape = 0.0
        self._on_engine = 0  # dispatched and not finished
        self._queued = False  # the core held requests back after the last dispatch call
        self._hashes: dict[str, tuple[int, ...]] = {}  # block hashes of live requests
        self.max_misses = max_misses
        self.misses = 0  # SLO misses seen so far (refusals, late first tokens, completions)
        self.aborted = False
        self._ttft_due: list[tuple[float, str]] = []  # (TTFT deadline, id): fail-fast only
        self._missed: set[str] = set()  # counted before completing (late first token)

    # ------------------------------------------------------------------------ main loop ----
    def run(self) -> tuple[list[Outcome], float]:
        """Run to completion; returns the outcomes and the time the last request ended."""
        last_arrival = self.requests[-1].arrival if self.requests else 0.0
        stop_at = last_arrival + DRAIN_LIMIT_S
        now = 0.0
        while not self.aborted:
            t_ext = self._next_external()
            head = self.heap[0] if self.heap else None
            if head is not None and (head[0], head[1]) < (t_ext, _EXTERNAL):
                now = head[0]
                if now > stop_at:
                    break
                self._engine_event(heapq.heappop(self.heap))
            elif t_ext < math.inf and t_ext <= stop_at:
                now = t_ext
                self._external(now)
            else:
                break
        return self._outcomes(now), now

    def _live(self) -> bool:
        if self._next_arrival < len(self.requests) or self._on_engine or self._queued:
            return True
        return self.core.counters().in_flight > 0

    def _next_external(self) -> float:
        t = math.inf
        if self._next_arrival < len(self.requests):
            t = self.requests[self._next_arrival].arrival
        if self._live():
            t = min(t, self._next_scrape)
            wake = self.core.next_wakeup()
            if wake is not None:
                t = min(t, wake)
        return t

    # -------------------------------------------------------------------------- externals ----
    def _external(self, now: float) -> None:
        reqs = self.requests
        submitted = False
        while self._next_arrival < len(reqs) and reqs[self._next_arrival].arrival <= now:
            self._submit(reqs[self._next_arrival], now)
            self._next_arrival += 1
            submitted = True
        if submitted and self.progress is not None:
            self.progress(self._next_arrival / len(reqs))
        if self._next_scrape <= now:
            self._scrape(now)
            self._next_scrape = now + self.scrape_interval
            self._late_first_tokens(now)
        wake = self.core.next_wakeup()
        if wake is not None and wake <= now:
            self.core.expire(now)
        self._dispatch(now)

    def _submit(self, req: BenchRequest, now: float) -> None:
        cls = req.cls
        meta = RequestMetadata(
            req.request_id,
            user_id=req.session_id,
            priority=cls.priority,
            slo_deadline_ms=cls.e2e_slo_ms,
            ttft_slo_ms=cls.ttft_slo_ms,
            tpot_slo_ms=cls.tpot_slo_ms,
            max_tokens=cls.max_tokens,
            session_id=req.session_id,
            tenant=cls.tenant,
            prompt_tokens=req.prompt_tokens,
        )
        hashes = block_hashes(req.segments)
        rec = self.core.submit(
            meta,
            now,
            prompt_tokens=req.prompt_tokens,
            prompt_text=prompt_text(req.segments),
            block_hashes=hashes,
        )
        if not rec.is_terminal:
            self._hashes[req.request_id] = hashes
            if self.max_misses is not None and cls.ttft_slo_ms is not None:
                heapq.heappush(self._ttft_due, (now + cls.ttft_slo_ms / 1e3, req.request_id))
        elif rec.met_slo() is False:
            self._miss(req.request_id)

    def _miss(self, request_id: str) -> None:
        """Count an SLO miss once; past ``max_misses`` the run has failed and stops."""
        if request_id in self._missed:
            return
        self._missed.add(request_id)
        self.misses += 1
        if self.max_misses is not None and self.misses > self.max_misses:
            self.aborted = True

    def _late_first_tokens(self, now: float) -> None:
        """Fail fast: a request past its TTFT deadline without a first token has missed."""
        due = self._ttft_due
        while due and due[0][0] < now:
            _, rid = heapq.heappop(due)
            if self.core.record(rid).first_token_at is None:
                self._miss(rid)

    def _scrape(self, now: float) -> None:
        outstanding, kv = [], []
        for e in self.engines:
            st = e.engine.stats()
            self.core.update_load(
                e.iid, st.num_requests_running, st.num_requests_waiting, st.kv_cache_usage_perc, now
            )
            outstanding.append(st.num_requests_running + st.num_requests_waiting)
            kv.append(st.kv_cache_usage_perc)
        self.load.add(now, outstanding, kv)

    # --------------------------------------------------------------------------- dispatch ----
    def _dispatch(self, now: float) -> None:
        for d in self.core.next_dispatches(now):
            self._start_on_engine(d, now)
        self._queued = self.core.counters().in_flight > self._on_engine

    def _start_on_engine(self, d: Dispatch, now: float) -> None:
        slot = self.engines[self.index[d.instance_id]]
        req = self.by_id[d.request_id]
        eng = slot.engine
        cap = req.max_tokens or eng.max_model_len
        er = EngineRequest(
            d.request_id,
            req.prompt_tokens,
            max(1, min(cap, eng.max_model_len - req.prompt_tokens)),
            self._hashes[d.request_id],
            arrival_time=now,
            output_tokens_hint=req.output_tokens,
        )
        try:
            eng.add_request(er, now)
        except EngineInputError as exc:
            self.core.on_failed(d.request_id, now, str(exc), retryable=False)
            return
        self.core.on_started(d.request_id, now)
        self._on_engine += 1
        if slot.pending == math.inf:
            self._push(now, _START, self.index[d.instance_id], ())

    # ---------------------------------------------------------------------- engine events ----
    def _push(self, t: float, phase: int, i: int, outputs: tuple[TokenOutput, ...]) -> None:
        self._tie += 1
        heapq.heappush(self.heap, (t, phase, self._tie, i, outputs))
        self.engines[i].pending = t

    def _engine_event(self, ev: tuple[float, int, int, int, tuple[TokenOutput, ...]]) -> None:
        t, phase, _, i, outputs = ev
        slot = self.engines[i]
        slot.pending = math.inf
        if phase == _START:
            self._run_block(i, t)
            return
        completed = self._deliver(outputs, t)
        if completed:
            self._dispatch(t)
        if slot.engine.has_unfinished() and slot.pending == math.inf:
            self._push(t, _START, i, ())

    def _deliver(self, outputs: tuple[TokenOutput, ...], t: float) -> bool:
        completed = False
        core = self.core
        for out in outputs:
            if out.first_token:
                core.on_first_token(out.request_id, t)
            if out.finish_reason is not None:
                req = self.by_id[out.request_id]
                core.on_complete(
                    out.request_id,
                    t,
                    prompt_tokens=req.prompt_tokens,
                    completion_tokens=out.num_output_tokens,
                    finish_reason=out.finish_reason,
                    cached_tokens=out.num_cached_tokens,
                )
                self._on_engine -= 1
                self._hashes.pop(out.request_id, None)
                completed = True
                if core.record(out.request_id).met_slo() is False:
                    self._miss(out.request_id)
        return completed

    def _horizon(self, i: int, t: float) -> float:
        until = self._next_external()
        if self._queued and self._ready(self.engines[i]):
            for k, other in enumerate(self.engines):
                if k != i and other.pending < until:
                    until = other.pending
        return until

    def _ready(self, slot: _Engine) -> bool:
        inst, lim = slot.inst, self.config.limits
        return (
            inst.active_requests < inst.max_concurrent_requests
            and inst.num_requests_waiting <= lim.saturation_waiting
            and inst.kv_cache_usage <= lim.saturation_kv
        )

    def _run_block(self, i: int, t: float) -> None:
        eng = self.engines[i].engine
        until = self._horizon(i, t)
        if until > t:
            running = eng.num_running
            adv = eng.advance(t, until)
            if adv.num_steps:
                beat = (adv.end_time - t) / adv.num_steps
                self.itl.add(beat, running * adv.num_steps)
                self._push(adv.end_time, _END, i, adv.finished)
                return
        res = eng.step(t)
        if res.duration <= 0:
            return
        decoded = sum(1 for o in res.outputs if not o.first_token)
        self.itl.add(res.duration, decoded)
        self._push(t + res.duration, _END, i, res.outputs)

    # --------------------------------------------------------------------------- results ----
    def _outcomes(self, now: float) -> list[Outcome]:
        out = []
        for req in self.requests:
            if self.core.knows(req.request_id):
                out.append(self._outcome(req, now))
            else:  # never submitted: the run stopped early
                cls = req.cls
                out.append(
                    Outcome(
                        req.request_id,
                        cls.name,
                        cls.priority.name.lower(),
                        req.arrival,
                        "unfinished",
                        cls.has_slo,
                        False if cls.has_slo else None,
                        req.prompt_tokens,
                        tenant=cls.tenant,
                    )
                )
        return out

    def _outcome(self, req: BenchRequest, now: float) -> Outcome:
        rec = self.core.record(req.request_id)
        t0 = rec.submitted_at
        live = not rec.is_terminal
        status = "unfinished" if live else rec.status.value
        met = rec.met_slo() if not live else (False if rec.request.has_slo else None)

        def rel(t: float | None) -> float | None:
            return None if t is None else t - t0

        done = rec.status is RequestStatus.COMPLETED
        return Outcome(
            request_id=req.request_id,
            cls=req.cls.name,
            priority=req.cls.priority.name.lower(),
            arrival=req.arrival,
            status=status,
            has_slo=rec.request.has_slo,
            met_slo=met,
            prompt_tokens=req.prompt_tokens,
            output_tokens=rec.completion_tokens,
            cached_tokens=rec.cached_tokens,
            ttft=rel(rec.first_token_at),
            e2e=rel(rec.finished_at) if done else None,
            tpot=(rec.tpot_ms / 1e3) if done and rec.tpot_ms is not None else None,
            queue=rel(rec.scheduled_at),
            instance=rec.instance_id,
            cost_usd=rec.cost_usd,
            reason=None if done else rec.reason,
            tenant=req.cls.tenant,
        )

    def engine_totals(self) -> EngineTotals:
        tot = EngineTotals()
        for e in self.engines:
            st = e.engine.stats()
            tot.prefix_queries += st.prefix_cache_queries
            tot.prefix_hits += st.prefix_cache_hits
            tot.preemptions += st.num_preemptions
            tot.generation_tokens += st.generation_tokens
            tot.steps += e.engine.num_steps
        return tot

    def fleet_usd_per_hour(self) -> float:
        return sum(hourly_rate(e.inst, resolve_gpu(e.inst).name) for e in self.engines)


def run_virtual(
    fleet: FleetSpec,
    config: BenchConfig,
    requests: Sequence[BenchRequest],
    *,
    scenario: str = "custom",
    seed: int = 0,
    multiplier: float = 1.0,
    duration_s: float | None = None,
    scrape_interval: float = DEFAULT_SCRAPE_S,
    progress: Progress | None = None,
    max_misses: int | None = None,
) -> RunResult:
    """One deterministic virtual-time run of ``requests`` on ``fleet`` under ``config``.

    ``max_misses``: stop as soon as more requests than this have missed their SLO (the run
    has failed whatever happens next); the rest count as unfinished and ``aborted`` is set.
    """
    wall = time.perf_counter()
    run = VirtualRun(
        fleet,
        config,
        requests,
        seed=seed,
        scrape_interval=scrape_interval,
        progress=progress,
        max_misses=max_misses,
    )
    outcomes, end = run.run()
    window = duration_s or (max((r.arrival for r in requests), default=0.0) or 1.0)
    return RunResult(
        scenario=scenario,
        config=config.name,
        policy=config.policy,
        strategy=config.strategy,
        mode="virtual",
        seed=seed,
        multiplier=multiplier,
        offered_rate=len(requests) / window,
        duration_s=window,
        outcomes=outcomes,
        itl=run.itl,
        load=run.load,
        engines=run.engine_totals(),
        counters=run.core.counters().as_dict(),
        end_s=end,
        wall_s=time.perf_counter() - wall,
        fleet_usd_per_hour=run.fleet_usd_per_hour(),
        aborted=run.aborted,
    )
