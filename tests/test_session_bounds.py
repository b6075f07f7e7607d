"""The outbound bounds of a session (gateway/session.py), with a transport whose pace the
test sets: a consumer that reads steadily, 256 messages a millisecond, whose socket buffer
is full (``send_now`` takes nothing, as websockets above its high-water mark), so that the
queue drains only as fast as the test says.  Real sockets are in tests/test_ws.py; here
the timing must be exact to show the case."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from types import SimpleNamespace
from typing import Any

from gateway.session import Session


class PacedTransport:
    def __init__(self, per_ms: int | None = 256) -> None:
        self.per_ms = per_ms  # None: reads nothing at all
        self.got = 0
        self.closed: str | None = None

    def send_now(self, msgs: list[dict[str, Any]]) -> bool:
        return False

    async def send_many(self, msgs: list[dict[str, Any]]) -> None:
        if self.per_ms is None:
            await asyncio.Event().wait()
        await asyncio.sleep(0.001 * max(1, len(msgs) // self.per_ms))
        self.got += len(msgs)

    async def send(self, msg: dict[str, Any]) -> None:
        pass

    async def close(self, code: int, reason: str) -> None:
        self.closed = reason

    def abort(self) -> None:
        self.closed = self.closed or "aborted"


def session(t: PacedTransport, **kw: Any) -> Session:
    server = SimpleNamespace(hub=SimpleNamespace(unsubscribe_all=lambda s: None),
                             sessions_of=defaultdict(set))
    s = Session(server, t, **kw)  # type: ignore[arg-type]
    s.writer_task = asyncio.get_running_loop().create_task(s.writer())
    return s


async def test_a_reader_is_not_let_go_while_one_commits_burst_drains() -> None:
    """One commit queues 3,000 messages (a cancel_all's reports), ten times the hard bound
    of a session with max_queue 30; the consumer reads steadily; the next message comes
    while most of the burst still waits.  It must not end the session (review: the burst
    counted as backlog as soon as the flush ran, and the next message dropped it), and
    every message arrives."""
    t = PacedTransport()
    s = session(t, max_queue=30, max_behind_s=5.0)
    await asyncio.sleep(0)
    for i in range(3000):
        s.send({"type": "order_report", "i": i})
    await asyncio.sleep(0.003)
    assert len(s._out) > 300  # more than the hard bound still waits
    s.send({"type": "heartbeat"})
    assert not s._closing, s._closing
    for _ in range(2000):
        if not s._out:
            break
        await asyncio.sleep(0.002)
    assert t.got == 3001 and not s._closing


async def test_a_consumer_reading_nothing_is_let_go_at_the_hard_bound() -> None:
    """The exemption is for one commit's burst: a consumer that reads nothing while commit
    after commit adds to its queue reaches the hard bound (300) and is let go at once."""
    t = PacedTransport(per_ms=None)
    s = session(t, max_queue=30, max_behind_s=3600)
    await asyncio.sleep(0)
    for i in range(400):  # 400 commits of one message each
        s.send({"type": "order_report", "i": i})
        await asyncio.sleep(0)  # the flush of each commit
        if s._closing:
            break
    assert s._closing and s._closing.startswith("slow consumer")
    assert len(s._out) <= 301 or not s._out


async def test_a_stuck_consumer_is_let_go_after_max_behind_s() -> None:
    """Behind (more than max_queue waiting) and nothing else happening: the timer alone
    lets it go after max_behind_s."""
    t = PacedTransport(per_ms=None)
    s = session(t, max_queue=30, max_behind_s=0.2)
    await asyncio.sleep(0)
    for i in range(400):  # the writer takes 256 and waits forever: 144 wait
        s.send({"type": "order_report", "i": i})
    await asyncio.sleep(0.1)
    assert len(s._out) == 144 and not s._closing
    await asyncio.sleep(0.4)
    assert s._closing == "slow consumer: more than 30 messages waiting for 0.2 s"
