"""Property tests: random command streams through the engine and the reference model.

Every command goes to :class:`engine.engine.Engine` and to the naive
:class:`reference_model.ReferenceModel`; after every command the two must agree on the
trades, the rejections, the orders that ended, every live order (remaining, visible, status,
price, revision, ...), the priority order of every side of every book, contract states and
the round.  The engine is also checked on its own after every command: book not crossed,
time priority inside each level, quantities conserved, trades at the resting order's price,
every change of an order reported, anonymous public events with consecutive sequence
numbers per contract, a public book (rebuilt from the deltas) equal to the real one, and the
same events and state hashes when the stream is replayed into a fresh engine (DESIGN rule 3).

Default run: 400 random streams of up to 60 commands (after up to 12 resting orders), in
10 to 20 seconds.  Longer runs::

    RONDA_HYPOTHESIS_PROFILE=ci pytest tests/test_engine_property.py     # 1000 x 80
    RONDA_HYPOTHESIS_PROFILE=long pytest tests/test_engine_property.py   # 5000 x 120
    RONDA_HYPOTHESIS_EXAMPLES=20000 RONDA_HYPOTHESIS_PROFILE=long pytest ...

A failing stream is shrunk (that can take minutes); the notes printed with the failure list
its commands, ready to paste into a regression test (see the end of this file).
"""

from __future__ import annotations

import itertools
import os
from typing import Any

from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st
from reference_model import ReferenceModel

from engine.commands import (
    Activate,
    CancelAgentOrders,
    CancelAll,
    CancelOrder,
    CloseContracts,
    CreateContract,
    Deactivate,
    EnterBasket,
    HibernateOrders,
    InterruptContracts,
    ModifyOrder,
    NewOrder,
    OpenContracts,
    ReactivateOrders,
    ResumeContracts,
    Tick,
)
from engine.config import EngineConfig
from engine.engine import Engine
from engine.events import (
    BookChange,
    ContractStateChanged,
    OrderReport,
    PublicTrade,
    Reject,
    RoundClosed,
    Trade,
)
from engine.model import BasketType, Exec, Side, Validity
from engine.states import OrderStatus

BUY, SELL = Side.BUY, Side.SELL
NON, IOC, FOK = Exec.NON, Exec.IOC, Exec.FOK
GFS, GTD = Validity.GFS, Validity.GTD

# ---------------------------------------------------------------------------- settings

PROFILE = os.environ.get("RONDA_HYPOTHESIS_PROFILE", "default")
if PROFILE == "long":
    MAX_EXAMPLES, MAX_STEPS = 5_000, 120
elif PROFILE == "ci":
    MAX_EXAMPLES, MAX_STEPS = 1_000, 80
else:
    MAX_EXAMPLES, MAX_STEPS = 400, 60
MAX_EXAMPLES = int(os.environ.get("RONDA_HYPOTHESIS_EXAMPLES", MAX_EXAMPLES))
SETTINGS = settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    report_multiple_bugs=False,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# ---------------------------------------------------------------------------- the market

T0 = 1_800_000_000_000  # 2027-01-15 09:00 local time
CONTRACTS = ("PH-20270115-20", "PH-20270115-21", "PH-20270115-22")
CLOSE_AT = {c: T0 + 2_000 + 500 * i for i, c in enumerate(CONTRACTS)}
AGENTS = ("agent-1", "agent-2", "agent-3")
USERS = {a: (f"{a}-user-a", f"{a}-user-b") for a in AGENTS}
UNITS = {a: f"{a}-unit" for a in AGENTS}
AGENT_USERS = [(a, u) for a in AGENTS for u in USERS[a]]
PRIVATE_NAMES = set(AGENTS) | {u for us in USERS.values() for u in us} | set(UNITS.values())
# prices around 100 on two contracts and around 0 (negative prices too) on the third
PRICE_CENTER = {CONTRACTS[0]: 100, CONTRACTS[1]: 100, CONTRACTS[2]: 0}
CFG = EngineConfig(
    name="property", price_min=-5, price_max=105, qty_min=1, qty_max=20, max_basket=4
)
PUBLIC_EVENTS = (BookChange, PublicTrade, ContractStateChanged, RoundClosed)
STEPS = st.integers(1, MAX_STEPS)
WARM_UP = st.integers(0, 12)


def new_model() -> ReferenceModel:
    return ReferenceModel(CFG.price_min, CFG.price_max, CFG.qty_min, CFG.qty_max,
                          CFG.max_basket)


def engine_order_state(o: Any) -> tuple[Any, ...]:
    return (
        o.contract, o.agent, o.user, o.unit, o.side.value, o.status.value, o.price,
        o.remaining, o.visible, o.revision, o.filled, o.peak, o.incr, o.exec.value,
        o.validity.value, o.expiry, o.basket, o.coid,
    )


def model_order_state(o: Any) -> tuple[Any, ...]:
    return (
        o.contract, o.agent, o.user, o.unit, o.side.value, o.status, o.price,
        o.remaining, o.visible, o.revision, o.filled, o.peak, o.incr, o.exec.value,
        o.validity.value, o.expiry, o.basket, o.coid,
    )


def engine_change_key(o: Any) -> tuple[Any, ...]:
    """What, if it changes, must be reported to the owner (R46.2.12)."""
    return (o.status, o.price, o.remaining, o.visible, o.revision, o.filled, o.seq)


# ---------------------------------------------------------------------------- the harness


class Harness:
    """Drives one command stream through both, checking everything after every command."""

    def __init__(self) -> None:
        self.engine = Engine(CFG)
        self.model = new_model()
        self.ts = T0
        self.log: list[tuple[Any, int]] = []
        self.outputs: list[list[Any]] = []
        self.hashes: list[str] = []
        self.pub_seq: dict[str, int] = {}
        self.pub_book: dict[str, dict[int, tuple[str, int, int]]] = {}
        self.pub_entries: set[tuple[str, int]] = set()  # every public entry id ever shown
        self.entered: dict[int, int] = {}  # filled so far + open quantity it was given
        self.traded: dict[int, int] = {}
        self.final_filled: dict[int, int] = {}
        self.side_of: dict[int, str] = {}
        self.resting_price: dict[int, int] = {}  # from the order reports
        self.coids = 0
        self.last_coid: str | None = None
        self.first = 0

    def setup(self) -> None:
        for c in CONTRACTS:
            self.step(CreateContract(c, CLOSE_AT[c]))
        self.step(OpenContracts(CONTRACTS[:2]))

    def run(self, commands: list[tuple[Any, int]]) -> None:
        self.setup()
        self.first = len(self.log)
        for cmd, dt in commands:
            self.step(cmd, dt)
        self.check_replay()

    def step(self, cmd: Any, dt: int = 0) -> None:
        self.ts += dt
        ts = self.ts
        e = self.engine
        before = {oid: engine_change_key(o) for oid, o in e.orders.items()}
        pre_remaining = {oid: o.remaining for oid, o in e.orders.items()}
        first_new_id = e.next_order
        events = e.apply(cmd, ts)
        out = self.model.apply(cmd, ts)
        self.log.append((cmd, ts))
        self.outputs.append(list(events))
        self.hashes.append(e.state_hash())
        ctx = f"step {len(self.log)}: {cmd!r} at T0+{ts - T0}\nevents: {events!r}"
        self.compare(events, out, ctx)
        self.check_events(cmd, events, before, pre_remaining, first_new_id, ctx)
        self.check_books(ctx)

    # -- engine against the reference model

    def compare(self, events: list[Any], out: Any, ctx: str) -> None:
        e, m = self.engine, self.model
        trades_e = [
            (t.contract, t.round, t.price, t.qty, t.buy_order, t.sell_order, t.aggressor)
            for t in events if isinstance(t, Trade)
        ]
        trades_m = [
            (t.contract, t.round, t.price, t.qty, t.buy_order, t.sell_order, t.aggressor)
            for t in out.trades
        ]
        assert trades_e == trades_m, f"trades differ\n{ctx}"
        codes = [r.code for r in events if isinstance(r, Reject)]
        assert len(codes) == len(out.rejects) and all(
            c in ok for c, ok in zip(codes, out.rejects, strict=True)
        ), f"rejections differ: engine {codes}, reference {out.rejects}\n{ctx}"
        finished_e: dict[int, tuple[str, str | None]] = {}
        for r in events:
            if isinstance(r, OrderReport) and r.status == "INACTIVE":
                finished_e[r.order_id] = (r.action, r.code)
        assert finished_e == out.finished, (
            f"ended orders differ: engine {finished_e}, reference {out.finished}\n{ctx}"
        )
        live_e = {oid: engine_order_state(o) for oid, o in e.orders.items()}
        live_m = {oid: model_order_state(o) for oid, o in m.orders.items()}
        if live_e != live_m:
            diff = {
                oid: (live_e.get(oid), live_m.get(oid))
                for oid in live_e.keys() | live_m.keys() if live_e.get(oid) != live_m.get(oid)
            }
            raise AssertionError(f"live orders differ (engine, reference): {diff}\n{ctx}")
        assert e.contracts.keys() == m.contracts.keys(), ctx
        for cid in e.contracts:
            for side in (BUY, SELL):
                be = [o.id for o in e.contracts[cid].book.resting(side)]
                bm = m.book_ids(cid, side)
                assert be == bm, f"{cid} {side} priority: engine {be}, reference {bm}\n{ctx}"
            assert e.contracts[cid].state.value == m.contracts[cid].state, ctx
        assert e.round == m.round, ctx
        assert e.next_order == m.next_id, f"order ids: {e.next_order} != {m.next_id}\n{ctx}"

    # -- the engine's events on their own

    def check_events(
        self,
        cmd: Any,
        events: list[Any],
        before: dict[int, tuple[Any, ...]],
        pre_remaining: dict[int, int],
        first_new_id: int,
        ctx: str,
    ) -> None:
        e = self.engine
        reports: dict[int, OrderReport] = {}
        trades: dict[int, Trade] = {}
        first_report: dict[int, OrderReport] = {}
        rejected = False
        for ev in events:
            if isinstance(ev, PUBLIC_EVENTS):
                # DESIGN rule 8: no agent, user or unit in public data
                assert not any(
                    f in ("user", "agent", "unit") or f.endswith(("_user", "_agent", "_unit"))
                    for f in type(ev)._fields
                ), ctx
                assert not any(isinstance(v, str) and v in PRIVATE_NAMES for v in ev), (
                    f"private name in a public event {ev!r}\n{ctx}"
                )
            if isinstance(ev, (BookChange, PublicTrade)):
                n = self.pub_seq.get(ev.contract, 0) + 1
                assert ev.seq == n, f"public seq of {ev.contract}: {ev.seq}, expected {n}\n{ctx}"
                self.pub_seq[ev.contract] = n
            if isinstance(ev, BookChange):
                pb = self.pub_book.setdefault(ev.contract, {})
                if ev.action == "ADD":
                    # a new entry id for every instantiation, never reused
                    assert (ev.contract, ev.entry) not in self.pub_entries and ev.qty > 0, ctx
                    self.pub_entries.add((ev.contract, ev.entry))
                    pb[ev.entry] = (ev.side, ev.price, ev.qty)
                elif ev.action == "UPDATE":
                    side, price, _ = pb[ev.entry]
                    assert (side, price) == (ev.side, ev.price) and ev.qty > 0, ctx
                    pb[ev.entry] = (side, price, ev.qty)
                else:
                    assert ev.action == "REMOVE" and ev.entry in pb, ctx
                    del pb[ev.entry]
            elif isinstance(ev, Trade):
                assert ev.qty > 0, ctx
                assert ev.buy_agent != "" and ev.sell_agent != "", ctx
                passive = ev.sell_order if ev.aggressor == "BUY" else ev.buy_order
                # R47.1: every trade at the price of the resting order
                assert self.resting_price.get(passive) == ev.price, (
                    f"trade {ev!r} not at the resting order's price"
                    f" {self.resting_price.get(passive)}\n{ctx}"
                )
                for oid, side in ((ev.buy_order, "BUY"), (ev.sell_order, "SELL")):
                    self.traded[oid] = self.traded.get(oid, 0) + ev.qty
                    assert self.side_of.setdefault(oid, side) == side, ctx
                trades[ev.trade_id] = ev
            elif isinstance(ev, PublicTrade):
                t = trades[ev.trade_id]
                assert (t.contract, t.price, t.qty, t.aggressor) == (
                    ev.contract, ev.price, ev.qty, ev.aggressor), ctx
                # a public trade is also the book delta of the entry it hit
                pb = self.pub_book.setdefault(ev.contract, {})
                side, price, shown = pb[ev.entry]
                assert price == ev.price and shown - ev.qty == ev.left >= 0, (
                    f"public trade {ev!r} against entry {pb[ev.entry]}\n{ctx}")
                if ev.left:
                    pb[ev.entry] = (side, price, ev.left)
                else:
                    del pb[ev.entry]
            elif isinstance(ev, OrderReport):
                reports[ev.order_id] = ev
                first_report.setdefault(ev.order_id, ev)
                if ev.status == "ACTIVE":
                    self.resting_price[ev.order_id] = ev.price
                else:
                    self.resting_price.pop(ev.order_id, None)
            elif isinstance(ev, Reject):
                rejected = True
        # quantity ledger: what each order id was given to execute.  New order ids are
        # told apart by their client order ids (unique inside a command by construction).
        new_ids = list(range(first_new_id, e.next_order))
        members: list[NewOrder] = []
        if isinstance(cmd, NewOrder):
            members = [cmd]
        elif isinstance(cmd, EnterBasket):
            members = list(cmd.orders)
        by_coid = {m.client_order_id: m for m in members}
        for oid in new_ids:
            assert oid in first_report, f"order {oid} unreported\n{ctx}"
        if len(by_coid) == len(members) and None not in by_coid:
            for oid in new_ids:
                self.entered[oid] = by_coid[first_report[oid].client_order_id].qty
        elif new_ids:
            assert len(new_ids) == len(members), f"give the orders client order ids\n{ctx}"
            for oid, m in zip(new_ids, members, strict=True):
                self.entered[oid] = m.qty
        if isinstance(cmd, ModifyOrder) and not rejected:
            oid = cmd.order_id
            if cmd.qty is not None:  # None kept the open quantity: nothing entered
                self.entered[oid] += cmd.qty - pre_remaining[oid]
        # every new order id is reported; every change of an order is reported (R46.2.12)
        after = {oid: engine_change_key(o) for oid, o in e.orders.items()}
        for oid in before.keys() | after.keys():
            if before.get(oid) != after.get(oid):
                assert oid in reports, f"order {oid} changed without a report\n{ctx}"
        for oid, rep in reports.items():
            o = e.orders.get(oid)
            if o is not None:
                assert (rep.status, rep.price, rep.visible, rep.hidden, rep.filled,
                        rep.revision) == (o.status.value, o.price, o.visible,
                                          o.remaining - o.visible, o.filled, o.revision), (
                    f"last report of {oid} is not its state: {rep!r} vs {o!r}\n{ctx}")
            else:
                # an order that ended: quantity conserved, nothing left open
                assert rep.status == "INACTIVE" and rep.visible == rep.hidden == 0, ctx
                traded = self.traded.get(oid, 0)
                assert rep.filled == traded, ctx
                left = self.entered[oid] - traded
                if rep.action == "FILLED":
                    assert left == 0, f"order {oid} FILLED with {left} left\n{ctx}"
                else:
                    assert left > 0, f"order {oid} {rep.action} with {left} left\n{ctx}"
                self.final_filled[oid] = rep.filled
                self.side_of.setdefault(oid, rep.side)
        # quantity conserved for live orders: given = filled + remaining
        for oid, o in e.orders.items():
            self.side_of.setdefault(oid, o.side.value)
            assert o.filled == self.traded.get(oid, 0), ctx
            assert self.entered[oid] == o.filled + o.remaining, (
                f"order {oid}: given {self.entered[oid]} != filled {o.filled} + remaining"
                f" {o.remaining}\n{ctx}")
        filled = dict(self.final_filled)
        filled.update({oid: o.filled for oid, o in e.orders.items()})
        bought = sum(q for oid, q in filled.items() if self.side_of[oid] == "BUY")
        sold = sum(q for oid, q in filled.items() if self.side_of[oid] == "SELL")
        assert bought == sold == sum(self.traded.values()) // 2, ctx

    def check_books(self, ctx: str) -> None:
        e = self.engine
        resting_ids: list[int] = []
        for cid, c in e.contracts.items():
            book = c.book
            bids, asks = book.resting(BUY), book.resting(SELL)
            if bids and asks:
                assert bids[0].price < asks[0].price, f"{cid} crossed at rest\n{ctx}"
            for side, rows in ((BUY, bids), (SELL, asks)):
                assert book.best(side) == (rows[0].price if rows else None), ctx
                for a, b in itertools.pairwise(rows):
                    better = a.price > b.price if side is BUY else a.price < b.price
                    # price priority, then time priority inside the level
                    assert better or (a.price == b.price and a.seq < b.seq), (
                        f"{cid} {side}: {a!r} before {b!r}\n{ctx}")
                for o in rows:
                    assert o.live and o.status is OrderStatus.ACTIVE, ctx
                    assert o.contract == cid and o.side is side, ctx
                    assert 0 < o.visible <= o.remaining, ctx
                    if o.peak:
                        assert o.visible <= o.peak, ctx
                    else:
                        assert o.visible == o.remaining, ctx
                    assert CFG.price_min <= o.price <= CFG.price_max, ctx
                    assert e.orders.get(o.id) is o, ctx
                    resting_ids.append(o.id)
            public = {
                o.pub: (o.side.value, o.price, o.visible) for o in bids + asks
            }
            assert self.pub_book.get(cid, {}) == public, (
                f"{cid}: public book {self.pub_book.get(cid)} != {public}\n{ctx}")
        assert len(resting_ids) == len(set(resting_ids)), ctx
        active = {oid for oid, o in e.orders.items() if o.status is OrderStatus.ACTIVE}
        assert set(resting_ids) == active, ctx
        for o in e.orders.values():
            if o.status is OrderStatus.HIBERNATED:
                assert not o.live, ctx

    def check_replay(self) -> None:
        """DESIGN rule 3: the same commands give the same events and states."""
        fresh = Engine(CFG)
        for i, ((cmd, ts), events, h) in enumerate(
            zip(self.log, self.outputs, self.hashes, strict=True)
        ):
            assert fresh.apply(cmd, ts) == events, f"replay: events differ at step {i + 1}"
            assert fresh.state_hash() == h, f"replay: state hash differs at step {i + 1}"


# ---------------------------------------------------------------------------- strategies


_INTS: dict[tuple[int, int], st.SearchStrategy[int]] = {}


def num(draw: Any, lo: int, hi: int) -> int:
    """An integer in [lo, hi], shrinking to lo (strategies built once: drawing is the
    cost that matters here)."""
    s = _INTS.get((lo, hi))
    if s is None:
        s = _INTS[lo, hi] = st.integers(lo, hi)
    return int(draw(s))


def pick(draw: Any, seq: Any) -> Any:
    """One element of a sequence, shrinking to the first."""
    return seq[num(draw, 0, len(seq) - 1)]


def rare(draw: Any, tenths: int) -> bool:
    """True with probability tenths/10; shrinks to False."""
    return num(draw, 0, 9) >= 10 - tenths


def very_rare(draw: Any) -> bool:
    """True one time in twenty; shrinks to False."""
    return num(draw, 0, 19) == 19


def draw_contract(draw: Any, h: Harness, states: tuple[str, ...]) -> str:
    """A contract, usually one in one of ``states`` (so that most commands do something)."""
    fitting = [c for c in CONTRACTS if h.model.contracts[c].state in states]
    # fitting ones 9 times in 10, the first of them twice as often (deeper books)
    return str(pick(draw, [fitting[0], *fitting] * 3 + list(CONTRACTS) if fitting
                     else CONTRACTS))


def draw_contracts(draw: Any, h: Harness, states: tuple[str, ...]) -> tuple[str, ...]:
    first = draw_contract(draw, h, states)
    if very_rare(draw):
        return (first, pick(draw, [c for c in CONTRACTS if c != first]))
    return (first,)


def draw_params(draw: Any, side: Side, contract: str, now: int, fok: bool = False
                ) -> dict[str, Any]:
    """Price, quantity and conditions of an order: valid, except now and then for one
    defect (so that every acceptance check is exercised without drowning the book)."""
    price = PRICE_CENTER[contract] + num(draw, -2, 2)
    qty = num(draw, 1, 6)
    peak = incr = 0
    kind = 0 if fok else num(draw, 0, 9)
    if kind >= 6:  # iceberg (A1§3.4)
        peak = min(qty, num(draw, 1, 3))
        if kind >= 8:  # with a price increment (A1§3.4.1)
            incr = num(draw, 1, 2) * (-1 if side is BUY else 1)
    x = num(draw, 0, 9)
    exec_ = NON if peak or x < 5 else IOC if x < 7 else FOK
    if fok:
        exec_ = FOK
    if fok:
        # members of a linked basket: small and through the middle, so that whole
        # baskets can fill (and compete for the same liquidity)
        through = num(draw, 1, 4)
        price = PRICE_CENTER[contract] + (through if side is BUY else -through)
        qty = num(draw, 1, 2)
    elif exec_ is not NON and not rare(draw, 3):
        # immediate orders mostly aim to trade: a price through the middle, a small size
        through = num(draw, 0, 3)
        price = PRICE_CENTER[contract] + (through if side is BUY else -through)
        qty = num(draw, 1, 3)
    validity, expiry = GFS, None
    g = num(draw, 0, 99)
    if g >= 80:  # good till date (A1§4.2)
        validity = GTD
        expiry = now + pick(draw, (2, 5, 10, 30, 80, 200, 500))
    if 10 <= g < 20:  # one defect
        defect = num(draw, 0, 9)
        if defect == 0:
            price = pick(draw, (CFG.price_min - 1, CFG.price_min, CFG.price_max,
                                CFG.price_max + 1))
        elif defect == 1:
            qty = pick(draw, (0, 20, 21))
        elif defect == 2:
            peak = qty + 1
        elif defect == 3:
            incr = -incr if incr else 1
        elif defect == 4:
            peak = peak or 1
            exec_ = pick(draw, (IOC, FOK))
        elif defect == 5:
            validity = GTD
            expiry = pick(draw, (None, now, now - 1, CLOSE_AT[contract], CLOSE_AT[contract] - 1))
        elif defect == 6:
            expiry = now + 10
        elif defect == 7:
            peak, incr = 1, (-5 if side is BUY else 5)
        elif defect == 8:
            exec_ = NON
        else:
            peak = qty
    return dict(price=price, qty=qty, exec=exec_, validity=validity, expiry=expiry,
                peak=peak, incr=incr)


def draw_new(draw: Any, h: Harness, now: int, agent: str, user: str, fok: bool = False,
             like: NewOrder | None = None) -> NewOrder:
    """A new order; ``like``: on the same contract and side as that one."""
    if like is None:
        contract = draw_contract(draw, h, ("TRADE",))
        side = pick(draw, (BUY, SELL))
    else:
        contract, side = like.contract, like.side
    p = draw_params(draw, side, contract, now, fok)
    flags = num(draw, 0, 39)
    hibernated = flags == 39  # entered inactive
    if h.last_coid is not None and flags == 38:  # a client order id used again
        coid = h.last_coid
    else:
        h.coids += 1
        coid = f"c{h.coids}"
    h.last_coid = coid
    return NewOrder(user, agent, UNITS[agent], contract, side, client_order_id=coid,
                    hibernated=hibernated, **p)


def draw_order_ref(draw: Any, h: Harness, statuses: tuple[str, ...] = ("ACTIVE", "HIBERNATED")
                   ) -> tuple[int, str]:
    """An order id and the agent that acts on it: usually a live order and its owner."""
    m = h.model
    live = sorted(oid for oid, o in m.orders.items() if o.status in statuses)
    if not live:
        live = sorted(m.orders)
    x = num(draw, 0, 19)
    if live and x < 18:
        oid = pick(draw, live)
        agent = m.orders[oid].agent
        if very_rare(draw):
            agent = pick(draw, AGENTS)
        return oid, agent
    if m.next_id > 1 and x < 19:
        return num(draw, 1, m.next_id - 1), pick(draw, AGENTS)
    return 999, pick(draw, AGENTS)


def draw_agent(draw: Any, h: Harness, status: str) -> str:
    """An agent, usually one that has orders in ``status``."""
    having = sorted({o.agent for o in h.model.orders.values() if o.status == status})
    if having and not very_rare(draw):
        return str(pick(draw, having))
    return str(pick(draw, AGENTS))


@st.composite
def commands(draw: Any, h: Harness) -> tuple[Any, int]:
    """One command of any kind, drawn with the reference model's state at hand."""
    dt = pick(draw, (0, 0, 1, 3, 10, 25))
    now = h.ts + dt
    agent, user = pick(draw, AGENT_USERS)
    k = num(draw, 0, 99)
    cmd: Any
    if k < 36:
        cmd = draw_new(draw, h, now, agent, user)
    elif k < 44:
        kind = pick(draw, (BasketType.NONE, BasketType.VALID, BasketType.LINKED))
        size = num(draw, 1, 3)
        if very_rare(draw):
            size = pick(draw, (0, 4, 5))
        fok = kind is BasketType.LINKED
        same = rare(draw, 4)  # all on one contract and side: they compete
        first = draw_new(draw, h, now, agent, user, fok=fok) if size else None
        members = tuple(
            [first] + [draw_new(draw, h, now, agent, user, fok=fok,
                                like=first if same else None) for _ in range(size - 1)]
        ) if first is not None else ()
        if kind is BasketType.NONE:
            # keep client order ids unique inside a NONE basket, so that the test can
            # tell its members apart in the engine's answer
            seen: set[str | None] = set()
            fixed = []
            for mb in members:
                if mb.client_order_id in seen:
                    h.coids += 1
                    mb = NewOrder(**{**_fields_of(mb), "client_order_id": f"c{h.coids}"})
                seen.add(mb.client_order_id)
                fixed.append(mb)
            members = tuple(fixed)
        cmd = EnterBasket(user, agent, kind, members)
    elif k < 56:
        oid, agent = draw_order_ref(draw, h, ("ACTIVE",) if not very_rare(draw)
                                    else ("HIBERNATED",))
        o = h.model.orders.get(oid)
        side = o.side if o is not None else BUY
        contract = o.contract if o is not None else CONTRACTS[0]
        rev = o.revision if o is not None else 1
        if very_rare(draw):
            rev += pick(draw, (-1, 1))
        p = draw_params(draw, side, contract, now)
        if draw(st.integers(0, 3)) == 0:
            p["qty"] = None  # keep the open quantity it has then (R46.2.6.1)
        how = draw(st.integers(0, 9))
        if how < 7:  # the validity left out: the order's own (R46.2.6)
            p["validity"], p["expiry"] = None, None
        elif how < 9 and o is not None:  # the order's own, given
            p["validity"], p["expiry"] = o.validity, o.expiry
        # else as drawn: refused unless it is the order's (MODIFY_CHANGES_FIXED_FIELD)
        cmd = ModifyOrder(pick(draw, USERS[agent]), agent, oid, rev, **p)
    elif k < 61:
        oid, agent = draw_order_ref(draw, h)
        cmd = CancelOrder(USERS[agent][0], agent, oid)
    elif k < 63:
        scope = pick(draw, ("user", "agent"))
        if very_rare(draw):
            scope = "everything"
        cmd = CancelAll(user, agent, scope, pick(draw, (None, *CONTRACTS)))
    elif k < 69:
        if rare(draw, 5):
            ids = []
            for _ in range(num(draw, 1, 2)):
                oid, agent = draw_order_ref(draw, h, ("ACTIVE",))
                ids.append(oid)
            cmd = Deactivate(USERS[agent][0], agent, tuple(ids))
        else:
            agent = draw_agent(draw, h, "ACTIVE")
            cmd = Deactivate(USERS[agent][1], agent, None, pick(draw, (None, None, *CONTRACTS)))
    elif k < 77:
        if rare(draw, 4):
            ids = []
            for _ in range(num(draw, 1, 2)):
                oid, agent = draw_order_ref(draw, h, ("HIBERNATED",))
                ids.append(oid)
            cmd = Activate(USERS[agent][0], agent, tuple(ids))
        else:
            agent = draw_agent(draw, h, "HIBERNATED")
            cmd = Activate(USERS[agent][1], agent, None, pick(draw, (None, None, *CONTRACTS)))
    elif k < 81:
        cmd = InterruptContracts(draw_contracts(draw, h, ("TRADE",)))
    elif k < 86:
        cmd = ResumeContracts(draw_contracts(draw, h, ("INT",)))
    elif k < 87:
        cmd = CloseContracts(draw_contracts(draw, h, ("UPC", "TRADE", "INT")))
    elif k < 89:
        cmd = OpenContracts(draw_contracts(draw, h, ("UPC",)))
    elif k < 94:
        cmd = Tick()
        dt += pick(draw, (10, 50, 200))
        ahead = sorted(t for t in CLOSE_AT.values() if t > now)
        if ahead and very_rare(draw):
            # to a gate closure (just before, at, just after) with the contract still open:
            # the calendar's close comes later, if at all (R45.f, A1§4.1)
            dt = ahead[0] - h.ts + pick(draw, (0, -1, 1))
    elif k < 96:
        cmd = HibernateOrders(contract=pick(draw, (None, *CONTRACTS)),
                              agent=pick(draw, (None, *AGENTS)))
    elif k < 99:
        agents = None if rare(draw, 6) else (draw_agent(draw, h, "HIBERNATED"),)
        cmd = ReactivateOrders(draw_contracts(draw, h, ("TRADE",)), agents)
    else:
        cmd = CancelAgentOrders(agent)
    return cmd, dt


@st.composite
def resting_orders(draw: Any, h: Harness) -> NewOrder:
    """A passive NON order (bids at or below the middle, asks above): builds a book deep
    enough for fill-or-kill, linked baskets and icebergs to have something to meet."""
    agent = pick(draw, AGENTS)
    contract = pick(draw, CONTRACTS[:2] + CONTRACTS[:1])
    side = pick(draw, (BUY, SELL))
    away = num(draw, 0, 2)
    price = PRICE_CENTER[contract] + (-away if side is BUY else away + 1)
    qty = num(draw, 1, 6)
    peak = incr = 0
    kind = num(draw, 0, 9)
    if kind >= 6:
        peak = min(qty, num(draw, 1, 3))
        if kind >= 8:
            incr = num(draw, 1, 2) * (-1 if side is BUY else 1)
    h.coids += 1
    return NewOrder(USERS[agent][0], agent, UNITS[agent], contract, side, price, qty,
                    peak=peak, incr=incr, client_order_id=f"c{h.coids}")


def _fields_of(cmd: NewOrder) -> dict[str, Any]:
    return {f: getattr(cmd, f) for f in NewOrder.__dataclass_fields__}


# ---------------------------------------------------------------------------- the property


@SETTINGS
@given(st.data())
def test_engine_agrees_with_reference_model(data: st.DataObject) -> None:
    h = Harness()
    h.setup()
    for i in range(data.draw(WARM_UP, label="resting orders first")):
        cmd = data.draw(resting_orders(h), label=f"resting order {i + 1}")
        note(f"({cmd!r}, 0),")
        h.step(cmd)
    n = data.draw(STEPS, label="steps")
    for i in range(n):
        cmd, dt = data.draw(commands(h), label=f"command {i + 1}")
        note(f"({cmd!r}, {dt}),")
        h.step(cmd, dt)
    h.check_replay()


# ---------------------------------------------------------------------------- scenarios
# Hand-checked scenarios: they pin the reference model to the rules (and check the engine).

C0, C1 = CONTRACTS[0], CONTRACTS[1]
A1, A2, A3 = AGENTS[0], AGENTS[1], AGENTS[2]


def order(agent: str, side: Side, price: int, qty: int, contract: str = C0, **kw: Any
          ) -> NewOrder:
    return NewOrder(USERS[agent][0], agent, UNITS[agent], contract, side, price, qty, **kw)


def trades_of(h: Harness, step: int = -1) -> list[tuple[int, int, int, int]]:
    """(price, qty, buy order, sell order) of the trades of one command of ``run``."""
    events = h.outputs[h.first + step] if step >= 0 else h.outputs[step]
    return [(t.price, t.qty, t.buy_order, t.sell_order)
            for t in events if isinstance(t, Trade)]


def test_resting_iceberg_refills_and_trades_again() -> None:
    """A1§3.4: one trade per instantiation; the refill goes behind the level."""
    h = Harness()
    h.run([
        (order(A1, SELL, 100, 5, peak=2), 0),  # 1: iceberg 2 of 5
        (order(A2, SELL, 100, 1), 0),  # 2
        (order(A3, BUY, 100, 6), 0),  # 3
    ])
    # 2 from the first peak, then the plain order, then the refilled peak, then 1 more
    assert trades_of(h) == [(100, 2, 3, 1), (100, 1, 3, 2), (100, 2, 3, 1), (100, 1, 3, 1)]
    assert h.engine.orders == {}


def test_iceberg_increment_refills_at_a_new_price() -> None:
    """A1§3.4.1: each instantiation at the previous price plus the increment."""
    h = Harness()
    h.run([
        (order(A1, SELL, 100, 5, peak=2, incr=1), 0),  # 1: 2@100, 2@101, 1@102
        (order(A2, BUY, 101, 5), 0),  # 2
    ])
    assert trades_of(h) == [(100, 2, 2, 1), (101, 2, 2, 1)]
    o = h.engine.orders[1]
    assert (o.price, o.remaining, o.visible) == (102, 1, 1)
    assert h.engine.orders[2].remaining == 1


def test_aggressive_iceberg_shows_one_peak() -> None:
    h = Harness()
    h.run([
        (order(A1, SELL, 100, 3), 0),
        (order(A2, BUY, 100, 10, peak=4), 0),
    ])
    o = h.engine.orders[2]
    assert (o.remaining, o.visible) == (7, 4)


def test_fok_counts_hidden_iceberg_quantity() -> None:
    h = Harness()
    h.run([
        (order(A1, SELL, 100, 6, peak=2, incr=1), 0),  # 2@100, 2@101, 2@102
        (order(A2, BUY, 101, 5, exec=FOK), 0),  # only 4 up to 101: killed
        (order(A2, BUY, 102, 5, exec=FOK), 0),  # fills
    ])
    assert trades_of(h, -2) == []
    assert trades_of(h) == [(100, 2, 3, 1), (101, 2, 3, 1), (102, 1, 3, 1)]


def test_linked_basket_all_or_nothing() -> None:
    h = Harness()
    h.run([
        (order(A1, SELL, 100, 3), 0),
        (order(A1, SELL, 100, 3, contract=C1), 0),
        (EnterBasket(USERS[A2][0], A2, BasketType.LINKED, (
            order(A2, BUY, 100, 3, exec=FOK), order(A2, BUY, 100, 4, contract=C1, exec=FOK),
        )), 0),
        (EnterBasket(USERS[A2][0], A2, BasketType.LINKED, (
            order(A2, BUY, 100, 2, exec=FOK), order(A2, BUY, 100, 2, exec=FOK),
            order(A2, BUY, 100, 3, contract=C1, exec=FOK),
        )), 0),  # the two on C0 need 4 of 3: none
        (EnterBasket(USERS[A2][0], A2, BasketType.LINKED, (
            order(A2, BUY, 100, 2, exec=FOK), order(A2, BUY, 100, 1, exec=FOK),
            order(A2, BUY, 100, 3, contract=C1, exec=FOK),
        )), 0),
    ])
    assert trades_of(h, -3) == trades_of(h, -2) == []
    assert trades_of(h) == [(100, 2, 8, 1), (100, 1, 9, 1), (100, 3, 10, 2)]


def test_reactivation_is_a_new_order_in_arrival_order() -> None:
    """R46.2.7: reactivated in arrival order; a reactivated order may match at once."""
    h = Harness()
    h.run([
        (order(A1, BUY, 101, 2), 0),  # 1
        (order(A1, SELL, 99, 2, contract=C0), 0),  # 2 crosses 1
        (order(A1, BUY, 100, 2), 0),  # 3
        (InterruptContracts((C0,)), 1),
        (order(A1, SELL, 100, 1), 0),  # refused: INT
        (ResumeContracts((C0,)), 1),
        (order(A2, SELL, 100, 1), 0),  # 4 rests
        (Activate(USERS[A1][0], A1, None), 1),  # 3 comes back and buys 4 at 100
    ])
    assert trades_of(h, 1) == [(101, 2, 1, 2)]
    assert trades_of(h) == [(100, 1, 3, 4)]
    assert h.engine.orders[3].revision == 2


def test_many_dead_entries_in_one_level() -> None:
    """Lazy removal and compaction of a level (engine internals) under the same checks."""
    u = USERS[A1][0]
    cmds: list[tuple[Any, int]] = [
        (order(A1, SELL, 100, 1, client_order_id=f"s{i}"), 0) for i in range(80)
    ]
    cmds += [(CancelOrder(u, A1, i), 0) for i in range(1, 71) if i % 10 != 3]
    cmds += [(ModifyOrder(u, A1, i, 1, 100, 2), 0) for i in range(73, 80, 2)]
    cmds += [(Deactivate(u, A1, (i,)), 0) for i in (13, 33, 72, 74)]
    cmds += [(order(A2, BUY, 100, 7), 0), (Activate(u, A1, None), 0),
             (order(A2, BUY, 101, 20, exec=IOC), 0)]
    h = Harness()
    h.run(cmds)
    assert h.engine.orders == {}


def test_client_order_id_is_free_again_the_next_day() -> None:
    """Client order ids are unique per user and local day (protocol)."""
    h = Harness()
    next_midnight = T0 + 15 * 3_600_000  # T0 is 09:00 local time (CET)
    # a contract still trading the next day: the others close at T0 + 2-3 s (R45.f)
    late = "PH-20270116-10"
    h.run([
        (CreateContract(late, T0 + 23 * 3_600_000), 0),
        (OpenContracts((late,)), 0),
        (order(A1, BUY, 99, 1, late, client_order_id="x"), 0),
        (order(A1, BUY, 99, 1, late, client_order_id="x"), 0),  # refused: same day
        (order(A2, BUY, 99, 1, late, client_order_id="x"), 0),  # another user: fine
        (Tick(), next_midnight - T0 - 1),
        (order(A1, BUY, 99, 1, late, client_order_id="x"), 0),  # 23:59:59.999: refused
        (Tick(), 1),
        (order(A1, BUY, 99, 1, late, client_order_id="x"), 0),  # the next day: fine
    ])
    assert h.engine.next_order == 4


# ---------------------------------------------------------------------------- regressions
# Discrepancies found between the engine and the reference model, kept as plain tests.


def test_modification_keeps_the_arrival_order_for_reactivation() -> None:
    """Regression: a modification used to give the order a new *arrival* (not only a new
    time priority), so a "reactivate all" brought it back after orders that arrived later
    than it, and a modified basket member left its place in the basket (R46.2.7: by order
    of arrival on the platform, baskets kept in order; model.py: ``arrival`` is the first
    arrival).  Order 1 arrives first, is modified, both are hibernated and reactivated:
    1 must come back first, so it is first in the level."""
    u = USERS[A1][0]
    h = Harness()
    h.run([
        (order(A1, BUY, 100, 1), 0),  # 1
        (order(A1, BUY, 100, 1), 0),  # 2
        (ModifyOrder(u, A1, 1, 1, 100, 1), 0),  # 1 goes behind 2 in the level
        (Deactivate(u, A1, None), 0),
        (Activate(u, A1, None), 0),  # arrival order: 1, then 2
    ])
    assert [o.id for o in h.engine.contracts[C0].book.resting(BUY)] == [1, 2]


def test_modified_order_reactivated_in_arrival_order_trades_as_aggressor() -> None:
    """The same, where the order of reactivation decides who is the aggressor and so the
    price: 1 (buy 101) must rest first, and 2 (sell 99) then trade at 101."""
    u = USERS[A1][0]
    h = Harness()
    h.run([
        (order(A1, BUY, 101, 1), 0),  # 1 arrives first
        (order(A1, SELL, 99, 1, hibernated=True), 0),  # 2, entered hibernated
        (ModifyOrder(u, A1, 1, 1, 101, 1), 0),
        (Deactivate(u, A1, (1,)), 0),
        (Activate(u, A1, None), 0),
    ])
    assert trades_of(h) == [(101, 1, 1, 2)]


def test_cancellation_only_while_the_contract_trades() -> None:
    """A1§3.1, R46.2.7: the owner cancels (even a hibernated order) only while the contract
    is in TRADE; the operator's close cancels in any state."""
    u = USERS[A1][0]
    h = Harness()
    h.run([
        (order(A1, BUY, 99, 1), 0),  # 1
        (order(A1, BUY, 98, 1), 0),  # 2
        (InterruptContracts((C0,)), 0),
        (CancelOrder(u, A1, 1), 0),  # refused: INT
        (CancelAll(u, A1, "agent"), 0),  # nothing to cancel in TRADE
        (ResumeContracts((C0,)), 0),
        (CancelOrder(u, A1, 1), 0),  # hibernated, in TRADE: cancelled
        (CloseContracts((C0,)), 0),  # 2 cancelled by the close
    ])
    codes = [r.code for out in h.outputs[h.first:] for r in out if isinstance(r, Reject)]
    assert codes == ["CONTRACT_NOT_TRADING"]
    assert h.engine.orders == {}


def test_nothing_enters_changes_or_comes_back_after_gate_closure() -> None:
    """R45.f («FIN: ... No se admiten ofertas»), A1§4.1 (GFS «válidas hasta el cierre de la
    negociación del contrato»), A1§3.1: from its gate closure (CLOSE_AT, T0 + 2 s for C0)
    the contract takes nothing from the traders, though the calendar's close comes later;
    the owner may still take its orders out (a cancellation, cancel-all), as the close
    would.  The model and the engine agree on every refusal, and the orders left are the
    close's to cancel."""
    u = USERS[A1][0]
    close = CLOSE_AT[C0] - T0
    h = Harness()
    h.run([
        (order(A2, SELL, 100, 2), 0),  # 1
        (order(A1, BUY, 99, 1), 0),  # 2
        (order(A1, SELL, 101, 1, hibernated=True), 0),  # 3
        (order(A1, BUY, 100, 1), close - 1),  # 4: 1 ms before the gate closure: trades
        (order(A3, BUY, 100, 1), 1),  # at the gate closure: refused, no trade
        (ModifyOrder(u, A1, 2, 1, 100, 1), 0),  # refused
        (Activate(u, A1, (3,)), 0),  # refused
        (Activate(u, A1, None), 0),  # nothing reactivated
        (ReactivateOrders((C0,), None), 0),  # nothing reactivated
        (EnterBasket(u, A1, BasketType.VALID, (order(A1, BUY, 100, 1),
                                              order(A1, BUY, 99, 1, C1))), 0),  # refused
        (order(A3, BUY, 99, 1, C1), 0),  # 5: C1 closes later: accepted
        (CancelOrder(u, A1, 2), 0),  # taken out: still
        (CancelAll(u, A1, "agent"), 0),  # 3 taken out too
        (CloseContracts((C0,)), 10),  # 1 cancelled by the close; round 2
    ])
    assert trades_of(h, 3) == [(100, 1, 4, 1)]
    assert all(not trades_of(h, i) for i in range(4, 14))
    codes = [[r.code for r in out if isinstance(r, Reject)] for out in h.outputs[h.first:]]
    assert codes[4:13] == [["CONTRACT_NOT_TRADING"]] * 3 + [[], []] + [
        ["CONTRACT_NOT_TRADING", "BASKET_MEMBER_INVALID", "BASKET_MEMBER_INVALID"], [], [], []]
    taken = [(r.order_id, r.action) for out in h.outputs[h.first + 11:h.first + 13]
             for r in out if isinstance(r, OrderReport)]
    assert taken == [(2, "CANCELLED"), (3, "CANCELLED")]
    closed = {r.order_id: r.code for r in h.outputs[-1] if isinstance(r, OrderReport)}
    assert closed == {1: "CONTRACT_CLOSE"}
    assert list(h.engine.orders) == [5] and h.engine.round == 2


def test_withdrawing_a_contract_that_never_opened_closes_no_round() -> None:
    """R45.g: «El cierre de una ronda está asociado con el cierre de negociación de un
    contrato»; C2 is UPC («a la espera de ser abierto a negociación», R45.f): withdrawing it
    closes no round, so the trades before and after are of round 1; a close of a negotiated
    contract (even with C2 in the same command) closes one."""
    C2 = CONTRACTS[2]
    h = Harness()
    h.run([
        (order(A2, SELL, 100, 2), 0),  # 1
        (order(A1, BUY, 100, 1), 0),  # 2: round 1
        (CloseContracts((C2,)), 1),  # UPC -> FIN: no round closes
        (order(A1, BUY, 100, 1), 1),  # 3: still round 1
    ])
    rounds = [t.round for out in h.outputs for t in out if isinstance(t, Trade)]
    assert rounds == [1, 1] and h.engine.round == 1
    assert not [e for e in h.outputs[-2] if isinstance(e, RoundClosed)]
    h2 = Harness()
    h2.run([(CloseContracts((C0, C2)), 1)])
    (rc,) = [e for e in h2.outputs[-1] if isinstance(e, RoundClosed)]
    assert (rc.round, rc.contracts) == (1, (C0,)) and h2.engine.round == 2
