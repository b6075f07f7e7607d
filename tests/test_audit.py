"""The audit trail of administrative actions (gateway/audit.py, ``query_audit``): who did
what, when, on which agent, and how it ended; the officers see everything, a trader only its
own agent; rebuilt from the journal after a restart."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from wsclient import Client, connect_as, contract_id, order, running_server

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
