"""The replay tool (DESIGN rule 3): same scenario in, byte-identical events out."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from engine.commands import CreateContract, OpenContracts
from gateway.replay import ScenarioError, replay

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "examples" / "demo.jsonl"


def run_cli(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "gateway.cli", *args], cwd=ROOT,
                          capture_output=True, timeout=60, check=False)


def test_replay_is_byte_identical_across_processes() -> None:
    a = run_cli("replay", str(DEMO))
    b = run_cli("replay", str(DEMO))
    assert a.returncode == 0, a.stderr
    assert a.stdout == b.stdout
    last = orjson.loads(a.stdout.splitlines()[-1])
    assert last["type"] == "state_hash" and len(last["hash"]) == 64


def test_demo_exercises_every_order_condition() -> None:
    events = [orjson.loads(x) for x in replay(DEMO.read_bytes().splitlines())]
    codes = {e.get("code") for e in events}
    actions = {e["action"] for e in events if e["type"] == "order_report"}
    assert {"IOC_REMAINDER", "FOK_NOT_FILLABLE", "LINKED_NOT_FILLABLE", "GTD_EXPIRED",
            "STALE_REVISION", "BASKET_MEMBER_INVALID", "CONTRACT_CLOSE",
            "ICEBERG_INCREMENT_SIGN", "CONTRACT_NOT_TRADING"} <= codes
    assert {"ADDED", "MODIFIED", "PARTIALLY_FILLED", "FILLED", "REFILLED", "HIBERNATED",
            "ACTIVATED", "CANCELLED", "EXPIRED"} <= actions
    rounds = {e["round"] for e in events if e["type"] == "trade"}
    assert rounds == {1, 2}
    # iceberg refills 0.50 higher each time (A1§3.4.1): 47.00, 47.50, 48.00
    prices = [e["price"] for e in events if e["type"] == "trade" and e["sell_order"] == 6
              and e["ts"] == "2027-01-14T21:03:10.000Z"]
    assert prices == ["47.00", "47.50", "48.00"]


def test_trades_only_output() -> None:
    r = run_cli("replay", str(DEMO), "--trades")
    kinds = {orjson.loads(x)["type"] for x in r.stdout.splitlines()}
    assert kinds == {"trade", "state_hash"}


@pytest.mark.parametrize(
    ("line", "field", "why"),
    [
        ("not json", "line", "invalid JSON"),
        ("[1]", "line", "JSON object"),
        ('{"at": "2027-01-15T00:00:00Z"}', "line", "exactly one"),
        ('{"at": "yesterday", "operator": {"type": "time"}}', "at", "ISO-8601"),
        ('{"at": "2027-01-15T00:00:00Z", "operator": {"type": "time"}, "x": 1}', "x",
         "unknown"),
        ('{"at": "2027-01-15T00:00:00Z", "request": {"type": "order_cancel", "order_id": 1}}',
         "user", "user"),
        ('{"at": "2027-01-15T00:00:00Z", "user": "u", "request": {"type": "order_entry",'
         ' "contract": "PH-20270115-10", "unit": "U", "side": "BUY", "price": "1.001",'
         ' "quantity": "1.0"}}', "request.price", "decimals"),
        ('{"at": "2027-01-15T00:00:00Z", "operator": {"type": "contract_open",'
         ' "contracts": []}}', "operator.contracts", "at least 1"),
        # a journal's export: an AMQP request's key comes with its command only
        ('{"at": "2027-01-15T00:00:00Z", "operator": {"type": "time"}, "message_id": "m"}',
         "message_id", "only with 'command'"),
        ('{"at": "2027-01-15T00:00:00Z", "origin": "u", "command": ["tick"],'
         ' "message_id": 5}', "message_id", "string"),
        ('{"at": "2027-01-15T00:00:00Z", "origin": "u", "command": ["tick"],'
         ' "message_id": "m", "digest": null}', "digest", "string"),
    ],
)
def test_malformed_lines_name_line_and_field(line: str, field: str, why: str) -> None:
    with pytest.raises(ScenarioError) as ei:
        list(replay(["# comment", "", line]))
    assert ei.value.line == 3
    assert ei.value.field == field
    assert why.lower() in ei.value.reason.lower()


def test_time_going_backwards_is_refused() -> None:
    lines = ['{"at": "2027-01-15T00:00:01Z", "operator": {"type": "time"}}',
             '{"at": "2027-01-15T00:00:00Z", "operator": {"type": "time"}}']
    with pytest.raises(ScenarioError) as ei:
        list(replay(lines))
    assert (ei.value.line, ei.value.field) == (2, "at")


def test_cli_reports_bad_scenario_without_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"at": "2027-01-15T00:00:00Z", "operator": {"type": "warp"}}\n')
    r = run_cli("replay", str(bad))
    assert r.returncode == 2
    assert b"line 1: operator.type: unknown message type 'warp'" in r.stderr
    assert b"Traceback" not in r.stderr
    r = run_cli("replay", str(tmp_path / "missing.jsonl"))
    assert r.returncode == 2 and b"cannot read" in r.stderr


def test_risk_demo_refuses_what_the_rules_refuse() -> None:
    """examples/risk-demo.jsonl with the demo reference data: each request's outcome."""
    from gateway.refdata_file import read_and_validate

    text, _ = read_and_validate(ROOT / "examples" / "refdata.toml")
    scenario = (ROOT / "examples" / "risk-demo.jsonl").read_bytes().splitlines()
    events = [orjson.loads(x) for x in replay(scenario, refdata_json=text)]
    rejected = {e["req_id"]: e["code"] for e in events if e["type"] == "reject"}
    assert rejected == {
        "b2": "OPERATIVE_LIMIT",  # misses the exact remaining limit (R49.1.4.3)
        "a1": "UNIT_NOT_RESPONSIBLE",  # R46.2.2
        "a3": "ENERGY_MAX",  # 150 + 60 > 200 MWh (R46.2.4)
        "a4": "ENERGY_MAX",  # 150 MW + 4 x 20 MW in the quarter > 200 MW
        "a5": "ENERGY_MIN",  # a selling unit buying below its program (R46.2.5)
        "s1": "OPERATIVE_LIMIT",  # AG3's 60 % share of a debtor sell
        "s3": "AGENT_SUSPENDED",
        "c1": "NOT_PERMITTED",
        "r4": "RATE_LIMIT",
    }
    added = {e["req_id"] for e in events
             if e["type"] == "order_report" and e["action"] == "ADDED"}
    assert {"b1", "b3", "b5", "a2", "s2", "r1", "r2", "r3"} <= added
    # the suspension cancelled AG3's resting order; the breach hibernated carlos's orders
    assert any(e["type"] == "order_report" and e["agent"] == "AG3"
               and e["action"] == "CANCELLED" and e["code"] == "OPERATOR_CANCEL"
               for e in events)
    hib = [e for e in events if e["type"] == "order_report" and e["action"] == "HIBERNATED"]
    assert hib and {e["user"] for e in hib} == {"carlos"}
    states = [e["state"] for e in events if e["type"] == "throttling"]
    assert states == ["WARNING", "BREACHED"]


def test_a_command_that_raises_is_shown_and_the_replay_goes_on(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The replay tool applies a command as the server does (gateway/core.py): one that
    raises inside the engine (a defect, injected into the new-order handler) is a
    command_failed event and the replay goes on to the end (it stopped with the exception,
    so an incident's journal could not be replayed past it)."""
    import gateway.core as gcore
    from engine.commands import NewOrder

    whole = [orjson.loads(x) for x in replay(DEMO.read_bytes().splitlines())]
    real = gcore.Engine

    class Broken(real):  # type: ignore[misc, valid-type]
        def __init__(self, *a: object, **kw: object) -> None:
            super().__init__(*a, **kw)

            def broken(*args: object, **kwargs: object) -> None:
                raise KeyError("defect")

            self._handlers[NewOrder] = broken

    monkeypatch.setattr(gcore, "Engine", Broken)
    out = [orjson.loads(x) for x in replay(DEMO.read_bytes().splitlines())]
    failed = [e for e in out if e["type"] == "command_failed"]
    assert failed and {e["error"] for e in failed} == {"KeyError"}
    assert "ts" in failed[0]
    # what follows the failures is still replayed: the contracts' closes at the end
    assert [e for e in out if e["type"] == "contract_state"][-1] == \
        [e for e in whole if e["type"] == "contract_state"][-1]


def test_what_a_failing_command_did_before_it_raised_is_told_with_the_failure() -> None:
    """A command that raises after it changed the state (here, after its order traded: a
    defect injected after the new-order handler) keeps the events of what it did, then
    command_failed: the state holds the trade, so the traders, the private streams and
    the settlement must hear of it (the events were dropped, and a trade in the books was
    told to nobody).  A replay gives the same events."""
    from engine.commands import NewOrder
    from engine.events import OrderReport, Trade
    from engine.model import Side
    from gateway.core import CommandFailed, Core

    def run() -> tuple[list[Any], str]:
        core = Core(risk=False)
        eng = core.engine
        real = eng._handlers[NewOrder]

        def trades_then_raises(cmd: Any, ts: int) -> None:
            real(cmd, ts)
            if cmd.req_id == "boom":
                raise KeyError("defect")

        eng._handlers[NewOrder] = trades_then_raises
        cid = "PH-20270115-10"
        t0 = 1_800_000_000_000
        core.apply(CreateContract(cid, t0 + 86_400_000), t0)
        core.apply(OpenContracts((cid,)), t0)
        core.apply(NewOrder("u1", "A1", "U1", cid, Side.SELL, 5000, 10), t0 + 1)
        events = core.apply(NewOrder("u2", "A2", "U2", cid, Side.BUY, 5000, 10,
                                     req_id="boom"), t0 + 2)
        return events, core.state_hash()

    events, state = run()
    assert type(events[-1]) is CommandFailed and events[-1].error == "KeyError"
    assert [type(e) for e in events[:-1]].count(Trade) == 1
    assert any(type(e) is OrderReport and e.req_id == "boom" for e in events)
    again, state2 = run()
    assert again == events and state2 == state
