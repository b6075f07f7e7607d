"""The timekeeper (gateway/server.py) submits the time-driven commands the state makes due:
contracts created, opened and closed, GTD expiries, the auctions' steps.  One that failed (a
defect in the core: ``command_failed``) or was refused stays due, so without a pause it was
journaled and failed again at every turn of the timekeeper (found by review: a clearing that
raises was submitted about once a second, with the reopening after it).  It is now tried
again after a pause that doubles at each new failure, and forgotten once it goes through."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

import gateway.server as server_mod
from engine.commands import OpenContracts, Tick
from engine.engine import Engine
from gateway.server import Config, Server


def journaled(server: Server, kind: type) -> int:
    return sum(1 for r in server.journal.records() if type(r.command) is kind)


async def turn_for(server: Server, seconds: float) -> None:
    """Wake the timekeeper every 10 ms for ``seconds`` (it otherwise sleeps up to 1 s)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    while loop.time() < end:
        server.kick()
        await asyncio.sleep(0.01)


@pytest.mark.parametrize("outcome", ["fails", "refused"])
async def test_a_time_driven_command_that_fails_is_retried_after_a_doubling_pause(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, outcome: str) -> None:
    monkeypatch.setattr(server_mod, "RETRY_MIN_S", 0.05)
    monkeypatch.setattr(server_mod, "RETRY_MAX_S", 10.0)
    broken = {"on": True}
    real_tick = Engine._on_tick

    def on_tick(self: Engine, cmd: Tick, ts: int) -> None:
        if broken["on"]:
            raise ZeroDivisionError("defect")
        real_tick(self, cmd, ts)

    monkeypatch.setattr(Engine, "_on_tick", on_tick)
    cmd: Any = Tick() if outcome == "fails" else OpenContracts(("NO-SUCH-CONTRACT",))
    kind = type(cmd)
    data = tmp_path / "data"
    srv = Server(Config(data_dir=data, port=0, calendar=None, fsync=False))
    await srv.start()
    try:
        before = journaled(srv, kind)
        monkeypatch.setattr(srv, "due_commands", lambda now: [cmd])
        await turn_for(srv, 1.2)
        # tried at about 0, 0.05, 0.15, 0.35, 0.75 s (and 1.55): 5, not 120 times
        n = journaled(srv, kind) - before
        assert 3 <= n <= 6, n
        assert srv._retry[cmd][1] >= 0.4
        if outcome == "fails":
            assert srv.core.failures == n
            broken["on"] = False  # the defect is gone: the next try goes through
            await turn_for(srv, 1.8)
            assert cmd not in srv._retry
            assert srv.core.failures == n
        else:
            assert srv.core.failures == 0
    finally:
        await srv.stop()
