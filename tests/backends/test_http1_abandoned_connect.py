"""A request cancelled while its TCP connect completes leaves nothing behind, on uvloop too.

uvloop (which ``vcp serve`` runs on), when ``create_connection`` is cancelled at the moment the
handshake completes, may call the protocol's ``connection_made`` and then never its
``connection_lost``, even after ``abort()``. The pool used to keep such a connection for good,
and ``ConnectionPool.close()`` — waiting for every connection's loss — never returned: the
gateway hung on shutdown. Each test runs on both event loops.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from vllm_control_plane.backends.http1 import ConnectionPool, _Connection

uvloop = pytest.importorskip("uvloop")

LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "uvloop": uvloop.new_event_loop,
}


def _run(loop_name: str, main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    with asyncio.Runner(loop_factory=LOOPS[loop_name]) as runner:
        runner.run(asyncio.wait_for(main(), 30))


@pytest.mark.parametrize("loop_name", sorted(LOOPS))
def test_requests_cancelled_while_connecting_leave_no_connection(loop_name: str) -> None:
    async def main() -> None:
        async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read()  # never answers; ends when the client goes
            writer.close()

        server = await asyncio.start_server(silent, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        pool = ConnectionPool()
        try:
            # cancel after 0, 1, 2, ... loop turns: some land inside the connect's last step
            for turns in list(range(8)) * 4:
                task = asyncio.ensure_future(pool.request("GET", f"http://127.0.0.1:{port}/"))
                for _ in range(turns):
                    await asyncio.sleep(0)
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
            for _ in range(100):  # aborted transports report their loss within a few turns
                if pool.num_open == 0:
                    break
                await asyncio.sleep(0.01)
            assert pool.num_open == 0
        finally:
            await asyncio.wait_for(pool.close(), 5)  # used to wait forever on uvloop
            server.close()
            await server.wait_closed()

    _run(loop_name, main)


@pytest.mark.parametrize("loop_name", sorted(LOOPS))
def test_pool_close_is_bounded_when_a_loss_is_never_reported(loop_name: str) -> None:
    async def main() -> None:
        pool = ConnectionPool()
        ghost = _Connection(pool, ("http", "127.0.0.1", 9))  # no transport: abort() does nothing
        pool.track(ghost)
        await asyncio.wait_for(pool.close(timeout=0.05), 5)
        assert pool.num_open == 0 and ghost.lost.done()

    _run(loop_name, main)
