"""What the calendar says is due at an instant, as commands (pure: no clock, no I/O).

The server's timekeeper calls :func:`due` with the clock's time and submits the commands
through the sequencer, so the journal records them and a replay never needs the scheduler.
On the simulated clock a whole trading day runs in seconds; :func:`simulate` runs it without
any clock at all, jumping from one deadline to the next (tests).

Order within one instant: auction sessions close (pausing their horizon), then contracts
close at gate closure (one round), then new contracts are created and opened, then GTD
expiries, then auction reception opens, results are published and contracts reopen.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from auctions.calendar import Calendar
from auctions.session import (
    CANCELLED,
    CLEARED,
    CLOSED,
    DONE,
    OPEN,
    SCHEDULED,
    ClearAuction,
    CloseAuction,
    OpenAuction,
    ReopenAfterAuction,
    ScheduleAuction,
)
from engine.commands import CloseContracts, CreateContract, OpenContracts, Tick
from engine.states import ContractState

FIN = ContractState.FIN
UPC = ContractState.UPC


def due(core: Any, cal: Calendar | None, now: int) -> list[Any]:
    eng = core.engine
    auctions = core.auctions.sessions
    cmds: list[Any] = []
    if cal is not None:
        for a in cal.auction_window(now):
            s = auctions.get(a.session)
            if s is None and a.publish_at > now:
                cmds.append(ScheduleAuction(a.session, a.contracts, a.opens_at, a.closes_at,
                                            a.publish_at))
        for s in sorted(auctions.values(), key=lambda s: (s.closes_at, s.id)):
            if s.state == OPEN and s.closes_at <= now:
                cmds.append(CloseAuction(s.id))
    closing = tuple(sorted(c.id for c in eng.contracts.values()
                           if c.state is not FIN and c.close_at <= now))
    if closing:
        cmds.append(CloseContracts(closing))
    if cal is not None:
        # contracts in the horizon of an auction whose reception has closed wait for its
        # results: they open with the reopening (R46.2.7, R56)
        held: set[str] = set()
        for s in auctions.values():
            if s.closes_at <= now and s.state not in (DONE, CANCELLED):
                held.update(s.contracts)
        opening: list[str] = []
        after_reopen: list[str] = []  # released by a session published now: after its reopening
        for ct in cal.window(now):
            c = eng.contracts.get(ct.id)
            if c is None:
                cmds.append(CreateContract(ct.id, ct.close_at))
            if ct.open_at <= now and (c is None or c.state is UPC):
                (after_reopen if ct.id in held else opening).append(ct.id)
        if opening:
            cmds.append(OpenContracts(tuple(opening)))
    nxt = eng.next_expiry()
    if nxt is not None and nxt <= now:
        cmds.append(Tick())
    if cal is not None:
        for s in sorted(auctions.values(), key=lambda s: (s.opens_at, s.id)):
            if s.state == SCHEDULED and s.opens_at <= now < s.closes_at:
                cmds.append(OpenAuction(s.id))
            elif s.state == SCHEDULED and s.closes_at <= now:
                cmds.append(OpenAuction(s.id))  # missed its window: open, close at once
                cmds.append(CloseAuction(s.id))
            if s.state in (CLOSED, SCHEDULED, OPEN) and s.publish_at <= now:
                if s.state != CLOSED and not any(
                        isinstance(c, CloseAuction) and c.session == s.id for c in cmds):
                    continue
                cmds.append(ClearAuction(s.id))
                cmds.append(ReopenAfterAuction(s.id))
            elif s.state == CLEARED and s.publish_at <= now:
                # cleared by the operator before its publication time: the operator's own
                # reopen may come first; the calendar's waits for the publication
                cmds.append(ReopenAfterAuction(s.id))
        if after_reopen:
            still: set[str] = set()
            reopening = {c.session for c in cmds if isinstance(c, ReopenAfterAuction)}
            for s in auctions.values():
                if (s.closes_at <= now and s.state not in (DONE, CANCELLED)
                        and s.id not in reopening):
                    still.update(s.contracts)
            ready = tuple(c for c in after_reopen if c not in still)
            if ready:
                cmds.append(OpenContracts(ready))
    return cmds


def next_deadline(core: Any, cal: Calendar | None, now: int, expiries: bool = True
                  ) -> int | None:
    """The next instant at which something will be due; ``expiries=False``: leaving out the
    GTD orders' expiries (the engine expires them itself at the start of every command: a
    :class:`Tick` is only needed when no command comes)."""
    best: int | None = None

    def take(t: int) -> None:
        nonlocal best
        if t > now and (best is None or t < best):
            best = t

    eng = core.engine
    nxt = eng.next_expiry() if expiries else None
    if nxt is not None:
        take(nxt)
    for c in eng.contracts.values():
        if c.state is not FIN:
            take(c.close_at)
    if cal is not None:
        for ct in cal.window(now):
            take(ct.open_at)
            take(ct.close_at)
        for a in cal.auction_window(now):
            take(a.opens_at)
            take(a.closes_at)
            take(a.publish_at)
        for s in core.auctions.sessions.values():
            take(s.opens_at)
            take(s.closes_at)
            take(s.publish_at)
    return best


def simulate(core: Any, cal: Calendar, start: int, end: int,
             apply: Callable[[Any, int], list[Any]] | None = None,
             on_step: Callable[[int, Any, list[Any]], None] | None = None) -> int:
    """Run the calendar from ``start`` to ``end`` (ms) with no clock: at each deadline,
    apply what is due.  Returns the number of commands applied."""
    run = apply or core.apply
    now = start
    n = 0
    while now <= end:
        for cmd in due(core, cal, now):
            events = run(cmd, now)
            n += 1
            if on_step is not None:
                on_step(now, cmd, events)
        nxt = next_deadline(core, cal, now)
        if nxt is None:
            break
        now = nxt
    return n
