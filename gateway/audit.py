"""The audit trail: every administrative action on the platform, who did it, when, on what,
and how it ended.

An *administrative action* is any command that is not a trader's own order flow: the risk
officers' (guarantees, request decisions, suspension, rate limits, interruptions), the
market, auction and system operators', the calendar's and the sync job's (their origin is
``calendar`` or ``sync``), reference-data loads, and the traders' guarantee requests and
breach settings.  Order entry, modification, cancellation, baskets, (de)activation, auction
bids and the clock's ticks are the trading record itself (journal, private streams,
``query_orders``/``query_trades``) and are not repeated here.

The trail is built from the sequencer's applied commands, live and during the replay that
rebuilds the core at start, so it is exactly what the journal says, survives restarts, and
is the same on every replay.  The last :data:`AUDIT_KEPT` entries are kept in memory for
``query_audit``; the journal keeps everything (``ronda journal export``).

Who sees what.  The officers and the market operator (who may see every agent) get each
entry whole (:attr:`AuditEntry.entry`).  Anyone else is limited to its own agent and gets,
of an entry that concerns its agent, only that agent's part (:attr:`AuditEntry.views`):
``agents`` and the command's ``agents``/``agent`` fields narrowed to its own agent, the
outcome of its own orders (the first rejection of one of them, or a rejection of the
command as a whole) and the count of its own orders affected.  Another agent's rejection
(its text names that agent, its order and amounts, e.g. its operative limit), order ids
and counts never reach it (R46.2.12: a trader sees only its own agent's orders).  The
issuer (``by``), the action, the time and the command's other fields (contracts, reason)
are the platform's, not another agent's, and are shown.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from collections.abc import Iterable
from typing import Any

from auctions.session import CancelAuctionBid, SubmitAuctionBid
from engine.commands import ORDER_COMMANDS
from engine.config import fmt_price, fmt_qty
from engine.events import OrderReport, Reject
from gateway.codec import Codec
from gateway.core import SERVER_RECORDS, CommandFailed
from gateway.wire import fmt_instant
from risk.events import RiskNotice

AUDIT_KEPT = 20_000
LONG_TEXT = 200  # a longer string field (reference data) is shown by its size
# fields shown as the wire shows them: money and prices in euros, energy in MWh, instants
MONEY_FIELDS = frozenset({"amount", "price", "incr"})
ENERGY_FIELDS = frozenset({"energy", "delta", "qty", "peak", "unavailable", "min_energy",
                           "max_energy"})
INSTANT_FIELDS = frozenset({"close_at", "expiry", "opens_at", "closes_at", "publish_at"})

TRADING: frozenset[type] = ORDER_COMMANDS | {SubmitAuctionBid, CancelAuctionBid}
# not in the trail either: the server's checkpoints (no action of anyone's, and no event to
# date them by)
NOT_AUDITED: frozenset[type] = TRADING | SERVER_RECORDS

Message = dict[str, Any]


def _field(name: str, v: Any) -> Any:
    if type(v) is int:
        if name in MONEY_FIELDS:
            return fmt_price(v)
        if name in ENERGY_FIELDS:
            return fmt_qty(v)
        if name in INSTANT_FIELDS:
            return fmt_instant(v)
    return _value(v)


def _value(v: Any) -> Any:
    if isinstance(v, str) and len(v) > LONG_TEXT:
        return f"<{len(v)} characters>"
    if isinstance(v, tuple | list):
        return [_value(x) for x in v]
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return {f.name: _value(getattr(v, f.name)) for f in dataclasses.fields(v)}
    return v


def _is_reject(ev: Any) -> bool:
    return type(ev) is Reject or (type(ev) is OrderReport and ev.action == "REJECTED")


def _outcome(rejects: list[Any], failed: Any = None) -> Message:
    if failed is not None:  # the command raised inside the core: nothing can be said done
        return {"outcome": "FAILED", "code": "INTERNAL_ERROR",
                "reason": f"the command failed inside the engine ({failed.error})"}
    if not rejects:
        return {"outcome": "OK"}
    r = rejects[0]
    return {"outcome": "REJECTED", "code": r.code, "reason": r.reason}


def _concerns(ev: Any, agent: str, concerned: frozenset[str]) -> bool:
    """Whether rejection ``ev`` of a command about the ``concerned`` agents is ``agent``'s
    to see: an order's rejection only by its own agent; a rejection of the command as a
    whole (no order: a refused request, bad arguments) by every agent the command is
    about, unless it is another of those agents' own."""
    if type(ev) is OrderReport or ev.order_id is not None:
        return bool(ev.agent == agent)
    return ev.agent == agent or ev.agent not in concerned


@dataclasses.dataclass(frozen=True, slots=True)
class AuditEntry:
    """One administrative action: ``entry`` whole (officers, market operator), and for
    each agent it concerns what that agent's users may see of it (``views``; the same
    object as ``entry`` where nothing in it is another agent's)."""

    entry: Message
    views: dict[str, Message]


class AuditLog:
    """A sequencer listener keeping the last :data:`AUDIT_KEPT` administrative actions."""

    def __init__(self, codec: Codec, kept: int = AUDIT_KEPT) -> None:
        self.codec = codec
        self.entries: deque[AuditEntry] = deque(maxlen=kept)
        self.seq = 0
        self.last_ts = 0

    def observe(self, batch: list[tuple[Any, str, list[Any]]]) -> None:
        for cmd, origin, events in batch:
            for ev in events:
                ts = getattr(ev, "ts", None)
                if type(ts) is int and ts > self.last_ts:
                    self.last_ts = ts
            if type(cmd) in NOT_AUDITED:
                continue
            self.seq += 1
            self.entries.append(self._entry(cmd, origin, events))

    def _entry(self, cmd: Any, origin: str, events: list[Any]) -> AuditEntry:
        fields = {f.name: _field(f.name, getattr(cmd, f.name))
                  for f in dataclasses.fields(cmd)}
        fields.pop("req_id", None)
        for who in ("by", "user"):  # the issuer, already in ``by`` (a target user stays)
            if fields.get(who) == origin:
                del fields[who]
        rejects = [e for e in events if _is_reject(e)]
        failed = next((e for e in events if type(e) is CommandFailed), None)
        agents = {a for a in (getattr(cmd, "agent", None),) if isinstance(a, str)}
        agents.update(a for a in (getattr(cmd, "agents", None) or ()) if isinstance(a, str))
        # a reload that suspends an agent acts on it as an officer's suspend_agent does,
        # which names it: so does the entry (the agent and a filter on it find it)
        done = [e for e in events if type(e) is OrderReport and e.action != "REJECTED"]
        if not agents:
            # a command naming no agent acts on those it reaches: an officer's decision on
            # a guarantee request (its agent, told by a notice), a reload that suspends, an
            # interruption or a close (the agents of the orders it hibernated or
            # cancelled), a hibernation on disconnect (one user's orders): each such agent
            # finds the entry, with its own count.  (A command that names its agents keeps
            # to them: a counterparty its orders traded with is not what it was about.)
            agents.update(e.agent for e in events if type(e) is RiskNotice and e.agent)
            agents.update(e.agent for e in done)
        head: Message = {"seq": self.seq, "ts": fmt_instant(self.last_ts), "by": origin,
                         "action": self.codec.name_of(type(cmd))}
        entry: Message = {**head, "agents": sorted(agents), "fields": fields,
                          **_outcome(rejects, failed), "orders_affected": len(done)}
        concerned = frozenset(agents)
        views: dict[str, Message] = {}
        for a in sorted(agents):
            own = dict(fields)
            if "agents" in own:
                own["agents"] = [a]
            if "agent" in own and own["agent"] != a:
                del own["agent"]
            view: Message = {
                **head, "agents": [a], "fields": own,
                **_outcome([r for r in rejects if _concerns(r, a, concerned)], failed),
                "orders_affected": sum(1 for e in done if e.agent == a)}
            views[a] = entry if view == entry else view
        return AuditEntry(entry, views)

    def query(self, agent: str | None = None, before: int | None = None,
              limit: int = 200, *, view_of: str | None = None) -> list[Message]:
        """The newest entries first: those about ``agent`` (or every entry), older than
        ``before`` (an entry's ``seq``), at most ``limit``.  Whole, as the officers see
        them; with ``view_of`` (a user limited to that agent's data), only the entries
        about that agent, each as that agent may see it (:class:`AuditEntry`)."""
        if view_of is not None:
            if agent is not None and agent != view_of:
                raise ValueError(f"an audit view of {view_of} cannot list {agent}'s entries")
            agent = view_of
        out: list[Message] = []
        it: Iterable[AuditEntry] = reversed(self.entries)
        for e in it:
            if before is not None and e.entry["seq"] >= before:
                continue
            if agent is None:
                out.append(e.entry)
            else:
                view = e.views.get(agent)
                if view is None:
                    continue
                out.append(e.entry if view_of is None else view)
            if len(out) >= limit:
                break
        return out
