"""Round sync against the platform, as a property (hypothesis, the real SyncJob on SQLite).

Random orders, modifications, cancellations, reference-data reloads (owners, shares, taxes),
guarantee requests, officers' decisions, round closes and syncs.  After each sync that
covers every closed round:

* the platform's reserved guarantees equal the settlement store's (R49.1.4.4: one decision
  per request, the platform's for reductions, the sync's for an increase pending at a
  close; an officer's decision after the last close is the next sync's to carry);
* the operative limit is at most what is deposited less the obligations (R49.1.4.2);
* every trade side is settled once, to the owners and with the taxes the platform charged
  it under (R53.6), whatever reloads came between the order and its trade.

At the end a replay of the whole history (a restart) rebuilds the same core and the same
sync bookkeeping.  The reference is what the platform itself charged (recorded from
``RiskGuard.filled`` as the engine calls it) and the tax rules of docs/settlement.md.
"""

from __future__ import annotations

import asyncio
import copy
import json
import tempfile
from fractions import Fraction
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_sync_job import BUY, REFDATA_TEXT, SELL, T0, Market, open_sqlite

from engine.commands import (
    CancelOrder,
    CloseContracts,
    CreateContract,
    ModifyOrder,
    NewOrder,
    OpenContracts,
)
from engine.events import Trade
from risk.commands import DecideGuaranteeRequest, LoadReferenceData, RequestGuaranteeChange
from risk.guard import SCALE, RiskGuard
from sync.settle import round_half_up

HOURS = list(range(10, 22))
CONTRACTS = [f"PH-20270115-{h}" for h in HOURS]
BASE = json.loads(REFDATA_TEXT)


def variant(k: int) -> str:
    d = copy.deepcopy(BASE)
    ag = {a["code"]: a for a in d["agents"]}
    un = {u["code"]: u for u in d["units"]}
    if k == 1:
        un["SELLU3"]["owners"] = [{"agent": "AG3", "share": "30"}, {"agent": "AG4", "share": "70"}]
        ag["AG4"]["tax"] = {"electricity_tax": "0", "vat": "6"}
        ag["AG2"]["tax"] = {"electricity_tax": "0", "vat": "21"}
    elif k == 2:
        un["SELLU3"]["owners"] = [{"agent": "AG3", "share": "100"}]
        ag["AG3"]["tax"] = {"electricity_tax": "1.5", "vat": "10"}
        un["PTBUY4"]["owners"] = [{"agent": "AG3", "share": "50"}, {"agent": "AG4", "share": "50"}]
    return json.dumps(d, sort_keys=True)


VARIANTS = [variant(k) for k in range(3)]
TRADERS = [("ana", "AG1", "SELLU1"), ("carlos", "AG2", "BUYU2"), ("bea", "AG3", "SELLU3"),
           ("bea", "AG3", "PTBUY4"), ("bea", "AG3", "PTSELL4")]
AGENTS = ["AG1", "AG2", "AG3", "AG4"]

# orders near one price, so that they cross and trade (three times as likely)
near = st.tuples(st.just("order"), st.integers(0, 4), st.integers(0, 1), st.booleans(),
                 st.integers(4, 6).map(lambda p: p * 100), st.integers(1, 40))
act = st.one_of(
    st.tuples(st.just("order"), st.integers(0, 4), st.integers(0, 1), st.booleans(),
              st.integers(-4, 12).map(lambda p: p * 100), st.integers(1, 40)),
    near, near, near,
    st.tuples(st.just("cancel"), st.integers(0, 50)),
    st.tuples(st.just("modify"), st.integers(0, 50), st.integers(-30, 60).map(lambda p: p * 100),
              st.integers(1, 40)),
    st.tuples(st.just("request"), st.integers(0, 3), st.booleans(),
              st.integers(1, 60).map(lambda x: x * 100_000)),
    st.tuples(st.just("decide"), st.integers(0, 50), st.booleans()),
    st.tuples(st.just("reload"), st.integers(0, 2)),
    st.tuples(st.just("close"),),
    st.tuples(st.just("sync"),),
)


class Run:
    def __init__(self, m: Market) -> None:
        self.m = m
        self.next_close = 0
        self.charged: dict[tuple[int, str], tuple[object, str]] = {}  # (trade, side) -> (ref, unit)
        self.log: list[tuple[int, object, str]] = []
        risk = m.core.risk
        orig = RiskGuard.filled

        def filled(o, qty, price, _orig=orig, _risk=risk):
            p = o.ext
            if p is not None:
                self.log.append((o.id, p.ref, p.unit.code))
            return _orig(_risk, o, qty, price)
        risk.filled = filled  # the engine calls g.filled
        self.risk = risk
        self.officer_delta: dict[str, int] = {}  # since the last close (cents)

    async def submit(self, cmd, origin):
        self.log.clear()
        ev = await self.m.submit(cmd, origin)
        self._note(ev)
        return ev

    def _note(self, ev):
        last = {oid: (ref, unit) for oid, ref, unit in self.log}
        for e in ev:
            if type(e) is Trade:
                self.charged[(e.trade_id, "BUY")] = last[e.buy_order]
                self.charged[(e.trade_id, "SELL")] = last[e.sell_order]

    def open_contracts(self):
        return CONTRACTS[self.next_close:self.next_close + 4]


async def check(run: Run, store, problems: list[str]) -> None:
    m = run.m
    risk = m.core.risk
    bals = {r["agent"]: r for r in await store.query("SELECT * FROM balances")}
    for a in AGENTS:
        acct = risk.accounts[a]
        pres = (acct.gmic + acct.increases - acct.reductions) // SCALE
        b = bals.get(a)
        if b is None:
            continue
        od = run.officer_delta.get(a, 0)
        pres -= od  # an officer's decision after the last close: the next sync's
        if od:
            continue
        if int(b["reserved"]) != pres * 10:
            problems.append(f"reserved {a}: store {b['reserved']} platform {pres*10}")
        lim = acct.limit_cents()
        obl = -(-acct.obligations // SCALE)
        bound = int(b["balance"]) + int(b["reserved"]) - obl * 10
        if lim * 10 > bound + 100:
            problems.append(f"limit {a}: {lim*10} > deposits - obligations {bound}")
    rows = await store.query("SELECT trade_id, side, agent, share_bp, base, iee, vat FROM entries")
    got: dict[tuple[int, str], list] = {}
    for r in rows:
        got.setdefault((int(r["trade_id"]), r["side"]), []).append(r)
    synced_trades = {k for k in run.charged if k[0] in {t for t, _ in got}}
    for key in synced_trades:
        ref, unit = run.charged[key]
        exp = sorted(ref.units[unit].owners)
        have = sorted((r["agent"], int(r["share_bp"])) for r in got.get(key, []))
        if have != exp:
            problems.append(f"trade side {key}: settled to {have}, charged to {exp}")
            continue
        for r in got[key]:
            a = ref.agents[r["agent"]]
            iee = round_half_up(Fraction(int(r["base"])) * Fraction(a.tax_iee) / 100)
            vat = round_half_up((Fraction(int(r["base"])) + iee) * Fraction(a.tax_vat) / 100)
            if (iee, vat) != (int(r["iee"]), int(r["vat"])):
                problems.append(f"trade side {key} {r['agent']}: taxes {(r['iee'], r['vat'])}"
                                f" vs charged {(iee, vat)}")


def fp(ref):
    return (tuple(sorted((u, ref.units[u].owners) for u in ref.units)),
            tuple(sorted((a, ref.agents[a].tax_iee, ref.agents[a].tax_vat) for a in ref.agents)))


def bookkeeping(m: Market):
    j = m.job
    eff = {}
    for rows in j.trades.values():
        for t in rows:
            r = [ref for i, ref in j.trade_refs if i <= t[1]]
            eff[t[1]] = fp(r[-1]) if r else None
    return {
        "last_synced": j.last_synced,
        "trades": {r: [t[1] for t in v] for r, v in j.trades.items() if v},
        "closes": {r: (c.decisions, c.reserved, c.reduction, c.requests)
                   for r, c in j.closes.items()},
        "side_refs": sorted((k, fp(v)) for k, v in j.side_refs.items()),
        "order_refs": sorted((k, fp(v)) for k, v in j.order_refs.items()),
        "trade_refs_effective": eff,
        "session_refs": sorted(j.session_refs),
        "auction_rounds": dict(j.auction_rounds),
        "released_seen": set(j.released_seen),
        "hash": m.core.state_hash(),
    }


async def scenario(actions, path: Path) -> list[str]:
    store = await open_sqlite(path)
    problems: list[str] = []
    try:
        m = Market(store)
        await m.job.open()
        m.at(0)
        await m.submit(LoadReferenceData(VARIANTS[0]), "operator")
        for c in CONTRACTS:
            await m.submit(CreateContract(c, T0 + 10**8), "calendar")
        await m.submit(OpenContracts(tuple(CONTRACTS)), "calendar")
        m.at(1)
        run = Run(m)
        for a in actions:
            kind = a[0]
            if kind == "order":
                _, ti, ci, _, price, qty = a  # (the side is the unit's)
                user, agent, unit = TRADERS[ti]
                oc = run.open_contracts()
                if not oc:
                    continue
                c = oc[ci % len(oc)]
                side = SELL if unit in ("SELLU1", "SELLU3", "PTSELL4") else BUY
                await run.submit(NewOrder(user, agent, unit, c, side, price, qty), user)
            elif kind in ("cancel", "modify"):
                live = sorted(m.core.engine.orders.values(), key=lambda o: o.id)
                if not live:
                    continue
                o = live[a[1] % len(live)]
                if kind == "cancel":
                    await run.submit(CancelOrder(o.user, o.agent, o.id), o.user)
                else:
                    await run.submit(
                        ModifyOrder(o.user, o.agent, o.id, o.revision, a[2], a[3]), o.user)
            elif kind == "request":
                ag = AGENTS[a[1]]
                user = {"AG1": "ana", "AG2": "carlos", "AG3": "bea", "AG4": "rita"}[ag]
                await run.submit(RequestGuaranteeChange(user, ag, a[2], a[3]), user)
            elif kind == "decide":
                pend = sorted(r.id for r in m.core.risk.requests.values() if r.state == "PENDING")
                if not pend:
                    continue
                rid = pend[a[1] % len(pend)]
                rq = m.core.risk.requests[rid]
                await run.submit(DecideGuaranteeRequest("rita", rid, a[2], "officer"), "rita")
                if rq.state == "ACCEPTED":
                    run.officer_delta[rq.agent] = run.officer_delta.get(rq.agent, 0) + (
                        rq.amount if rq.increase else -rq.amount)
            elif kind == "reload":
                await run.submit(LoadReferenceData(VARIANTS[a[1]]), "operator")
            elif kind == "close":
                if run.next_close >= len(CONTRACTS):
                    continue
                await run.submit(CloseContracts((CONTRACTS[run.next_close],)), "calendar")
                run.next_close += 1
                run.officer_delta.clear()
            elif kind == "sync":
                for _ in range(5):
                    await m.job.sync_pending()
                if run.next_close and m.job.last_synced == m.core.engine.round - 1:
                    await check(run, store, problems)
        for _ in range(8):
            await m.job.sync_pending()
        if run.next_close and m.job.last_synced == m.core.engine.round - 1:
            await check(run, store, problems)
        # restart: a new job over the same store, the whole history replayed
        before = bookkeeping(m)
        m2 = Market(store)
        await m2.job.open()
        m2.replay(list(m.history))
        after = bookkeeping(m2)
        for k in before:
            if before[k] != after[k]:
                problems.append(f"replay differs in {k}: {before[k]!r} vs {after[k]!r}")
    finally:
        await store.close()
    return problems


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(act, min_size=20, max_size=80))
def test_the_platform_and_the_settlement_store_agree_after_every_sync(
        actions: list[Any]) -> None:
    with tempfile.TemporaryDirectory() as d:
        problems = asyncio.run(scenario(actions, Path(d) / "s.sqlite"))
    assert not problems, problems
