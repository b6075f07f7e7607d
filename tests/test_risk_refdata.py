"""Reference data (docs/refdata.md): the loader validates a document whole, lists every error
by its path and never loads half a document; the demo file loads; file syntax errors name
the file."""

from __future__ import annotations

import copy
import json
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from risk_helpers import (
    BUY,
    CID,
    T0,
    Core,
    agent,
    gate_closure,
    notices,
    only_reject,
    std_doc,
    unit,
    user,
)

from engine.commands import CreateContract, NewOrder, OpenContracts
from engine.engine import Engine
from engine.events import Reject
from gateway.refdata_file import read_and_validate, read_document
from risk.commands import LoadReferenceData
from risk.guard import RiskGuard
from risk.refdata import RefData, RefDataError, load

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "refdata.toml"


def refused(doc: Any) -> list[str]:
    with pytest.raises(RefDataError) as exc:
        load(doc)
    return exc.value.errors


def has(errors: list[str], path: str, *words: str) -> bool:
    """Some error starts with ``path:`` and mentions every word."""
    return any(e.startswith(path + ":") and all(w in e for w in words) for e in errors)


# ----------------------------------------------------------------------------- the good case


def test_standard_document_loads_into_exact_integers() -> None:
    doc = std_doc(buyer_guarantees="1234.56")
    doc["agents"][0]["tax"] = {"electricity_tax": "5.11269632", "vat": "21"}
    rd = load(doc)
    b = rd.agents["BUYER"]
    assert b.guarantees == 123456  # 1234.56 € = 123456 cents
    # (1 + 0.0511269632)(1 + 0.21) = 1.0511269632 × 1.21 = 1.271863625472, held exactly
    assert b.tax_num * 10**12 == 1_271_863_625_472 * b.tax_den
    sh = rd.units["SHARED"]
    assert sh.owners == (("REP", 6000), ("OWN2", 4000))  # basis points
    assert sh.max_energy == 5000 and sh.min_energy == 0  # 500.0 MWh in tenths
    assert not sh.sells and rd.units["SELLU"].sells
    assert rd.agents["REP"].represents == frozenset({"OWN2"})
    assert rd.users["rita"].roles == frozenset({"risk_officer"})


# ----------------------------------------------------------------------------- every error


def test_schema_errors_are_all_listed_by_path() -> None:
    doc = std_doc()
    doc["agents"][0]["guarantees"] = "12,50"  # bad decimal (comma)
    doc["agents"][1]["tax"] = {"vat": "21.5.1"}  # bad percentage
    doc["units"][0]["max_energy"] = "10.25"  # two decimals of MWh
    doc["agents"][2]["colour"] = "red"  # unknown field
    doc["units"][1]["voltage"] = 400  # unknown field
    del doc["units"][2]["kind"]  # missing field
    del doc["users"][0]["roles"]  # missing field
    errors = refused(doc)
    assert has(errors, "agents.0.guarantees", "12,50")
    assert has(errors, "agents.1.tax.vat", "21.5.1")
    assert has(errors, "units.0.max_energy", "10.25")
    assert has(errors, "agents.2.colour", "unknown field")
    assert has(errors, "units.1.voltage", "unknown field")
    assert has(errors, "units.2.kind")
    assert has(errors, "users.0.roles")
    assert len(errors) == 7, errors


def test_cross_reference_errors_are_all_listed_by_path() -> None:
    doc = std_doc()
    doc["users"][1]["agent"] = "NOBODY"  # unknown agent reference
    doc["agents"][2]["represents"] = ["OWN2", "GHOST"]  # unknown agent reference
    doc["units"][2]["owners"][1]["share"] = "30"  # 60 + 30 = 90 %
    doc["agents"].append(agent("BUYER"))  # duplicate agent code (index 5)
    doc["units"].append(unit("BUYU", "buy", "BUYER"))  # duplicate unit code (index 3)
    doc["units"].append(unit("STRANGE", "sell", "BUYER", [("SELLER", "100")]))  # index 4
    errors = refused(doc)
    assert has(errors, "users.1.agent", "NOBODY")
    assert has(errors, "agents.2.represents.1", "GHOST")
    assert has(errors, "units.2.owners", "90.00")
    assert has(errors, "agents.5", "duplicate", "BUYER")
    assert has(errors, "units.3", "duplicate", "BUYU")
    # the responsible agent neither owns the unit nor represents its owner
    assert has(errors, "units.4.responsible", "BUYER", "SELLER")
    assert len(errors) == 6, errors


def test_every_error_of_every_kind_is_listed_at_once() -> None:
    """One document with all seven kinds of error: the refusal lists every one, so the
    operator fixes the file in one pass (docs/refdata.md: 'every error listed')."""
    doc = std_doc()
    doc["users"][1]["agent"] = "NOBODY"  # unknown agent reference
    doc["units"][2]["owners"][1]["share"] = "30"  # shares sum to 90 %
    doc["agents"].append(agent("BUYER"))  # duplicate code (agents.5)
    doc["units"].append(unit("STRANGE", "sell", "BUYER", [("SELLER", "100")]))  # units.3
    doc["agents"][0]["guarantees"] = "12,50"  # bad decimal string
    doc["agents"][1]["colour"] = "red"  # unknown field
    del doc["units"][0]["kind"]  # missing field
    errors = refused(doc)
    assert has(errors, "agents.0.guarantees", "12,50"), errors
    assert has(errors, "agents.1.colour", "unknown field"), errors
    assert has(errors, "units.0.kind"), errors
    assert has(errors, "users.1.agent", "NOBODY"), errors
    assert has(errors, "units.2.owners", "90.00"), errors
    assert has(errors, "agents.5", "duplicate", "BUYER"), errors
    assert has(errors, "units.3.responsible", "BUYER", "SELLER"), errors


@pytest.mark.parametrize(("mutate", "path", "words"), [
    (lambda d: d["agents"][0].update(registered_to="2017-12-31"),
     "agents.0.registered_to", ("before",)),
    (lambda d: d["agents"][2].update(represents=["REP"]), "agents.2.represents.0",
     ("itself",)),
    (lambda d: d["units"][0].update(min_energy="600.0"), "units.0.min_energy", ("above",)),
    (lambda d: d["units"][0].update(valid_to="2017-01-01"), "units.0.valid_to", ("before",)),
    (lambda d: d["units"][2]["owners"].append({"agent": "REP", "share": "0"}),
     "units.2.owners.2.agent", ("REP", "twice")),
    (lambda d: d["units"][0]["owners"][0].update(agent="GHOST"), "units.0.owners.0.agent",
     ("GHOST",)),
    (lambda d: d["users"].append(user("bea", "BUYER")), "users.6", ("duplicate", "bea")),
    (lambda d: d.update(user_rate_limits={"nobody": {"rules": []}}),
     "user_rate_limits.nobody", ("unknown",)),
    (lambda d: d["units"][1].update(kind="both"), "units.1.kind", ()),
    (lambda d: d["units"][1].update(area="FR"), "units.1.area", ()),
    (lambda d: d["agents"][0].update(products=["PH", "MONTHLY"]), "agents.0.products.1", ()),
    (lambda d: d["users"][0].update(roles=["boss"]), "users.0.roles.0", ()),
    (lambda d: d["agents"][0].update(guarantees=12.5), "agents.0.guarantees", ()),
    (lambda d: d["units"][2]["owners"][0].update(share="60.123"), "units.2.owners.0.share",
     ("60.123",)),
], ids=["registered_to", "represents_itself", "min_above_max", "valid_to", "owner_twice",
        "unknown_owner", "duplicate_user", "rate_limit_unknown_user", "bad_kind", "bad_area",
        "bad_product", "bad_role", "float_money", "share_decimals"])
def test_single_error_is_reported_with_its_path(mutate: Any, path: str,
                                                words: tuple[str, ...]) -> None:
    doc = std_doc()
    mutate(doc)
    errors = refused(doc)
    assert has(errors, path, *words), errors


def test_a_document_without_agents_or_not_a_table_is_refused() -> None:
    assert has(refused({"agents": []}), "agents")
    assert refused([1, 2, 3])


def test_a_responsible_agent_representing_every_owner_is_accepted() -> None:
    """The responsible agent need not own the unit if it represents every owner."""
    doc = std_doc()
    doc["units"].append(unit("PTBUY", "buy", "REP", [("OWN2", "100")], area="PT"))
    assert load(doc).units["PTBUY"].responsible == "REP"
    doc["units"].append(unit("MIX", "buy", "REP", [("OWN2", "50"), ("SELLER", "50")]))
    errors = refused(doc)
    assert has(errors, "units.4.responsible", "REP", "SELLER"), errors
    assert not any("OWN2" in e for e in errors), errors


# ----------------------------------------------------------------------------- never half-loaded


def test_load_reference_data_command_refuses_a_wrong_document_whole() -> None:
    """The guard keeps the data it had: a wrong document changes nothing at all."""
    core = Core(std_doc(buyer_guarantees="100.00"))
    g = core.guard
    before_ref = g.ref
    before_digest = g.digest()
    bad = std_doc(buyer_guarantees="999.00")
    bad["agents"].append(agent("NEWCO", "5.00"))  # valid on its own
    bad["users"].append(user("nina", "NEWCO"))  # valid on its own
    bad["units"][2]["owners"][1]["share"] = "30"  # the one error
    ev = core.send(LoadReferenceData(json.dumps(bad)))
    r = only_reject(ev)
    assert r.code == "REFERENCE_DATA_INVALID"
    assert "units.2.owners" in r.reason and "90.00" in r.reason
    assert g.ref is before_ref
    assert "NEWCO" not in g.accounts and "nina" not in g.ref.users
    assert g.digest() == before_digest
    # NEWCO's trader cannot trade: nothing of the refused document was loaded
    ev = core.new("nina", "BUYU", BUY, 100, 1, agent_code="NEWCO")
    assert only_reject(ev).code == "AGENT_UNKNOWN"


def test_load_reference_data_command_into_an_empty_guard() -> None:
    e = Engine()
    g = RiskGuard.install(e, RefData())
    ev = e.apply(LoadReferenceData(json.dumps(std_doc(buyer_guarantees="50.00"))), T0)
    assert [n.kind for n in notices(ev)] == ["REFERENCE_DATA_LOADED"]
    assert g.account("BUYER")["reserved"] == 5000
    e.apply(CreateContract(CID, gate_closure(CID)), T0)
    e.apply(OpenContracts((CID,)), T0)
    # 10.0 MWh at 5.00 €/MWh = 50.00 €: fits exactly
    ev = e.apply(NewOrder("bea", "BUYER", "BUYU", CID, BUY, 500, 100), T0 + 1)
    assert not [x for x in ev if isinstance(x, Reject)]
    assert g.account("BUYER")["operative_limit"] == 0


def test_load_reference_data_only_by_the_market_operator() -> None:
    core = Core(std_doc())
    ev = core.send(LoadReferenceData(json.dumps(std_doc()), by="bea"))
    assert only_reject(ev).code == "NOT_PERMITTED"
    ev = core.send(LoadReferenceData(json.dumps(std_doc()), by="marta"))
    assert [n.kind for n in notices(ev)] == ["REFERENCE_DATA_LOADED"]


def test_load_does_not_modify_the_document() -> None:
    doc = std_doc()
    snapshot = copy.deepcopy(doc)
    load(doc)
    assert doc == snapshot


# ----------------------------------------------------------------------------- the demo file


def test_example_file_loads_with_the_features_the_docs_promise() -> None:
    text, rd = read_and_validate(EXAMPLE)
    assert json.loads(text)["agents"]  # canonical JSON of the document
    traders = {u.agent for u in rd.users.values() if "trader" in u.roles}
    assert len(traders) >= 3, traders
    assert len(rd.agents) >= 4
    # one agent represents another, which exists
    reps = [(a.code, r) for a in rd.agents.values() for r in a.represents]
    assert reps and all(r in rd.agents for _, r in reps)
    # a unit with shared ownership (shares in basis points sum to 100 %)
    shared = [u for u in rd.units.values() if len(u.owners) > 1]
    assert shared and all(sum(bp for _, bp in u.owners) == 10_000 for u in shared)
    # officers exist for the risk commands
    roles = set().union(*(u.roles for u in rd.users.values()))
    assert {"trader", "risk_officer", "system_operator", "market_operator"} <= roles


def test_example_file_has_buying_and_selling_units_in_es_and_pt() -> None:
    """docs/refdata.md: 'four units — selling and buying, in ES and PT'."""
    _, rd = read_and_validate(EXAMPLE)
    kinds = {(u.area, "sell" if u.sells else "buy") for u in rd.units.values()}
    assert kinds >= {("ES", "sell"), ("ES", "buy"), ("PT", "sell"), ("PT", "buy")}, kinds


def test_example_file_round_trips_through_the_load_command() -> None:
    """The canonical JSON the gateway journals is what LoadReferenceData accepts."""
    text, rd = read_and_validate(EXAMPLE)
    e = Engine()
    g = RiskGuard.install(e, RefData())
    ev = e.apply(LoadReferenceData(text), T0)
    assert [n.kind for n in notices(ev)] == ["REFERENCE_DATA_LOADED"]
    assert set(g.ref.agents) == set(rd.agents)
    assert {c: a["reserved"] for c in rd.agents for a in [g.account(c)]} == {
        c: a.guarantees for c, a in rd.agents.items()}


def test_example_dates_are_dates() -> None:
    doc = read_document(EXAMPLE)
    assert isinstance(doc["agents"][0]["registered_from"], date)


# ----------------------------------------------------------------------------- files


def test_toml_syntax_error_names_the_file(tmp_path: Path) -> None:
    p = tmp_path / "broken-refdata.toml"
    p.write_text('[[agents]]\ncode = "AG1\nname = "x"\n', encoding="utf-8")
    with pytest.raises(RefDataError) as exc:
        read_and_validate(p)
    assert len(exc.value.errors) == 1
    assert "broken-refdata.toml" in exc.value.errors[0]
    assert "broken-refdata.toml" in str(exc.value)


def test_json_syntax_error_names_the_file(tmp_path: Path) -> None:
    p = tmp_path / "broken.json"
    p.write_text('{"agents": [}', encoding="utf-8")
    with pytest.raises(RefDataError) as exc:
        read_and_validate(p)
    assert "broken.json" in exc.value.errors[0]


def test_missing_file_names_the_file(tmp_path: Path) -> None:
    p = tmp_path / "absent.toml"
    with pytest.raises(RefDataError) as exc:
        read_and_validate(p)
    assert "absent.toml" in exc.value.errors[0]


def test_a_valid_toml_with_wrong_content_lists_errors_by_path(tmp_path: Path) -> None:
    p = tmp_path / "wrong.toml"
    p.write_text(EXAMPLE.read_text(encoding="utf-8").replace(
        'share = "40"', 'share = "30"'), encoding="utf-8")
    with pytest.raises(RefDataError) as exc:
        read_and_validate(p)
    assert any(e.startswith("units.") and "90.00" in e for e in exc.value.errors), \
        exc.value.errors


def test_a_json_file_loads_like_the_toml(tmp_path: Path) -> None:
    p = tmp_path / "ref.json"
    p.write_text(json.dumps(std_doc()), encoding="utf-8")
    _, rd = read_and_validate(p)
    assert set(rd.units) == {"BUYU", "SELLU", "SHARED"}
