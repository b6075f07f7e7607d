"""The round-sync job (R49.1.4.2): after each round closes, the trades of every closed,
unsynchronised round go to the settlement side; its results come back as commands.

**Inputs, captured in the event stream.** The job listens to every applied command — live,
and during the replay that rebuilds the core after a restart.  It keeps the trades of
unsynchronised rounds, each with the reference data in force when it was made (R53.6: a
trade is settled to the owners and with the taxes the platform charged it with, even if the
reference data are reloaded before its round closes), and, at each round close (the
``round_closed`` event), a snapshot of what the settlement side needs from the platform at
that instant: the pending increases, each agent's reserved amount and reduction d), and the
reductions the platform decided there (R49.1.4.4: the platform validates them at the
synchronisation instant; the settlement side records its decisions and decides only the
increases).  A trade side whose order rests from before a reload is settled with the
reference data of the order's admission, and an auction session with those of its close of
reception, in the sync of the round it was charged to (R53.6, R39.4.3.4): the owners the
platform charged.
A synchronisation's inputs therefore depend only on the journal, so a recomputation after a
crash gives exactly the same result.

**Off the loop.** The settlement itself (``settle``: entries, taxes, balances, reductions)
runs in a worker thread and the store writes in its own, so a large round does not stall the
event loop that serves the traders; the loop only gathers the inputs and submits the
feedback.

**Exactly once.** Sync id = the last round it covers.  The store commits its entries,
balances, history, decisions, programs, the feedback commands and the sync's completion in
one transaction, and refuses a sync id it already has.  The feedback is then submitted through
the sequencer in order — the reduction per agent (R49.1.4.2 step 2), the increases decided
(R49.1.4.4), and last the release of the synchronised obligations (step 3), which marks the
feedback as complete.  Every feedback command is idempotent (an absolute value, a decision
on a request that is no longer pending is refused harmlessly, a release by round), so after a
crash at any point the job: skips what the store has, recomputes what it has not, and
re-sends the stored feedback of the last sync if the journal does not show its release.

Fault injection (tests): ``fault(point)`` is called at ``before_commit``, ``during_commit``
(inside the transaction), ``after_commit`` and ``feedback_N``; raising there simulates a
crash at that point.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from auctions.session import AuctionCleared, AuctionState
from engine.events import OrderReport, RoundClosed, Trade
from gateway.codec import decode, encode
from gateway.core import Core
from risk.commands import (
    DecideGuaranteeRequest,
    LoadReferenceData,
    ReleaseObligations,
    SetSyncReduction,
)
from risk.guard import SCALE
from risk.refdata import RefData
from sync.settle import (
    Decision,
    PendingRequest,
    SyncResult,
    TradeRow,
    auction_entries,
    settle,
    trade_row,
)
from sync.store import Store

log = logging.getLogger("ronda.sync")

ORIGIN = "sync"
Fault = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class CloseSnapshot:
    """What the settlement side needs from the platform at a round close (cents)."""

    round: int
    ts: int
    uncommitted: dict[str, int]  # each agent's operative limit (for reports and tests)
    requests: tuple[PendingRequest, ...]  # the pending guarantee requests (increases)
    # the reference data in force (an immutable object: a reload replaces it; R53.6)
    ref: RefData
    # each agent's reduction d) as the platform applies it (R49.1.4.2 step 2)
    reduction: dict[str, int]
    # what the platform holds as reserved: GMIC + accepted increases − accepted reductions
    # (R49.1.4.1, R49.1.4.4), which the settlement side's reserved amount must follow
    reserved: dict[str, int]
    # the reductions the platform decided at this close, the synchronisation instant
    # (R49.1.4.4: the platform validates them; the settlement side records its decisions)
    decisions: tuple[Decision, ...] = ()


class SyncJob:
    def __init__(self, core: Core, store: Store, submit: Callable[[Any, str], Any] | None
                 = None, fault: Fault | None = None) -> None:
        self.core = core
        self.store = store
        self.submit = submit  # async (command, origin) -> events: the sequencer's submit
        self.fault = fault
        # the trades of unsettled rounds, as plain rows (see settle.trade_row)
        self.trades: dict[int, list[TradeRow]] = defaultdict(list)
        # the reference data each kept trade was made under (R53.6): (first trade id,
        # reference data), one entry per change, in trade id order
        self.trade_refs: list[tuple[int, RefData]] = []
        # R53.6: the exceptions, by (trade id, side): a resting order admitted (and charged,
        # R49.1.4.3 b) under older reference data than those in force at its trade
        self.side_refs: dict[tuple[int, str], RefData] = {}
        # the live orders charged under older reference data (they rest from before a
        # reload), by order id: taken from the platform at each reload, forgotten when the
        # order ends or is admitted again (a modification, a reactivation)
        self.order_refs: dict[int, RefData] = {}
        self.closes: dict[int, CloseSnapshot] = {}
        self.released_seen: set[int] = set()
        self.last_synced = 0
        self.syncs_done = 0
        self.failures = 0
        # cleared, to settle, with the reference data in force at the close of reception,
        # when the bids' guarantees were verified and held for their owners (R39.4.3.4,
        # R53.6): the clearing charges the obligations to those owners
        self.auctions: list[tuple[str, int, tuple[Any, ...], RefData]] = []
        self.session_refs: dict[str, RefData] = {}  # closed, not yet cleared
        # the round each cleared session's obligations were charged to on the platform
        # (the current round at the clearing, R39.4.3.4): its billing enters the balance
        # in the synchronisation of that round, which releases them
        self.auction_rounds: dict[str, int] = {}
        # the current round as the event stream tells it (after the first round close it
        # has seen; before, unknown)
        self.round_now: int | None = None
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()

    async def open(self) -> None:
        """Before the replay: learn what the store already has."""
        self.last_synced = await self.store.last_sync()

    # ------------------------------------------------------------------ listening

    def observe(self, batch: list[tuple[Any, str, list[Any]]]) -> None:
        """A sequencer listener (live and during replay)."""
        for cmd, origin, events in batch:
            if origin == ORIGIN and isinstance(cmd, ReleaseObligations):
                self.released_seen.add(cmd.through_round)
            order_refs = self.order_refs
            for ev in events:
                t = type(ev)
                if t is Trade:
                    if ev.round > self.last_synced:
                        self.trades[ev.round].append(trade_row(ev))
                        # R53.6: settled with the reference data it was made (and charged
                        # on the platform) under, whatever is loaded before its round closes
                        ref = self.core.ref
                        if not self.trade_refs or self.trade_refs[-1][1] is not ref:
                            self.trade_refs.append((ev.trade_id, ref))
                        if order_refs:
                            # the aggressor was admitted now; the resting order may rest
                            # from before a reload, charged to the owners of then
                            # (R49.1.4.3 b): its side is settled with those (R53.6)
                            if ev.aggressor == "BUY":
                                side, oid = "SELL", ev.sell_order
                            else:
                                side, oid = "BUY", ev.buy_order
                            old = order_refs.get(oid)
                            if old is not None:
                                self.side_refs[(ev.trade_id, side)] = old
                elif t is OrderReport:
                    if order_refs and ev.order_id in order_refs and (
                            ev.status == "INACTIVE"
                            or ev.action in ("MODIFIED", "ACTIVATED")):
                        del order_refs[ev.order_id]  # gone, or admitted again now
                elif t is RoundClosed:
                    self.round_now = ev.round + 1
                    if ev.round > self.last_synced:
                        self.closes[ev.round] = self._snapshot(ev.round, ev.ts)
                    self._wake.set()
                elif t is AuctionState:
                    if ev.state == "CLOSED":
                        # R39.4.3.4: the bids' guarantees are verified again and held for
                        # the owners in force now; the clearing charges those owners
                        self.session_refs[ev.session] = self.core.ref
                    elif ev.state == "CANCELLED":  # never cleared: nothing to settle
                        self.session_refs.pop(ev.session, None)
                elif t is AuctionCleared:
                    # R44: settled at the marginal price (the store keeps each session
                    # once), with the reference data the bids were held under (R53.6)
                    ref = self.session_refs.pop(ev.session, self.core.ref)
                    self.auctions.append((ev.session, ev.ts, ev.allocations, ref))
                    if self.round_now is not None:
                        self.auction_rounds[ev.session] = self.round_now
                    self._wake.set()
            if isinstance(cmd, LoadReferenceData) and self.core.risk is not None:
                # a reload: the orders left resting stay charged under the reference data
                # of their admission (docs/refdata.md); note them for their trades (R53.6)
                self.order_refs = self.core.risk.charged_refs()

    def _snapshot(self, rnd: int, ts: int) -> CloseSnapshot:
        risk = self.core.risk
        if risk is None:
            return CloseSnapshot(rnd, ts, {}, (), self.core.ref, {}, {})
        accts = risk.accounts.items()
        unc = {a: acct.limit_cents() for a, acct in accts}
        # (the platform decided every pending reduction at this close: R49.1.4.4)
        reqs = tuple(PendingRequest(r.id, r.agent, r.increase, r.amount)
                     for r in risk.requests.values() if r.state == "PENDING" and r.increase)
        # these terms are whole cents (set from cent amounts): exact
        red = {a: acct.reduction // SCALE for a, acct in accts}
        res = {a: (acct.gmic + acct.increases - acct.reductions) // SCALE for a, acct in accts}
        dec = tuple(Decision(rid, agent, accept, reason, True, amount)
                    for rid, agent, amount, accept, reason in risk.close_decisions)
        return CloseSnapshot(rnd, ts, unc, reqs, risk.ref, red, res, dec)

    # ------------------------------------------------------------------ syncing

    async def run(self) -> None:
        """Catch up, then synchronise after every round close.  A failed attempt (the store
        unreachable, say) is logged and retried with back-off; nothing is lost meanwhile,
        since the inputs stay in memory and in the journal."""
        delay = 0.5
        caught_up = False
        while True:
            try:
                if not caught_up:
                    await self.catch_up()
                    caught_up = True
                else:
                    await self._wake.wait()
                    self._wake.clear()
                    await self.sync_pending()
                delay = 0.5
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("sync failed; retrying in %.1f s", delay)
                self.failures += 1
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
                self._wake.set()

    async def catch_up(self) -> None:
        """After a restart: re-send the last sync's feedback if it may not have been
        applied, then synchronise every closed round the store does not have."""
        async with self._lock:
            last = self.last_synced
            if last and last not in self.released_seen and self.submit is not None:
                await self._feed(last, await self.store.feedback(last))
        await self.sync_pending()

    async def settle_auctions(self) -> int:
        """R44: store the entries of every cleared auction not stored yet."""
        n = 0
        async with self._lock:
            while self.auctions:
                session, ts, allocations, ref = self.auctions[0]
                entries = auction_entries(allocations, ref)
                if await self.store.commit_auction(session, entries, ts):
                    n += 1
                self.auctions.pop(0)
        return n

    async def sync_pending(self) -> SyncResult | None:
        await self.settle_auctions()
        async with self._lock:
            # a commit that raised may still have committed (the acknowledgement was lost):
            # never recompute a sync the store has under a new id
            if await self.store.last_sync() > self.last_synced:
                await self._adopt_store()
            closed = sorted(r for r in self.closes if r > self.last_synced)
            if not closed:
                return None
            # one sync covers only rounds closed under the same reference data
            target = closed[0]
            for r in closed[1:]:
                if self.closes[r].ref is not self.closes[closed[0]].ref:
                    break
                target = r
            if target != closed[-1]:
                self._wake.set()  # the rest in a later sync
            snap = self.closes[target]
            first = self.last_synced + 1
            trades = [t for r in range(first, target + 1) for t in self.trades.get(r, ())]
            balances = await self.store.balances()
            requests, reserved = await self._platform(snap)
            auctions = await self._auctions(snap.ts, target)
            # R49.1.4.4: the reductions the platform decided at the closes of these rounds
            decided = [d for r in range(first, target + 1) if r in self.closes
                       for d in self.closes[r].decisions]
            # in a worker thread: a round of 100,000 trades takes the better part of a
            # second to settle, and the loop keeps serving traders meanwhile (every input is
            # immutable or this call's own: trades, reference data, snapshot, balances)
            refs = self._refs_of(trades)
            sides = dict(self.side_refs)  # (those of later trades are not looked up)
            res = await asyncio.to_thread(settle, target, first, trades, snap.ref, balances,
                                          requests, {}, reserved, auctions, refs, sides,
                                          decided)
            feedback = [json.dumps(encode(c)) for c in self._feedback(res, balances)]
            self._fault("before_commit")
            if not await self.store.commit(res, feedback, snap.ts, self.fault):
                # the store already has it (another job, or a stale view): never feed back a
                # recomputation; catch up from what the store says instead
                await self._adopt_store()
                return None
            self._fault("after_commit")
            self.last_synced = target
            self.syncs_done += 1
            for r in [r for r in self.trades if r <= target]:
                del self.trades[r]
            for r in [r for r in self.closes if r <= target]:
                del self.closes[r]
            self._prune_refs()
            if self.submit is not None:
                await self._feed(target, feedback)
            log.info("sync %d: rounds %d-%d, %d trades, %d entries", target, first, target,
                     res.trades, len(res.entries))
            return res

    def _refs_of(self, trades: list[TradeRow]) -> list[tuple[int, RefData]]:
        """The entries of ``trade_refs`` that apply to ``trades`` (R53.6)."""
        if not trades or not self.trade_refs:
            return []
        lo = min(t[1] for t in trades)
        hi = max(t[1] for t in trades)
        out = [e for e in self.trade_refs if e[0] <= hi]
        i = 0
        while i + 1 < len(out) and out[i + 1][0] <= lo:
            i += 1
        return out[i:]

    def _prune_refs(self) -> None:
        """Forget the reference data no kept trade was made under (the last entry stays:
        it is the one in force for the next trade, unless a reload comes first)."""
        # (each round's rows are in trade id order)
        first = min((rows[0][1] for rows in self.trades.values() if rows), default=None)
        refs = self.trade_refs
        i = 0
        while i + 1 < len(refs) and (first is None or refs[i + 1][0] <= first):
            i += 1
        if i:
            del refs[:i]
        if self.side_refs:
            self.side_refs = {k: v for k, v in self.side_refs.items()
                              if first is not None and k[0] >= first}
        for session in [s for s, r in self.auction_rounds.items() if r <= self.last_synced]:
            del self.auction_rounds[session]

    async def _adopt_store(self) -> None:
        self.last_synced = await self.store.last_sync()
        for r in [r for r in self.trades if r <= self.last_synced]:
            del self.trades[r]
        for r in [r for r in self.closes if r <= self.last_synced]:
            del self.closes[r]
        self._prune_refs()
        last = self.last_synced
        if self.submit is not None and last not in self.released_seen:
            await self._feed(last, await self.store.feedback(last))
        self._wake.set()  # rounds closed after it are still to be synchronised

    async def _auctions(self, until: int, target: int) -> list[tuple[str, str, int]]:
        """The auction sessions cleared in the rounds up to ``target`` (closed at ``until``)
        and not yet in a balance, as (session, agent, rights − obligations in
        milli-euros).  A session belongs to the round its obligations were charged to on
        the platform, the round current at its clearing (R39.4.3.4): so this sync's
        ``ReleaseObligations(target)`` releases exactly what it enters in the balance,
        even when the clearing shares its millisecond with the round close and comes
        after it in the journal.  (A session cleared before the journal this job has seen
        falls back to its clearing instant.)  ``settle_auctions`` has stored every session
        cleared before the close (the job observed it first), so the set depends only on
        the journal and the store."""
        rows = await self.store.query(
            "SELECT e.session AS session, e.agent AS agent, e.kind AS kind,"
            " s.completed_at AS completed_at, SUM(e.total) AS total FROM auction_entries e"
            " JOIN auction_sessions s ON s.session = e.session WHERE s.synced_in IS NULL"
            " GROUP BY e.session, e.agent, e.kind, s.completed_at"
            " ORDER BY e.session, e.agent, e.kind")
        net: dict[tuple[str, str], int] = {}
        for r in rows:
            rnd = self.auction_rounds.get(str(r["session"]))
            if (rnd > target) if rnd is not None else int(r["completed_at"]) > until:
                continue  # charged to a later round: entered with that round's sync
            key = (str(r["session"]), str(r["agent"]))
            total = int(r["total"])
            net[key] = net.get(key, 0) + (total if r["kind"] == "DCIC" else -total)
        return [(session, agent, amount) for (session, agent), amount in sorted(net.items())]

    async def _platform(self, snap: CloseSnapshot
                        ) -> tuple[tuple[PendingRequest, ...], dict[str, int]]:
        """The platform's figures at the close as the sync must read them: the increases
        still to decide and each agent's reserved amount.  The last sync's feedback may not
        have been applied at the close (a round closed while it was on its way, or a
        restart came between the commit and the feedback), so the increases it accepted
        are added to the reserved amount here.  (Reductions are the platform's to decide,
        at the close itself: R49.1.4.4; the snapshot has them as decided.)"""
        requests, accepted = await self._undecided(snap.requests)
        reserved = dict(snap.reserved)
        for r in accepted:
            if r.increase:
                reserved[r.agent] = reserved.get(r.agent, 0) + r.amount
        return requests, reserved

    async def _undecided(self, requests: tuple[PendingRequest, ...]
                         ) -> tuple[tuple[PendingRequest, ...], list[PendingRequest]]:
        """The snapshot's requests that no earlier sync has decided, and those an earlier
        sync accepted.  A round may close after a sync has decided a request but before its
        decision is applied on the platform; that round's snapshot still lists the request
        as pending, and it must not be decided twice (R49.1.4.4: each request is answered
        once)."""
        if not requests:
            return requests, []
        rows = await self.store.query(
            "SELECT request_id, accept FROM decisions WHERE request_id >= ?",
            (min(r.id for r in requests),))
        done = {int(r["request_id"]): bool(r["accept"]) for r in rows}
        return (tuple(r for r in requests if r.id not in done),
                [r for r in requests if done.get(r.id)])

    def _feedback(self, res: SyncResult, before: dict[str, Any]) -> list[Any]:
        cmds: list[Any] = []
        for agent, cents in sorted(res.reductions.items()):
            prev = before.get(agent)
            # communicate every reduction, and a return to zero after a reduction
            if cents or (prev is not None and prev.balance < 0):
                cmds.append(SetSyncReduction(ORIGIN, agent, cents))
        for d in res.decisions:
            if not d.platform:  # (a reduction: the platform decided it at the close)
                cmds.append(DecideGuaranteeRequest(ORIGIN, d.request_id, d.accept, d.reason))
        cmds.append(ReleaseObligations(ORIGIN, res.sync_id))  # last: marks completion
        return cmds

    async def _feed(self, sync_id: int, feedback: list[str]) -> None:
        assert self.submit is not None
        for i, text in enumerate(feedback):
            await self.submit(decode(json.loads(text)), ORIGIN)
            self._fault(f"feedback_{i}")

    def _fault(self, point: str) -> None:
        if self.fault is not None:
            self.fault(point)
