"""The core as the gateway runs it: engine + risk, one ``apply``, and read-only views.

The same object runs live (under the sequencer), in recovery (replaying the journal) and in
tests; it does no I/O.  A command whose application raises (a bug) is caught here, in the
same way live and in replay, so a replay reproduces the live state exactly.
"""

from __future__ import annotations

import importlib.metadata
import logging
import re
from dataclasses import dataclass
from typing import Any

from engine.config import EngineConfig
from engine.engine import Engine
from engine.events import EVENT_NAMES, EVENT_TYPES, Event
from engine.model import Order
from engine.states import OrderStatus
from gateway.codec import default_codec
from risk import commands as risk_commands
from risk.guard import RiskGuard
from risk.refdata import RefData

log = logging.getLogger("ronda.core")


def _register_risk_commands() -> None:
    """The journal stores risk commands too: give each a stable snake_case name."""
    codec = default_codec()
    known = set(codec.registered().values())
    for name in risk_commands.__all__:
        cls = getattr(risk_commands, name)
        if cls not in known:
            codec.register(cls, re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower())


_register_risk_commands()


def _register_auction_commands() -> None:
    from auctions import session as au

    codec = default_codec()
    known = set(codec.registered().values())
    for cls in au.AUCTION_COMMANDS:
        if cls not in known:
            codec.register(cls, re.sub(r"(?<!^)(?=[A-Z])", "_", cls.__name__).lower())


_register_auction_commands()


def _server_name() -> str:
    try:
        return f"ronda {importlib.metadata.version('ronda')}"
    except importlib.metadata.PackageNotFoundError:  # run from a source tree
        return "ronda (source)"


SERVER = _server_name()


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """The server's own journal record, not a trading command (applying it changes nothing):
    the core's state hash after every record before it.  The server writes one when it
    starts (after replaying its journal) and one when it stops; replaying the journal
    recomputes the hash at each and compares (:class:`ReplayDiverged`), so that a replay
    which does not reproduce the state the server had (another engine's behaviour after an
    upgrade, a step that was not deterministic) is found at that record instead of going
    unnoticed (DESIGN rule 3)."""

    state_hash: str
    reason: str  # "start", "stop", or ACCEPTED
    server: str  # the server that wrote it, e.g. "ronda 0.1.0"


# the reason of the checkpoint a server writes at start when the operator accepted that
# replaying the journal diverged from earlier checkpoints (ronda serve
# --accept-replay-divergence)
ACCEPTED = "accepted"


default_codec().register(Checkpoint, "checkpoint")


@dataclass(frozen=True, slots=True)
class SessionMark:
    """The server's own journal record, not a trading command (applying it changes nothing):
    ``delta`` connections of ``user`` with the login option ``on_disconnect: hibernate``
    opened (+1) or closed (negative).  A crash closes such connections without a word;
    the marks tell the restarted server whose orders to hibernate then, as the option
    promises for any lost connection (gateway/server.py, ``_hibernate_after_crash``)."""

    user: str
    delta: int


default_codec().register(SessionMark, "session_mark")

# the server's own records: the core applies nothing for them
SERVER_RECORDS: frozenset[type] = frozenset({Checkpoint, SessionMark})


class Watches:
    """A listener (live and at recovery): per user, the connections open with the login
    option ``on_disconnect: hibernate``, as the journal's :class:`SessionMark` records
    tell."""

    def __init__(self) -> None:
        self.open: dict[str, int] = {}

    def observe(self, batch: list[tuple[Any, str, list[Any]]]) -> None:
        for cmd, _origin, _events in batch:
            if type(cmd) is SessionMark:
                n = self.open.get(cmd.user, 0) + cmd.delta
                if n > 0:
                    self.open[cmd.user] = n
                else:
                    self.open.pop(cmd.user, None)


class ReplayDiverged(RuntimeError):
    """Replaying the journal gave another state than the server had when it wrote the
    checkpoint at ``seq`` (a record's seq, or a line of an exported journal)."""

    def __init__(self, seq: int, ts: int, checkpoint: Checkpoint, replayed: str | None,
                 message: str | None = None) -> None:
        super().__init__(message or (
            f"replaying the journal gave another state than the server had at record {seq}"
            f" (the {checkpoint.reason} checkpoint of {checkpoint.server}): its state hash "
            f"was {checkpoint.state_hash}, the replay by {SERVER} gives {replayed}"))
        self.seq = seq
        self.ts = ts
        self.checkpoint = checkpoint
        self.replayed = replayed

    def __reduce__(self) -> tuple[Any, ...]:  # (a snapshot carries the findings)
        return (ReplayDiverged, (self.seq, self.ts, self.checkpoint, self.replayed, str(self)))


class ReplayUnchecked(ReplayDiverged):
    """Records after the journal's last checkpoint, written by another server (version)
    than the one replaying them: nothing can tell whether the replay reproduces them (the
    upgrade after a crash, which left no checkpoint at stop)."""

    def __init__(self, first: int, last: int, ts: int, checkpoint: Checkpoint) -> None:
        super().__init__(first, ts, checkpoint, None, (
            f"records {first} to {last} were written by {checkpoint.server} after its last "
            f"checkpoint (no checkpoint at stop: it did not stop cleanly) and are replayed by "
            f"{SERVER}: whether the replay reproduces them cannot be checked"))
        self.last = last

    def __reduce__(self) -> tuple[Any, ...]:
        return (ReplayUnchecked, (self.seq, self.last, self.ts, self.checkpoint))


class CheckpointCheck:
    """What a replay finds at the checkpoints of a journal (the server's recovery and
    ``ronda replay``): each checkpoint whose state it does not reproduce is a divergence,
    unless a later ``accepted`` checkpoint whose state it does reproduce settles it (an
    earlier start accepted this very replay)."""

    def __init__(self) -> None:
        self.divergences: list[ReplayDiverged] = []
        self.last: Checkpoint | None = None
        self.tail_from = 0  # the first record after ``last`` (0: none yet)

    def check(self, seq: int, ts: int, cp: Checkpoint, replayed: str) -> None:
        """At a checkpoint record, with the replay's state hash before it."""
        if replayed != cp.state_hash:
            self.divergences.append(ReplayDiverged(seq, ts, cp, replayed))
        elif cp.reason == ACCEPTED:
            self.divergences.clear()
        self.last, self.tail_from = cp, 0

    def unsettled(self, last_seq: int, last_ts: int) -> list[ReplayDiverged]:
        """At the end of the journal (its last record's seq and instant): the divergences
        nothing settled, and the records after the last checkpoint if another server wrote
        them (:class:`ReplayUnchecked`)."""
        out = list(self.divergences)
        if self.last is not None and self.tail_from and self.last.server != SERVER:
            out.append(ReplayUnchecked(self.tail_from, last_seq, last_ts, self.last))
        return out


class CommandFailed(Event):
    """The command raised inside the core (a defect, logged): the last event of its
    command, after the events the command caused before it raised (what it changed is
    in the state, so it is told: a trade made before the failure reaches both traders
    and the settlement).  Its sender is answered ``INTERNAL_ERROR`` instead of an
    ``ack``, and the replay tool shows it; a replay gives the same events (the
    exception's type name only: its message may hold addresses)."""

    __slots__ = ()

    ts: int
    error: str


EVENT_TYPES["command_failed"] = CommandFailed
EVENT_NAMES[CommandFailed] = "command_failed"


class Core:
    def __init__(self, config: EngineConfig | None = None, risk: bool = True) -> None:
        self.engine = Engine(config)
        self.risk: RiskGuard | None = RiskGuard.install(self.engine, RefData()) if risk else None
        from auctions.session import Auctions

        self.auctions = Auctions.install(self.engine, self.risk)
        self.failures = 0
        self._no_ref = RefData()  # the reference data of a core without risk: one, kept

    def apply(self, cmd: Any, ts: int) -> list[Any]:
        if type(cmd) in SERVER_RECORDS:  # the server's own record: nothing to apply
            return []
        try:
            return self.engine.apply(cmd, ts)
        except Exception as exc:  # a bug: keep the single writer alive, identically in
            self.failures += 1  # replay
            log.exception("command %r at %d failed", cmd, ts)
            return [*self.engine.events_so_far(), CommandFailed((ts, type(exc).__name__))]

    def state_hash(self) -> str:
        return self.engine.state_hash()

    # ------------------------------------------------------------------ views (read-only)

    @property
    def ref(self) -> RefData:
        return self.risk.ref if self.risk is not None else self._no_ref

    def contracts(self) -> list[dict[str, Any]]:
        return [
            {"contract": c.id, "state": c.state.value, "close_at": c.close_at,
             "delivery_start": c.spec.start, "delivery_end": c.spec.end, "reason": c.reason}
            for c in sorted(self.engine.contracts.values(), key=lambda c: (c.spec.start, c.id))
        ]

    def orders_of(self, agent: str) -> list[Order]:
        d = self.engine.by_agent.get(agent, {})
        return sorted(d.values(), key=lambda o: o.id)

    def order_view(self, o: Order) -> dict[str, Any]:
        vis = o.visible
        return {
            "order_id": o.id, "client_order_id": o.coid, "contract": o.contract,
            "user": o.user, "agent": o.agent, "unit": o.unit, "side": o.side.value,
            "status": o.status.value, "price": o.price, "visible": vis,
            "hidden": o.remaining - vis, "filled": o.filled, "exec": o.exec.value,
            "validity": o.validity.value, "expiry": o.expiry, "peak": o.peak,
            "price_increment": o.incr, "revision": o.revision, "basket": o.basket,
            "basket_type": None if o.basket_type is None else o.basket_type.value,
            "active": o.status is OrderStatus.ACTIVE,
        }

    def account_kept(self, agent: str) -> bool:
        """Whether risk keeps an account for ``agent`` (:meth:`account` is not None)."""
        return self.risk is not None and agent in self.risk.accounts

    def account(self, agent: str) -> dict[str, Any] | None:
        if not self.account_kept(agent):
            return None
        assert self.risk is not None
        return self.risk.account(agent)

    def throttling(self, user: str, ts: int) -> dict[str, Any] | None:
        return None if self.risk is None else self.risk.throttling(user, ts)

    def next_deadline(self) -> int | None:
        """The earliest instant at which time alone changes the state: a GTD expiry or a
        contract's gate closure (for the timekeeper)."""
        e = self.engine
        best = e.next_expiry()
        for c in e.contracts.values():
            if c.state.value in ("TRADE", "INT", "UPC") and (best is None or c.close_at < best):
                best = c.close_at
        return best
