"""``ronda risk``, the risk officer's console for scripts (clients/risk_cli.py), run as a
command against a real server: answers as JSON, exit status 0 / 1 (refused) / 2 (cannot
connect or log in), refusals with their code and reason."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

import orjson
from wsclient import TOKENS, contract_id, running_server

ROOT = Path(__file__).resolve().parents[1]
C1 = contract_id(10)


async def risk(port: int, *args: str, user: str = "rita", token: str | None = None
               ) -> tuple[int, Any, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RONDA_USER": user,
           "RONDA_TOKEN": TOKENS.get(user, "") if token is None else token,
           "RONDA_URL": f"ws://127.0.0.1:{port}/ws"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway.cli", "risk", *args, cwd=ROOT, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, orjson.loads(out) if out.strip() else None, err.decode()


async def test_officer_scripts_guarantees_suspension_and_reads_back(tmp_path: Path) -> None:
    async with running_server(tmp_path, (C1,)) as server:
        port = server.port
        rc, ans, _ = await risk(port, "set-guarantees", "AG2", "25000.00")
        assert (rc, ans["type"], ans["kind"]) == (0, "ack", "set_guarantees"), ans
        rc, acct, _ = await risk(port, "account", "AG2")
        assert rc == 0 and acct["type"] == "account"
        assert acct["reserved"] == "25000.00"  # R49.1.4.1: the reserved guarantees
        # R46.2.6.2: suspension cancels the agent's orders
        await server.sequencer.submit(order_cmd(server), "bea")
        rc, orders, _ = await risk(port, "orders", "AG3")
        assert rc == 0 and len(orders["orders"]) == 1
        rc, ans, _ = await risk(port, "suspend", "AG3", "--reason", "margin call")
        assert rc == 0 and ans["type"] == "ack"
        rc, orders, _ = await risk(port, "orders", "AG3")
        assert orders["orders"] == []
        rc, agents, _ = await risk(port, "agents")
        assert {a["agent"]: a["suspended"] for a in agents["agents"]}["AG3"] is True
        rc, audit, _ = await risk(port, "audit", "--agent", "AG3", "--limit", "5")
        assert rc == 0
        assert [(e["by"], e["action"]) for e in audit["entries"]][:1] == [
            ("rita", "suspend_agent")]
        rc, ans, _ = await risk(port, "rate-limits", "--user", "bea", "--rule", "1000:7",
                                "--rule", "60000:100")
        assert rc == 0, ans
        rc, th, _ = await risk(port, "throttling", "bea")
        assert [(r["window_ms"], r["max"]) for r in th["rules"]] == [(1000, 7), (60000, 100)]


def order_cmd(server: Any) -> Any:
    """bea's resting order (SELLU3 sells 1.0 MWh at 50.00 €/MWh)."""
    from engine.commands import NewOrder
    from engine.model import Side

    return NewOrder("bea", "AG3", "SELLU3", C1, Side.SELL, 5000, 10)


async def test_refusals_exit_1_with_the_code_and_reason(tmp_path: Path) -> None:
    async with running_server(tmp_path, (C1,)) as server:
        port = server.port
        rc, ans, err = await risk(port, "decide", "999", "accept")
        assert rc == 1 and ans["type"] == "reject"
        assert ans["code"] in err and "999" in err
        # never rounded: an amount with three decimals is refused, naming the field
        rc, ans, err = await risk(port, "set-guarantees", "AG2", "1.001")
        assert (rc, ans["type"], ans["field"]) == (1, "error", "amount"), ans
        assert "(amount)" in err
        # a trader is not an officer
        rc, ans, _ = await risk(port, "set-guarantees", "AG2", "1.00", user="carlos")
        assert (rc, ans["code"]) == (1, "NOT_PERMITTED")


async def test_bad_credentials_or_no_server_exit_2(tmp_path: Path) -> None:
    async with running_server(tmp_path) as server:
        rc, ans, err = await risk(server.port, "agents", token="wrong")
        assert rc == 2 and ans is None and "login failed" in err
        port = server.port
    rc, ans, err = await risk(port, "agents")  # the server is gone
    assert rc == 2 and ans is None and f"127.0.0.1:{port}" in err
