"""``ronda``: the command line.  This module is the composition root of the edges."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import orjson

from engine.config import PROFILES


def _cmd_replay(args: argparse.Namespace) -> int:
    from gateway.refdata_file import read_and_validate
    from gateway.replay import ScenarioError, replay
    from risk.refdata import RefDataError

    cfg = PROFILES[args.profile]
    refdata_json = None
    if args.refdata:
        try:
            refdata_json, _ = read_and_validate(args.refdata)
        except RefDataError as exc:
            print(f"ronda replay: {exc}", file=sys.stderr)
            return 2
    path = Path(args.scenario)
    try:
        fh = path.open("rb")
    except OSError as exc:
        print(f"ronda replay: cannot read {path}: {exc.strerror}", file=sys.stderr)
        return 2
    out = sys.stdout.buffer if args.output == "-" else open(args.output, "wb")  # noqa: SIM115
    try:
        with fh:
            for line in replay(fh, cfg, refdata_json):
                if args.trades:
                    kind = orjson.loads(line)["type"]
                    if kind not in ("trade", "state_hash"):
                        continue
                out.write(line + b"\n")
    except ScenarioError as exc:
        out.flush()
        print(f"ronda replay: {path}: {exc}", file=sys.stderr)
        return 2
    finally:
        if out is not sys.stdout.buffer:
            out.close()
    return 0


def _cmd_schema(args: argparse.Namespace) -> int:
    from gateway.protocol import json_schema

    sys.stdout.buffer.write(orjson.dumps(json_schema(), option=orjson.OPT_INDENT_2) + b"\n")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ronda", description="Continuous intraday trading engine")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("replay", help="replay a scenario (JSONL) and print its events")
    r.add_argument("scenario", help="scenario file, one command per line (docs/replay.md)")
    r.add_argument("--profile", choices=sorted(PROFILES), default="harmonised",
                   help="price and quantity bounds (default: harmonised)")
    r.add_argument("--trades", action="store_true",
                   help="print only the trades and the final state hash")
    r.add_argument("-o", "--output", default="-", help="output file (default: stdout)")
    r.add_argument("--refdata", metavar="FILE",
                   help="reference data (TOML or JSON, docs/refdata.md): turns the risk"
                        " checks on; without it every user is its own agent, unchecked")
    r.set_defaults(func=_cmd_replay)
    s = sub.add_parser("schema", help="print the JSON Schema of the wire protocol's requests")
    s.set_defaults(func=_cmd_schema)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    rc: int = args.func(args)
    return rc


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
