"""RequestQueue: order, lazy removal, shedding, delays and deadlines (hypothesis vs a model)."""

from __future__ import annotations

from core_harness import request
from hypothesis import given, settings
from hypothesis import strategies as st

from vllm_control_plane.core.lifecycle import RequestRecord
from vllm_control_plane.core.queue import RequestQueue, class_of
from vllm_control_plane.types import RequestPriority


def rec(rid: str, prio: int = 2, t: float = 0.0, seq: int = 0, model: str = "m") -> RequestRecord:
    req = request(rid, priority=RequestPriority(prio), slo_deadline_ms=1000)
    return RequestRecord(req, model, 8, 8, submitted_at=t, seq=seq, hard_deadline=True)


def by_priority(r: RequestRecord) -> tuple[int, float]:
    return (0, int(r.request.priority) * 10 + r.submitted_at)


ops = st.lists(
    st.one_of(
        st.tuples(st.just("push"), st.integers(0, 4), st.floats(0, 100)),
        st.tuples(st.just("remove"), st.integers(0, 50), st.just(0.0)),
        st.tuples(st.just("pop"), st.just(0), st.just(0.0)),
    ),
    max_size=80,
)


@settings(max_examples=200, deadline=None)
@given(ops)
def test_pops_follow_keys_and_removed_requests_never_come_back(script) -> None:  # type: ignore[no-untyped-def]
    q = RequestQueue(by_priority)
    model: dict[str, RequestRecord] = {}
    n = 0
    for op, a, b in script:
        if op == "push":
            n += 1
            r = rec(f"r{n}", a, b, seq=n)
            q.push(r, 0.0)
            model[r.request_id] = r
        elif op == "remove" and model:
            victim = sorted(model)[a % len(model)]
            q.remove(model.pop(victim))
        elif op == "pop":
            got = q.pop(("m", None))
            if not model:
                assert got is None
                continue
            assert got is not None
            expected = min(model.values(), key=lambda r: (*by_priority(r), r.seq))
            assert got[0] is expected
            del model[expected.request_id]
        assert len(q) == len(model)
        assert sum(q.depth_by_priority().values()) == len(model)


def test_best_class_skips_unusable_classes_and_compares_heads() -> None:
    q = RequestQueue(by_priority)
    q.push(rec("a", prio=3, model="x", seq=1), 0.0)
    q.push(rec("b", prio=1, model="y", seq=2), 0.0)
    assert q.best_class(lambda cls: True) == ("y", None)
    assert q.best_class(lambda cls: cls[0] != "y") == ("x", None)
    assert q.best_class(lambda cls: False) is None


def test_newest_of_lowest_priority_is_the_shedding_victim() -> None:
    q = RequestQueue(by_priority)
    for k, prio in enumerate([4, 3, 4, 2]):
        q.push(rec(f"r{k}", prio=prio, seq=k), 0.0)
    assert q.newest_below(RequestPriority.HIGH).request_id == "r2"
    assert q.newest_below(RequestPriority.BACKGROUND) is None


def test_delayed_requests_wait_and_hard_deadlines_expire() -> None:
    q = RequestQueue(by_priority)
    r = rec("late", seq=1)
    r.not_before = 5.0
    q.push(r, 0.0)
    assert q.pop(class_of(r)) is None and len(q) == 1
    assert q.next_wakeup() == 1.0  # its deadline (submitted 0 + 1000 ms) comes first
    q.release_due(5.0)
    assert q.pop(class_of(r))[0] is r
    q.push(rec("d", seq=2), 0.0)
    assert q.pop_expired(0.5) == []
    assert [x.request_id for x in q.pop_expired(1.0)] == ["d"] and len(q) == 0


def test_rekey_reorders_and_compaction_keeps_members() -> None:
    q = RequestQueue(by_priority)
    recs = [rec(f"r{k}", prio=k % 5, t=float(k), seq=k) for k in range(3000)]
    for r in recs:
        q.push(r, 0.0)
    for r in recs[:2500]:
        q.remove(r)  # triggers compaction
    q.rekey(lambda r: (0, -r.submitted_at), 0.0)
    assert q.pop(("m", None))[0] is recs[-1]
    assert len(q) == 499
