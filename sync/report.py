"""Settlement reports, in decimal strings (never floats): an agent's entries for a delivery
day with totals per contract, round and unit, its guarantee balance history, and the
programs of its units (R49.1.3: entries are published to each agent for the daily
horizon)."""

from __future__ import annotations

import csv
import io
from typing import Any

from engine.config import fmt_price, fmt_qty
from sync.store import Store


def _eur(milli: int) -> str:
    sign = "-" if milli < 0 else ""
    a = abs(milli)
    return f"{sign}{a // 1000}.{a % 1000:03d}"


async def report(store: Store, agent: str, day: str) -> dict[str, Any]:
    entries = await store.query(
        "SELECT sync_id, trade_id, side, unit, contract, round, kind, energy, price, share_bp,"
        " base, iee, vat, total FROM entries WHERE agent = ? AND day = ?"
        " ORDER BY trade_id, side", (agent, day))
    totals: dict[str, dict[str, dict[str, int]]] = {"contract": {}, "round": {}, "unit": {}}
    for e in entries:
        for dim in ("contract", "round", "unit"):
            t = totals[dim].setdefault(str(e[dim]), {"DCIC": 0, "OPIC": 0, "energy": 0})
            t[e["kind"]] += e["total"]
            t["energy"] += e["energy"] * e["share_bp"] // 10_000
    history = await store.query(
        "SELECT sync_id, n, delta, reason, balance_after, at FROM balance_history"
        " WHERE agent = ? ORDER BY sync_id, n", (agent,))
    units = sorted({e["unit"] for e in entries})
    programs = []
    for u in units:
        # the periods of that delivery day: contract ids carry it (PH-YYYYMMDD-NN)
        programs += await store.query(
            "SELECT unit, period, energy, sync_id FROM programs WHERE unit = ?"
            " AND substr(period, 4, 8) = ? ORDER BY period", (u, day.replace("-", "")))
    auction = await store.query(
        "SELECT session, contract, unit, side, kind, energy, price, share_bp, base, iee, vat,"
        " total FROM auction_entries WHERE agent = ? AND day = ? ORDER BY session, contract,"
        " unit, side", (agent, day))
    rights = sum(e["total"] for e in entries if e["kind"] == "DCIC")
    obligations = sum(e["total"] for e in entries if e["kind"] == "OPIC")
    return {
        "agent": agent, "day": day, "currency": "EUR", "amount_unit": "milli-euro",
        "entries": [{**e, "price": fmt_price(e["price"]), "energy": fmt_qty(e["energy"]),
                     "share": fmt_price(e["share_bp"]), "base_eur": _eur(e["base"]),
                     "iee_eur": _eur(e["iee"]), "vat_eur": _eur(e["vat"]),
                     "total_eur": _eur(e["total"])} for e in entries],
        "totals": {"collection_rights": _eur(rights), "payment_obligations": _eur(obligations),
                   "net": _eur(rights - obligations),
                   **{f"by_{dim}": {k: {"DCIC": _eur(v["DCIC"]), "OPIC": _eur(v["OPIC"]),
                                        "energy_mwh": fmt_qty(v["energy"])}
                                    for k, v in sorted(t.items())}
                      for dim, t in totals.items()}},
        "auction_entries": [{**e, "price": fmt_price(e["price"]),
                             "energy": fmt_qty(e["energy"]),
                             "total_eur": _eur(e["total"])} for e in auction],
        "balance_history": [{**h, "delta_eur": _eur(h["delta"]),
                             "balance_after_eur": _eur(h["balance_after"])} for h in history],
        "programs": [{**p, "energy_mwh": fmt_qty(p["energy"])} for p in programs],
    }


def to_csv(rep: dict[str, Any]) -> str:
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(["section", "trade_id", "side", "unit", "contract", "round", "kind",
                "energy_mwh", "price_eur_mwh", "share_pct", "base_eur", "iee_eur", "vat_eur",
                "total_eur"])
    for e in rep["entries"]:
        w.writerow(["entry", e["trade_id"], e["side"], e["unit"], e["contract"], e["round"],
                    e["kind"], e["energy"], e["price"], e["share"],
                    e["base_eur"], e["iee_eur"], e["vat_eur"], e["total_eur"]])
    for dim in ("contract", "round", "unit"):
        for k, v in rep["totals"][f"by_{dim}"].items():
            w.writerow([f"total_{dim}", "", "", k if dim == "unit" else "",
                        k if dim == "contract" else "", k if dim == "round" else "", "",
                        v["energy_mwh"], "", "", "", "", "",
                        f"DCIC {v['DCIC']} OPIC {v['OPIC']}"])
    w.writerow(["total", "", "", "", "", "", "", "", "", "", "", "", "",
                f"net {rep['totals']['net']}"])
    w.writerow([])
    w.writerow(["balance", "sync_id", "delta_eur", "balance_after_eur", "reason"])
    for h in rep["balance_history"]:
        w.writerow(["balance", h["sync_id"], h["delta_eur"], h["balance_after_eur"],
                    h["reason"]])
    w.writerow([])
    w.writerow(["program", "unit", "period", "energy_mwh", "sync_id"])
    for p in rep["programs"]:
        w.writerow(["program", p["unit"], p["period"], p["energy_mwh"],
                    p["sync_id"]])
    return out.getvalue()
