"""The audit trail of administrative actions (gateway/audit.py, ``query_audit``): who did
what, when, on which agent, and how it ended; the officers see everything, a trader only its
own agent; rebuilt from the journal after a restart."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from wsclient import Client, connect_as, contract_id, order, running_server

from engine.commands import InterruptContracts, ReactivateOrders
from engine.events import OrderReport, Reject
from gateway.audit import AuditLog
from gateway.codec import default_codec
from risk.commands import DecideGuaranteeRequest
from risk.events import RiskNotice

C1 = contract_id(10)


async def _audit(c: Client, **kw: Any) -> dict[str, Any]:
    return await c.request({"type": "query_audit", **kw})


async def _actions(server: Any) -> None:
    rita = await connect_as(server.port, "rita")
    bea = await connect_as(server.port, "bea")
    carlos = await connect_as(server.port, "carlos")
    try:
        ans = await bea.request(order(C1, "SELLU3", "SELL", "50.00", "1.0"))
        assert ans["type"] == "ack" and ans["order_ids"] == [1], ans
        ans = await rita.request({"type": "set_guarantees", "agent": "AG2",
                                  "amount": "25000.00"})
        assert ans["type"] == "ack", ans
        ans = await carlos.request({"type": "guarantee_request", "change": "increase",
                                    "amount": "100.00"})
        assert ans["type"] == "ack", ans
        # R46.2.6.2: a suspension cancels the agent's orders (bea's one order)
        ans = await rita.request({"type": "suspend_agent", "agent": "AG3",
                                  "reason": "margin call"})
        assert ans["type"] == "ack", ans
        ans = await rita.request({"type": "decide_guarantee_request", "request_id": 999,
                                  "accept": True})
        assert ans["type"] == "reject", ans
    finally:
        for c in (rita, bea, carlos):
            await c.close()


async def test_officer_actions_are_audited_with_who_when_and_outcome(tmp_path: Path) -> None:
    async with running_server(tmp_path, (C1,)) as server:
        await _actions(server)
        rita = await connect_as(server.port, "rita")
        try:
            ans = await _audit(rita)
            assert ans["type"] == "audit", ans
            entries = ans["entries"]
            assert [e["seq"] for e in entries] == sorted(
                (e["seq"] for e in entries), reverse=True)  # newest first
            mine = [(e["by"], e["action"], e["agents"], e["outcome"]) for e in entries
                    if e["by"] in ("rita", "carlos")]
            assert mine[:4] == [
                ("rita", "decide_guarantee_request", [], "REJECTED"),
                ("rita", "suspend_agent", ["AG3"], "OK"),
                ("carlos", "request_guarantee_change", ["AG2"], "OK"),
                ("rita", "set_guarantees", ["AG2"], "OK"),
            ], mine
            decide, suspend, _, setg = entries[:4]
            assert decide["code"] and "999" in decide["reason"]
            assert suspend["fields"]["reason"] == "margin call"
            assert suspend["orders_affected"] == 1  # bea's order, cancelled
            assert setg["fields"] == {"agent": "AG2", "amount": "25000.00"}
            assert setg["ts"].endswith("Z")
            # trading itself is not in the trail: bea's order entry is not there
            assert not [e for e in entries if e["by"] == "bea"]
            # filtered by agent, paged with before/limit
            ag2 = (await _audit(rita, agent="AG2"))["entries"]
            assert [e["action"] for e in ag2][:2] == ["request_guarantee_change",
                                                     "set_guarantees"]
            page = (await _audit(rita, limit=2))["entries"]
            assert len(page) == 2
            older = (await _audit(rita, before=page[-1]["seq"], limit=1))["entries"]
            assert older[0]["seq"] < page[-1]["seq"]
        finally:
            await rita.close()


async def test_a_trader_sees_only_its_own_agents_entries(tmp_path: Path) -> None:
    async with running_server(tmp_path, (C1,)) as server:
        await _actions(server)
        carlos = await connect_as(server.port, "carlos")
        try:
            ans = await _audit(carlos)
            assert ans["agent"] == "AG2"
            assert ans["entries"] and all("AG2" in e["agents"] for e in ans["entries"])
            ans = await _audit(carlos, agent="AG3")
            assert (ans["type"], ans["code"]) == ("reject", "NOT_PERMITTED")
        finally:
            await carlos.close()


async def test_bad_audit_queries_name_the_field(tmp_path: Path) -> None:
    async with running_server(tmp_path, (C1,)) as server:
        rita = await connect_as(server.port, "rita")
        try:
            for bad, field in (({"limit": 0}, "limit"), ({"limit": 1001}, "limit"),
                               ({"limit": "5"}, "limit"), ({"before": 0}, "before"),
                               ({"before": 2.5}, "before"), ({"agent": 7}, "agent"),
                               ({"colour": "red"}, "colour")):
                ans = await _audit(rita, **bad)
                assert (ans["type"], ans.get("field")) == ("error", field), (bad, ans)
        finally:
            await rita.close()


async def test_the_trail_is_rebuilt_from_the_journal_after_a_restart(tmp_path: Path) -> None:
    async with running_server(tmp_path, (C1,)) as server:
        await _actions(server)
        rita = await connect_as(server.port, "rita")
        before = (await _audit(rita, limit=1000))["entries"]
        await rita.close()
    async with running_server(tmp_path) as server:
        rita = await connect_as(server.port, "rita")
        try:
            after = (await _audit(rita, limit=1000))["entries"]
        finally:
            await rita.close()
    assert after[-len(before):] == before  # the same entries, seq and ts included


# ------------------------------------------------- commands about several agents (R46.2.12)

async def _enter_hibernated(c: Client, unit: str, side: str, price: str) -> None:
    """An order of ``c``'s agent in C1, entered then deactivated (hibernated)."""
    ans = await c.request(order(C1, unit, side, price, "1.0"))
    assert ans["type"] == "ack", ans
    ans = await c.request({"type": "order_deactivate", "order_ids": ans["order_ids"]})
    assert ans["type"] == "ack", ans


async def test_a_trader_sees_only_its_own_part_of_a_command_about_several_agents(
        tmp_path: Path) -> None:
    """The market operator reactivates the hibernated orders of AG1 and AG2; AG2's order
    is rejected (its guarantees are 0).  AG1's trader sees the entry with only AG1 in it:
    its own outcome (OK), its own order counted, and nothing of AG2 (neither the agent in
    ``agents`` or in the command's fields, nor AG2's rejection with its amounts and
    operative limit).  AG2's trader sees its own rejection and nothing of AG1.  The officer
    and the operator see the entry whole, filtered by agent or not."""
    async with running_server(tmp_path, (C1,)) as server:
        ana = await connect_as(server.port, "ana")        # AG1
        carlos = await connect_as(server.port, "carlos")  # AG2
        rita = await connect_as(server.port, "rita")      # risk officer
        marta = await connect_as(server.port, "marta")    # market operator
        try:
            await _enter_hibernated(ana, "SELLU1", "SELL", "60.00")
            await _enter_hibernated(carlos, "BUYU2", "BUY", "40.00")
            ans = await rita.request({"type": "set_guarantees", "agent": "AG2",
                                      "amount": "0.00"})
            assert ans["type"] == "ack", ans
            ans = await marta.request({"type": "reactivate", "contracts": [C1],
                                       "agents": ["AG1", "AG2"]})
            assert ans["type"] == "ack", ans

            [own] = [e for e in (await _audit(ana))["entries"]
                     if e["action"] == "reactivate_orders"]
            assert own["by"] == "marta" and own["agents"] == ["AG1"], own
            assert own["fields"] == {"contracts": [C1], "agents": ["AG1"]}, own
            assert own["outcome"] == "OK" and "reason" not in own and "code" not in own, own
            assert own["orders_affected"] == 1, own  # ana's order, reactivated
            assert "AG2" not in str(own) and "carlos" not in str(own), own

            [theirs] = [e for e in (await _audit(carlos))["entries"]
                        if e["action"] == "reactivate_orders"]
            assert theirs["agents"] == ["AG2"], theirs
            assert theirs["fields"] == {"contracts": [C1], "agents": ["AG2"]}, theirs
            assert theirs["outcome"] == "REJECTED", theirs
            assert "AG2" in theirs["reason"], theirs  # its own rejection, with its reason
            assert theirs["orders_affected"] == 0, theirs
            assert "AG1" not in str(theirs) and "ana" not in str(theirs), theirs
            assert theirs["seq"] == own["seq"] and theirs["ts"] == own["ts"]

            for c, kw in ((rita, {}), (marta, {}), (rita, {"agent": "AG1"}),
                          (marta, {"agent": "AG2"})):
                [whole] = [e for e in (await _audit(c, **kw))["entries"]
                           if e["action"] == "reactivate_orders"]
                assert whole["agents"] == ["AG1", "AG2"], whole
                assert whole["fields"] == {"contracts": [C1], "agents": ["AG1", "AG2"]}
                assert (whole["outcome"], whole["reason"]) == ("REJECTED", theirs["reason"])
                assert whole["orders_affected"] == 1, whole
        finally:
            for c in (ana, carlos, rita, marta):
                await c.close()


async def test_a_trader_counts_only_its_own_orders_a_command_affected(
        tmp_path: Path) -> None:
    """The operator reactivates AG1's hibernated sell, which trades at once with AG2's
    resting buy.  The command is about AG1 only, but it touched AG2's order too: AG1's
    trader sees as ``orders_affected`` only the reports of its own order, not the count of
    another agent's orders (the officer sees them all)."""
    async with running_server(tmp_path, (C1,)) as server:
        ana = await connect_as(server.port, "ana")        # AG1
        carlos = await connect_as(server.port, "carlos")  # AG2
        marta = await connect_as(server.port, "marta")    # market operator
        try:
            await _enter_hibernated(ana, "SELLU1", "SELL", "40.00")
            ans = await carlos.request(order(C1, "BUYU2", "BUY", "40.00", "1.0"))
            assert ans["type"] == "ack", ans
            ans = await marta.request({"type": "reactivate", "contracts": [C1],
                                       "agents": ["AG1"]})
            assert ans["type"] == "ack", ans
            [whole] = [e for e in (await _audit(marta))["entries"]
                       if e["action"] == "reactivate_orders"]
            [own] = [e for e in (await _audit(ana))["entries"]
                     if e["action"] == "reactivate_orders"]
            # AG2's order was filled by the reactivated one: one report of the whole
            # command's is AG2's, and not AG1's to count
            assert (whole["orders_affected"], own["orders_affected"]) == (2, 1), (whole, own)
            assert own["agents"] == whole["agents"] == ["AG1"]
            # carlos's agent is not one the command names: the entry is not listed for him
            assert not [e for e in (await _audit(carlos))["entries"]
                        if e["action"] == "reactivate_orders"]
        finally:
            for c in (ana, carlos, marta):
                await c.close()


def _report(order_id: int, agent: str, action: str, reason: str | None = None
            ) -> OrderReport:
    return OrderReport.of(
        ts=1_800_000_000_000, order_id=order_id, client_order_id=None, req_id=None,
        contract=C1, user=f"user-of-{agent}", agent=agent, unit=f"U-{agent}", side="BUY",
        action=action, status="INACTIVE" if action == "REJECTED" else "ACTIVE",
        price=4000, visible=10, hidden=0, filled=0, exec="NON", validity="GFS",
        expiry=None, peak=0, incr=0, revision=2, basket=0, basket_type=None,
        code="LIMIT_EXCEEDED" if action == "REJECTED" else None, reason=reason)


def _refusal(agent: str, reason: str) -> Reject:
    return Reject.of(ts=1_800_000_000_000, user="marta", agent=agent, req_id=None,
                     client_order_id=None, order_id=None, code="NOT_PERMITTED", reason=reason)


def test_each_agent_gets_the_first_rejection_of_its_own_orders_only() -> None:
    """Several agents' orders rejected by one command: each agent's view has the first
    rejection of its own orders (not the command's first, another agent's), counts only
    its own orders, and an agent with none rejected sees OK; the whole entry keeps the
    command's first rejection.  A rejection of the command as a whole (no order: here
    the issuer's own, under the operator's agent) is every concerned agent's outcome; one
    that is another concerned agent's own is not shown to the rest."""
    log = AuditLog(default_codec())
    log.observe([(ReactivateOrders((C1,), ("AG1", "AG2", "AG3")), "marta", [
        _report(7, "AG2", "REJECTED", "order 7 of agent AG2 exceeds 12.00 €"),
        _report(8, "AG1", "REJECTED", "order 8 of agent AG1 exceeds 3.00 €"),
        _report(9, "AG1", "ACTIVATED"), _report(10, "AG2", "ACTIVATED"),
        _report(11, "AG4", "FILLED"),  # a counterparty, not named by the command
    ])])
    [whole] = log.query()
    assert (whole["reason"], whole["orders_affected"]) == (
        "order 7 of agent AG2 exceeds 12.00 €", 3)
    [ag1] = log.query(view_of="AG1")
    assert (ag1["agents"], ag1["fields"]["agents"]) == (["AG1"], ["AG1"])
    assert (ag1["outcome"], ag1["reason"], ag1["orders_affected"]) == (
        "REJECTED", "order 8 of agent AG1 exceeds 3.00 €", 1)
    [ag3] = log.query(view_of="AG3")
    assert (ag3["outcome"], ag3["orders_affected"]) == ("OK", 0) and "reason" not in ag3
    assert log.query(view_of="AG4") == []  # not an agent the command is about
    assert log.query("AG4") == []
    assert log.query("AG3") == [whole]  # an officer filtering by agent: the whole entry

    log.observe([(ReactivateOrders((C1,), ("AG1", "AG2")), "marta", [
        _refusal("AG2", "agent AG2 is suspended"),
        _refusal("OMIE", "user marta may not reactivate"),
    ])])
    ag1, _ = log.query(view_of="AG1")
    ag2, _ = log.query(view_of="AG2")
    assert ag1["reason"] == "user marta may not reactivate", ag1
    assert ag2["reason"] == "agent AG2 is suspended", ag2


def test_a_command_that_failed_inside_the_engine_is_audited_failed() -> None:
    """A command that raised inside the core (its event command_failed, its sender answered
    INTERNAL_ERROR) is in the trail as FAILED, for the officers and the agent concerned,
    at its instant (it was shown OK, dated by the event before it)."""
    from gateway.core import CommandFailed
    from gateway.protocol import parse_instant
    from risk.commands import SetGuarantees

    log = AuditLog(default_codec())
    cmd = SetGuarantees(by="rita", agent="AG2", amount=63594, req_id="g1")
    log.observe([(cmd, "rita", [CommandFailed((1_800_000_000_123, "KeyError"))])])
    for entry in (log.query()[0], log.query(view_of="AG2")[0]):
        assert (entry["outcome"], entry["code"]) == ("FAILED", "INTERNAL_ERROR"), entry
        assert "KeyError" in entry["reason"]
        assert parse_instant(entry["ts"]) == 1_800_000_000_123


def test_a_reload_that_suspends_an_agent_names_it() -> None:
    """R46.2.6.2: a reference-data reload that suspends an agent acts on it as an officer's
    suspend_agent does (its orders cancelled), and that entry names the agent: so does the
    reload's, for an officer filtering on the agent and for the agent's own trail (found
    by a black-box test: neither found it)."""
    from risk.commands import LoadReferenceData
    from risk.events import RiskNotice

    log = AuditLog(default_codec())
    t = 1_800_000_000_000
    log.observe([(LoadReferenceData('{"agents": []}', by="operator"), "operator", [
        RiskNotice((t, "REFERENCE_DATA_LOADED", None, "operator", None, None, "4 agents")),
        RiskNotice((t, "AGENT_SUSPENDED", "AG3", "operator", None, None,
                    "suspended by the reference data")),
        _report(12, "AG3", "CANCELLED"),
    ])])
    [whole] = log.query()
    assert whole["agents"] == ["AG3"] and whole["orders_affected"] == 1
    assert log.query("AG3") == [whole]
    [own] = log.query(view_of="AG3")
    assert (own["action"], own["orders_affected"]) == ("load_reference_data", 1)
    assert log.query(view_of="AG1") == []


def test_a_decision_on_a_guarantee_request_is_listed_for_its_agent() -> None:
    """An officer's decision names no agent (a request id); the notice it makes does:
    the entry is about that agent, whose own users and an officer filtering on it find
    it (before, its agents were empty: the console showed it as about everyone, and a
    filter on the agent missed it)."""
    log = AuditLog(default_codec())
    log.observe([(DecideGuaranteeRequest("rita", 3, False, "not enough"), "rita", [
        RiskNotice.of(ts=1_800_000_000_000, kind="REQUEST_REFUSED", agent="AG1", by="rita",
                      request_id=3, amount=99_999_900, detail="refused: not enough")])])
    [whole] = log.query()
    assert whole["agents"] == ["AG1"] and whole["action"] == "decide_guarantee_request"
    assert log.query("AG1") == [whole] and log.query(view_of="AG1")
    assert log.query(view_of="AG2") == []


def test_an_interruption_is_listed_for_the_agents_whose_orders_it_hibernated() -> None:
    """An interruption names contracts: the agents whose orders it hibernated find it,
    each counting its own orders."""
    log = AuditLog(default_codec())
    log.observe([(InterruptContracts((C1,)), "marta", [
        _report(1, "AG1", "HIBERNATED"), _report(2, "AG1", "HIBERNATED"),
        _report(3, "AG2", "HIBERNATED")])])
    [whole] = log.query()
    assert (whole["agents"], whole["orders_affected"]) == (["AG1", "AG2"], 3)
    [ag1] = log.query(view_of="AG1")
    [ag2] = log.query(view_of="AG2")
    assert (ag1["orders_affected"], ag2["orders_affected"]) == (2, 1)
    assert log.query(view_of="AG3") == []
