"""FoK and LINKED baskets against brute force (hypothesis).

A1§3.3: a FoK order «se casará en su totalidad ... o no se casará»; A1§5.3: the orders of a
LINKED basket «se casarán todas ... o ninguna».  Whether they can fill is decided by the
engine without trading (hidden iceberg quantity and the refills' price increments counted,
members on one contract and side competing for the same orders).  The reference: the same
orders sent one after the other as IoC on a copy of the engine; the basket (or the single
FoK) must trade all of their quantity if every IoC filled completely, and nothing
otherwise.
"""

from __future__ import annotations

import copy
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from engine.commands import CreateContract, EnterBasket, NewOrder, OpenContracts
from engine.config import EngineConfig
from engine.engine import Engine
from engine.events import Trade
from engine.model import BasketType, Exec, Side

CIDS = ("PH-20270115-10", "PH-20270115-11")
T = 1_800_000_000_000
CFG = EngineConfig(price_min=-1000, price_max=1000, qty_min=1, qty_max=100)


def _book(rng: random.Random) -> tuple[Engine, int]:
    """Up to 12 resting orders of three agents on two contracts, half of them icebergs
    (most with a price increment)."""
    e = Engine(CFG)
    t = T - 3_600_000
    for c in CIDS:
        e.apply(CreateContract(c, T), t)
    e.apply(OpenContracts(CIDS), t)
    for _ in range(rng.randint(0, 12)):
        side = rng.choice([Side.BUY, Side.SELL])
        price = rng.randint(-8, 0) if side is Side.BUY else rng.randint(1, 9)
        qty = rng.randint(1, 12)
        peak = incr = 0
        if rng.random() < 0.5:
            peak = rng.randint(1, qty)
            if rng.random() < 0.6:
                incr = rng.randint(1, 4) * (-1 if side is Side.BUY else 1)
        ag = rng.choice("ABC")
        e.apply(NewOrder(ag, ag, ag + "U", rng.choice(CIDS), side, price, qty, peak=peak,
                         incr=incr), t)
        t += 1
    return e, t


def _traded(events: list[object]) -> int:
    return sum(ev.qty for ev in events if isinstance(ev, Trade))


@settings(max_examples=400, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_fok_and_linked_baskets_fill_whole_exactly_when_iocs_would(seed: int) -> None:
    rng = random.Random(seed)
    e, t = _book(rng)
    same = rng.random() < 0.5  # members on one contract and side compete
    members: list[NewOrder] = []
    for _ in range(rng.randint(1, 3)):
        side = members[0].side if same and members else rng.choice([Side.BUY, Side.SELL])
        c = members[0].contract if same and members else rng.choice(CIDS)
        members.append(NewOrder("D", "D", "DU", c, side, rng.randint(-12, 14),
                                rng.randint(1, 20), exec=Exec.FOK))
    brute = copy.deepcopy(e)
    whole = all(
        _traded(brute.apply(NewOrder(m.user, m.agent, m.unit, m.contract, m.side, m.price,
                                     m.qty, exec=Exec.IOC), t)) == m.qty
        for m in members)
    want = sum(m.qty for m in members) if whole else 0
    if len(members) == 1:
        single, t1 = _book(random.Random(seed))
        assert _traded(single.apply(members[0], t1)) == want, "FoK"
    assert _traded(e.apply(EnterBasket("D", "D", BasketType.LINKED, tuple(members)), t)) == \
        want, "LINKED"
