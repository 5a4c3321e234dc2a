"""The request state machine: the table, and that illegal moves raise."""

from __future__ import annotations

import pytest
from core_harness import request

from vllm_control_plane.core.lifecycle import TRANSITIONS, IllegalTransition, RequestRecord
from vllm_control_plane.types import TERMINAL_STATUSES, RequestStatus

S = RequestStatus


def fresh(**kw: object) -> RequestRecord:
    return RequestRecord(request(**kw), "m", 8, 8, submitted_at=0.0)


def test_every_status_has_a_row_and_terminal_rows_are_empty() -> None:
    assert set(TRANSITIONS) == set(S)
    for status in TERMINAL_STATUSES:
        assert TRANSITIONS[status] == frozenset()


@pytest.mark.parametrize("src", list(S))
@pytest.mark.parametrize("dst", list(S))
def test_transition_follows_the_table(src: S, dst: S) -> None:
    rec = fresh()
    rec.status = src
    if dst in TRANSITIONS[src]:
        rec.transition(dst, 1.0, "why")
        assert rec.status is dst and rec.reason == "why"
        assert (rec.finished_at == 1.0) == (dst in TERMINAL_STATUSES)
    else:
        with pytest.raises(IllegalTransition, match=f"{src.value} -> {dst.value}"):
            rec.transition(dst, 1.0)
        assert rec.status is src


def test_slo_judgement() -> None:
    rec = fresh(slo_deadline_ms=100, ttft_slo_ms=50, tpot_slo_ms=10)
    rec.status, rec.first_token_at, rec.finished_at, rec.completion_tokens = (
        S.COMPLETED, 0.04, 0.09, 6,
    )  # fmt: skip
    assert rec.ttft_ms == pytest.approx(40) and rec.tpot_ms == pytest.approx(10)
    assert rec.met_slo() is True
    rec.first_token_at = 0.06
    assert rec.met_slo() is False  # TTFT over 50 ms
    rec.status = S.CANCELLED
    assert rec.met_slo() is None  # the client withdrew it: not judged
    rec.status = S.REJECTED
    assert rec.met_slo() is False
    assert fresh().met_slo() is None  # no SLO
