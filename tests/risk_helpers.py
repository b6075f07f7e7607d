"""Fixtures for the risk module's tests: reference-data documents, a core (engine + RiskGuard)
with a clock, event filters and an independent money arithmetic.

Units (as in the core): prices in cents of €/MWh (5000 = 50.00 €/MWh), quantities and
energies in tenths of MWh (100 = 10.0 MWh), money in cents of € (63594 = 635.94 €),
instants in ms UTC.

The standard document (:func:`std_doc`), all agents without taxes unless a test says so:

==========  =======================================================================
agent       users / units
==========  =======================================================================
BUYER       ``bea`` (trader); unit ``BUYU`` (buying, ES, max 500.0)
SELLER      ``sam`` (trader); unit ``SELLU`` (selling, ES, max 500.0)
REP         ``rui`` (trader); represents OWN2; unit ``SHARED`` (buying, PT, max 500.0),
            owned REP 60 % / OWN2 40 %, REP responsible
OWN2        no user; owns 40 % of SHARED
OMIE        ``rita`` (risk officer), ``marta`` (market operator), ``sofia`` (system
            operator)
==========  =======================================================================
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable
from datetime import UTC, datetime
from fractions import Fraction
from math import ceil
from typing import Any, TypeVar

from engine.commands import CreateContract, NewOrder, OpenContracts
from engine.config import EngineConfig
from engine.contracts import HOUR_MS, ContractSpec
from engine.engine import Engine
from engine.events import OrderReport, Reject, Trade
from engine.model import Exec, Side, Validity
from risk.events import RiskNotice, ThrottlingStatus
from risk.guard import RiskGuard
from risk.refdata import load

BUY = Side.BUY
SELL = Side.SELL
NON = Exec.NON
IOC = Exec.IOC
FOK = Exec.FOK
GFS = Validity.GFS
GTD = Validity.GTD

SECOND = 1000
MINUTE = 60 * SECOND


def utc_ms(year: int, month: int, day: int, hour: int = 0, minute: int = 0,
           second: int = 0) -> int:
    return int(datetime(year, month, day, hour, minute, second, tzinfo=UTC).timestamp()
               * 1000)


# Trading day: Thursday 2027-01-14 (local).  T0 = 22:00 local (CET) = 21:00 UTC, when trading
# for the delivery day 2027-01-15 opens (A1§2).  CID is delivered 09:00-10:00 local.
T0 = utc_ms(2027, 1, 14, 21)
TRADING_DAY = "2027-01-14"
CID = "PH-20270115-10"
CID2 = "PH-20270115-11"
# The four quarter-hours of CID's hour (09:00-10:00 local): QH periods 37..40.
QH_OF_CID = ("QH-20270115-037", "QH-20270115-038", "QH-20270115-039", "QH-20270115-040")
# Contracts that tests close to start new rounds (R45.g): deliveries 01:00-05:00 local.
FILLERS = ("PH-20270115-02", "PH-20270115-03", "PH-20270115-04", "PH-20270115-05",
           "PH-20270115-06")


def gate_closure(contract_id: str) -> int:
    """One hour before delivery (the 2018 text's gate closure)."""
    return ContractSpec.parse(contract_id).start - HOUR_MS


# ----------------------------------------------------------------------------- documents


def agent(code: str, guarantees: str = "0", **kw: Any) -> dict[str, Any]:
    d: dict[str, Any] = {"code": code, "name": f"Agent {code}",
                         "registered_from": "2018-01-01", "guarantees": guarantees}
    d.update(kw)
    return d


def user(uid: str, agent_code: str, *roles: str) -> dict[str, Any]:
    return {"id": uid, "agent": agent_code, "roles": list(roles or ("trader",))}


def unit(code: str, kind: str, responsible: str, owners: Iterable[tuple[str, str]] = (),
         max_energy: str = "500.0", area: str = "ES", **kw: Any) -> dict[str, Any]:
    own = list(owners) or [(responsible, "100")]
    d: dict[str, Any] = {"code": code, "kind": kind, "area": area, "max_energy": max_energy,
                         "responsible": responsible,
                         "owners": [{"agent": a, "share": s} for a, s in own],
                         "valid_from": "2018-01-01"}
    d.update(kw)
    return d


def staff() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The operator agent and its officers."""
    return ([agent("OMIE", products=[])],
            [user("rita", "OMIE", "risk_officer"), user("marta", "OMIE", "market_operator"),
             user("sofia", "OMIE", "system_operator")])


def std_doc(buyer_guarantees: str = "100000.00", seller_guarantees: str = "100000.00",
            rep_guarantees: str = "100000.00", own2_guarantees: str = "100000.00",
            **rate_limits: Any) -> dict[str, Any]:
    st_agents, st_users = staff()
    doc: dict[str, Any] = {
        "agents": [
            agent("BUYER", buyer_guarantees),
            agent("SELLER", seller_guarantees),
            agent("REP", rep_guarantees, represents=["OWN2"]),
            agent("OWN2", own2_guarantees),
            *st_agents,
        ],
        "users": [user("bea", "BUYER"), user("sam", "SELLER"), user("rui", "REP"),
                  *st_users],
        "units": [
            unit("BUYU", "buy", "BUYER"),
            unit("SELLU", "sell", "SELLER"),
            unit("SHARED", "buy", "REP", [("REP", "60"), ("OWN2", "40")], area="PT"),
        ],
    }
    if rate_limits:
        doc["rate_limits"] = rate_limits
    return doc


def set_agent(doc: dict[str, Any], code: str, **fields: Any) -> dict[str, Any]:
    """A copy of ``doc`` with fields of one agent replaced."""
    d = copy.deepcopy(doc)
    for a in d["agents"]:
        if a["code"] == code:
            a.update(fields)
            return d
    raise KeyError(code)


def set_unit(doc: dict[str, Any], code: str, **fields: Any) -> dict[str, Any]:
    d = copy.deepcopy(doc)
    for u in d["units"]:
        if u["code"] == code:
            u.update(fields)
            return d
    raise KeyError(code)


# ----------------------------------------------------------------------------- the core


class Core:
    """An engine with a RiskGuard, open contracts, a clock moving one second per command
    (or to an explicit instant) and the log of events.  Every contract is created; all are
    opened unless ``open_only`` lists the ones to open."""

    def __init__(self, doc: dict[str, Any], *contracts: str, start: int = T0,
                 config: EngineConfig | None = None, fillers: bool = True,
                 open_only: Iterable[str] | None = None) -> None:
        self.doc = doc
        self.engine = Engine(config)
        self.guard = RiskGuard.install(self.engine, load(json.loads(json.dumps(doc))))
        self.users = {u["id"]: u["agent"] for u in doc.get("users", [])}
        self.now = start
        self.log: list[Any] = []
        self.last: list[Any] = []
        ids = list(contracts or (CID,))
        if fillers:
            ids += [f for f in FILLERS if f not in ids]
        for cid in ids:
            self.send(CreateContract(cid, gate_closure(cid)), at=start)
        self.send(OpenContracts(tuple(ids if open_only is None else open_only)), at=start)

    def send(self, cmd: Any, at: int | None = None) -> list[Any]:
        self.now = self.now + SECOND if at is None else at
        self.last = self.engine.apply(cmd, self.now)
        self.log.extend(self.last)
        return self.last

    def new(self, usr: str, unit_code: str, side: Side, price: int, qty: int,
            contract: str = CID, agent_code: str | None = None, at: int | None = None,
            **kw: Any) -> list[Any]:
        """Send a NewOrder for ``usr`` (its agent unless ``agent_code``)."""
        ag = agent_code if agent_code is not None else self.users.get(usr, "?")
        return self.send(NewOrder(user=usr, agent=ag, unit=unit_code, contract=contract,
                                  side=side, price=price, qty=qty, **kw), at=at)

    # -- queries

    def acct(self, agent_code: str) -> dict[str, Any]:
        return self.guard.account(agent_code)

    def limit(self, agent_code: str) -> int:
        return int(self.guard.account(agent_code)["operative_limit"])

    def debtor(self, agent_code: str) -> int:
        return int(self.guard.account(agent_code)["debtor_orders"])

    def obligations(self, agent_code: str) -> int:
        return int(self.guard.account(agent_code)["obligations"])

    def order_id(self, events: list[Any] | None = None) -> int:
        """The id of the order the events created (the first order report)."""
        reps = reports(self.last if events is None else events)
        assert reps, f"no order report in {self.last!r}"
        return reps[0].order_id

    def live(self, order_id: int) -> Any:
        return self.engine.orders.get(order_id)

    def close_round(self, at: int | None = None) -> list[Any]:
        """Close the next filler contract: the current round ends, the next starts (R45.g)."""
        from engine.commands import CloseContracts

        open_fillers = [f for f in FILLERS
                        if self.engine.contracts[f].state.value == "TRADE"]
        assert open_fillers, "no filler contract left to close"
        return self.send(CloseContracts((open_fillers[0],)), at=at)


# ----------------------------------------------------------------------------- filters

E = TypeVar("E")


def of(events: Iterable[Any], kind: type[E]) -> list[E]:
    return [e for e in events if isinstance(e, kind)]


def rejects(events: Iterable[Any]) -> list[Reject]:
    return of(events, Reject)


def reject_codes(events: Iterable[Any]) -> list[str]:
    return [r.code for r in rejects(events)]


def only_reject(events: Iterable[Any]) -> Reject:
    rs = rejects(events)
    assert len(rs) == 1, f"expected one rejection, got {list(events)!r}"
    return rs[0]


def reports(events: Iterable[Any], action: str | None = None) -> list[OrderReport]:
    return [e for e in of(events, OrderReport) if action is None or e.action == action]


def actions(events: Iterable[Any]) -> list[str]:
    return [r.action for r in reports(events)]


def trades(events: Iterable[Any]) -> list[Trade]:
    return of(events, Trade)


def notices(events: Iterable[Any], kind: str | None = None) -> list[RiskNotice]:
    return [e for e in of(events, RiskNotice) if kind is None or e.kind == kind]


def throttle_states(events: Iterable[Any]) -> list[str]:
    return [e.state for e in of(events, ThrottlingStatus)]


# ----------------------------------------------------------------------------- money


def pct(s: str) -> Fraction:
    """'5.11269632' -> Fraction(511269632, 10**10): a percentage string as a fraction."""
    return Fraction(s) / 100


def tax_factor(agent_doc: dict[str, Any]) -> Fraction:
    tax = agent_doc.get("tax", {})
    return (1 + pct(str(tax.get("electricity_tax", "0")))) * (1 + pct(str(tax.get("vat", "0"))))


def exact(price: int, qty: int, factor: Fraction = Fraction(1),
          share: Fraction = Fraction(1)) -> Fraction:
    """|price| × qty / 10 × taxes × share in cents of €, exactly (the platform holds every
    account exactly and rounds only for display: docs/risk.md)."""
    return Fraction(abs(price) * qty, 10) * factor * share


def charge(price: int, qty: int, factor: Fraction = Fraction(1),
           share: Fraction = Fraction(1)) -> int:
    """ceil(|price| × qty / 10 × taxes × share) in cents of € (price in cents of €/MWh, qty
    in tenths of MWh): the formula of docs/risk.md, computed with exact fractions."""
    return ceil(Fraction(abs(price) * qty, 10) * factor * share)
