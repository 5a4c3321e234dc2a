"""The control plane's queue: per-class heaps ordered by the policy's static keys.

Theory of operation
-------------------
* A policy gives every queued request a *static* key ``(lane, value)`` (smaller = sooner).
  Keys never depend on ``now``: time-dependent orders are written as time-shifted constants
  (aging: ``level·aging_s + submitted_at``; least slack: ``deadline − predicted service``), so
  the order never needs re-sorting while time passes. Changing the policy rebuilds the heaps.
* Requests are split by *class* ``(model, parallelism hint)``: all requests of a class can run on
  the same instances, so the dispatcher looks at the few class heads, not at the whole queue —
  a full model cannot block another model's requests (no head-of-line blocking across classes).
* Removal (cancel, shed, timeout) is lazy: an entry is live while its token matches the
  member table; stale entries are dropped when they reach a head, and the heaps are compacted
  when stale entries outnumber live ones.
* A request that must wait for particular instances (the policy deferred it until one of them
  has room) is *parked* in a side heap keyed by that instance set; when one of them gains a slot,
  :meth:`wake` moves that many heads back. So a waiting request costs nothing per dispatch call
  and cannot block the requests behind it. Structural changes (instances added, removed, drained,
  health flips) call :meth:`wake_all`.
* Retries wait in a ``not_before`` heap; hard deadlines in a deadline heap; arrival order per
  priority (insertion-ordered dicts) answers "newest request of the lowest priority" for shedding.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Iterator
from typing import TypeAlias

from vllm_control_plane.core.lifecycle import RequestRecord
from vllm_control_plane.types import ParallelismType, RequestPriority

QueueKey: TypeAlias = tuple[int, float]
ClassKey: TypeAlias = tuple[str, "ParallelismType | None"]
KeyFn: TypeAlias = Callable[[RequestRecord], QueueKey]
_Entry: TypeAlias = tuple[int, float, int, int, RequestRecord]  # lane, value, seq, token, record


def class_of(rec: RequestRecord) -> ClassKey:
    """Requests of one class are interchangeable for placement (same model, same hint)."""
    return (rec.model_name, rec.request.parallelism_hint)


class RequestQueue:
    """Queued requests, O(log n) per push/pop, O(#classes) to find the best dispatchable head."""

    def __init__(self, key_fn: KeyFn) -> None:
        self._key_fn = key_fn
        self._heaps: dict[ClassKey, list[_Entry]] = {}
        self._members: dict[str, int] = {}  # request_id -> live token
        self._by_prio: dict[RequestPriority, dict[str, RequestRecord]] = {
            p: {} for p in RequestPriority
        }
        self._delayed: list[tuple[float, int, int, RequestRecord]] = []
        self._parked: dict[frozenset[str], list[_Entry]] = {}
        self._deadlines: list[tuple[float, int, RequestRecord]] = []
        self._token = 0
        self._stale = 0

    # -- membership ---------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._members)

    def __contains__(self, request_id: object) -> bool:
        return request_id in self._members

    def __iter__(self) -> Iterator[RequestRecord]:
        for by_id in self._by_prio.values():
            yield from list(by_id.values())

    def depth_by_priority(self) -> dict[str, int]:
        return {p.name.lower(): len(d) for p, d in self._by_prio.items()}

    def count(self, priority: RequestPriority) -> int:
        return len(self._by_prio[priority])

    def push(self, rec: RequestRecord, now: float) -> None:
        """Enqueue a new or retried request (delayed while ``now < rec.not_before``)."""
        token = self._admit(rec)
        if rec.not_before > now:
            heapq.heappush(self._delayed, (rec.not_before, rec.seq, token, rec))
        else:
            self._push_ready(rec, token, None)
        deadline = rec.deadline_at
        if rec.hard_deadline and deadline is not None:
            heapq.heappush(self._deadlines, (deadline, rec.seq, rec))

    def restore(self, rec: RequestRecord, key: QueueKey) -> None:
        """Put back a request :meth:`pop` returned (passed over, or demoted with a new key)."""
        self._push_ready(rec, self._admit(rec), key)

    def park(self, rec: RequestRecord, key: QueueKey, wait_for: frozenset[str]) -> None:
        """Put back a popped request that waits until one of ``wait_for`` has room."""
        token = self._admit(rec)
        heap = self._parked.setdefault(wait_for, [])
        heapq.heappush(heap, (key[0], key[1], rec.seq, token, rec))

    def wake(self, instance_id: str, slots: int) -> None:
        """``instance_id`` gained ``slots`` free slots: un-park up to that many heads of every
        side heap waiting for it."""
        for wait_for in [w for w in self._parked if instance_id in w]:
            self._unpark(wait_for, slots)

    def wake_all(self) -> None:
        for wait_for in list(self._parked):
            self._unpark(wait_for, None)

    def parked_count(self) -> int:
        return sum(1 for h in self._parked.values() for e in h if self._live(e[3], e[4]))

    def _unpark(self, wait_for: frozenset[str], limit: int | None) -> None:
        heap = self._parked[wait_for]
        moved = 0
        while heap and (limit is None or moved < limit):
            lane, value, seq, token, rec = heapq.heappop(heap)
            if self._live(token, rec):
                target = self._heaps.setdefault(class_of(rec), [])
                heapq.heappush(target, (lane, value, seq, token, rec))
                moved += 1
        if not heap:
            del self._parked[wait_for]

    def _admit(self, rec: RequestRecord) -> int:
        self._token += 1
        self._members[rec.request_id] = self._token
        self._by_prio[rec.request.priority][rec.request_id] = rec
        return self._token

    def remove(self, rec: RequestRecord) -> None:
        """Forget ``rec`` (its heap entries become stale)."""
        if self._members.pop(rec.request_id, None) is not None:
            del self._by_prio[rec.request.priority][rec.request_id]
            self._stale += 1
            self._maybe_compact()

    def _push_ready(self, rec: RequestRecord, token: int, key: QueueKey | None) -> None:
        lane, value = self._key_fn(rec) if key is None else key
        heap = self._heaps.setdefault(class_of(rec), [])
        heapq.heappush(heap, (lane, value, rec.seq, token, rec))

    def _live(self, token: int, rec: RequestRecord) -> bool:
        return self._members.get(rec.request_id) == token

    # -- dispatch -----------------------------------------------------------------------------
    def best_class(self, usable: Callable[[ClassKey], bool]) -> ClassKey | None:
        """The class whose head has the smallest key among classes ``usable`` accepts."""
        best: ClassKey | None = None
        best_entry: _Entry | None = None
        for cls in list(self._heaps):
            entry = self._clean_head(cls)
            if entry is None or not usable(cls):
                continue
            if best_entry is None or entry[:3] < best_entry[:3]:
                best, best_entry = cls, entry
        return best

    def pop(self, cls: ClassKey) -> tuple[RequestRecord, QueueKey] | None:
        """Take the head of ``cls`` out of the queue; returns it with its key (to re-push)."""
        entry = self._clean_head(cls)
        if entry is None:
            return None
        lane, value, _, _, rec = heapq.heappop(self._heaps[cls])
        self._members.pop(rec.request_id)
        del self._by_prio[rec.request.priority][rec.request_id]
        return rec, (lane, value)

    def _clean_head(self, cls: ClassKey) -> _Entry | None:
        heap = self._heaps.get(cls)
        while heap:
            entry = heap[0]
            if self._live(entry[3], entry[4]):
                return entry
            heapq.heappop(heap)
            self._stale -= 1
        self._heaps.pop(cls, None)
        return None

    # -- time-driven moves --------------------------------------------------------------------
    def release_due(self, now: float) -> None:
        """Move retries whose backoff has passed into their class heaps."""
        while self._delayed and self._delayed[0][0] <= now:
            _, _, token, rec = heapq.heappop(self._delayed)
            if self._live(token, rec):
                self._push_ready(rec, token, None)

    def pop_expired(self, now: float) -> list[RequestRecord]:
        """Remove and return queued hard-deadline requests whose deadline is ``<= now``."""
        out: list[RequestRecord] = []
        while self._deadlines and self._deadlines[0][0] <= now:
            _, _, rec = heapq.heappop(self._deadlines)
            if self._by_prio[rec.request.priority].get(rec.request_id) is rec:
                self.remove(rec)
                out.append(rec)
        return out

    def next_wakeup(self) -> float | None:
        """Earliest time a delayed retry becomes ready or a hard deadline expires."""
        while self._delayed and not self._live(self._delayed[0][2], self._delayed[0][3]):
            heapq.heappop(self._delayed)
        while self._deadlines and self._deadlines[0][2].request_id not in self._members:
            heapq.heappop(self._deadlines)
        times = [h[0][0] for h in (self._delayed, self._deadlines) if h]
        return min(times) if times else None

    # -- shedding and re-ordering -------------------------------------------------------------
    def newest_below(self, priority: RequestPriority) -> RequestRecord | None:
        """The newest queued request of the lowest priority strictly below ``priority``."""
        for prio in sorted(RequestPriority, reverse=True):
            if prio <= priority:
                return None
            by_id = self._by_prio[prio]
            if by_id:
                return next(reversed(by_id.values()))
        return None

    def rekey(self, key_fn: KeyFn, now: float) -> None:
        """Adopt a new policy's keys: rebuild every heap (O(n log n), only on a policy switch)."""
        self._key_fn = key_fn
        self._rebuild(now)

    def records(self) -> Iterable[RequestRecord]:
        return list(self)

    def _rebuild(self, now: float) -> None:
        live = sorted(self, key=lambda r: r.seq)
        self._heaps, self._delayed, self._deadlines, self._parked = {}, [], [], {}
        self._members.clear()
        for by_id in self._by_prio.values():
            by_id.clear()
        self._stale = 0
        for rec in live:
            self.push(rec, now)

    def _maybe_compact(self) -> None:
        if self._stale > 1024 and self._stale > 2 * len(self._members):
            self._compact()

    def _compact(self) -> None:
        for cls, heap in list(self._heaps.items()):
            kept = [e for e in heap if self._live(e[3], e[4])]
            heapq.heapify(kept)
            if kept:
                self._heaps[cls] = kept
            else:
                del self._heaps[cls]
        for wait_for, heap in list(self._parked.items()):
            kept = [e for e in heap if self._live(e[3], e[4])]
            heapq.heapify(kept)
            if kept:
                self._parked[wait_for] = kept
            else:
                del self._parked[wait_for]
        self._delayed = [e for e in self._delayed if self._live(e[2], e[3])]
        heapq.heapify(self._delayed)
        self._deadlines = [e for e in self._deadlines if e[2].request_id in self._members]
        heapq.heapify(self._deadlines)
        self._stale = 0
