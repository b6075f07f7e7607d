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


def _cmd_serve(args: argparse.Namespace) -> int:
    import asyncio
    import dataclasses
    import logging
    import signal

    from auctions.calendar import PROFILES as CALENDARS
    from gateway.protocol import parse_instant
    from gateway.sequencer import Clock, SequencerStopped
    from gateway.server import Config, EngineIdError, Server
    from risk.refdata import RefDataError

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    cal = None if args.no_calendar else dataclasses.replace(
        CALENDARS[args.calendar], gate_closure_min=args.gate_closure)
    try:
        start = parse_instant(args.start) if args.start else None
    except ValueError as exc:
        print(f"ronda serve: --start: {exc}", file=sys.stderr)
        return 2
    if not args.snapshot_every >= 0:  # (also NaN)
        print("ronda serve: --snapshot-every must be 0 or more seconds", file=sys.stderr)
        return 2
    clock = Clock(speed=args.speed, start=start) if (args.speed != 1 or start) else None
    cfg = Config(
        data_dir=Path(args.data_dir), host=args.host, port=args.port,
        refdata=Path(args.refdata), profile=args.profile, fsync=not args.no_fsync,
        sync_process=args.journal_sync == "process",
        calendar=cal,
        amqp_url=args.amqp_url, depth=args.depth, settlement_url=args.settlement_url,
        tls_cert=Path(args.tls_cert) if args.tls_cert else None,
        tls_key=Path(args.tls_key) if args.tls_key else None,
        tls_client_ca=Path(args.tls_client_ca) if args.tls_client_ca else None,
        accept_replay_divergence=args.accept_replay_divergence,
        snapshot_every_s=args.snapshot_every,
    )

    async def run() -> int:
        server = Server(cfg, clock)
        await server.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):  # before saying it serves: a stop
            loop.add_signal_handler(sig, stop.set)  # asked for at once is a clean one
        print(f"ronda: serving on http://{cfg.host}:{server.port} (WebSocket: /ws);"
              f" journal {cfg.data_dir / 'journal'}; recovered {server.recovered} records",
              flush=True)
        # a failed journal: nothing more can be made durable; stop, and exit with status 3
        server.sequencer.on_failure.append(lambda _exc: stop.set())
        bots = None
        if args.bots:
            from clients.bots import run_demo_bots

            url = f"ws://{cfg.host}:{server.port}/ws"
            # the bots find the contracts trading themselves (the calendar opens them)
            bots = loop.create_task(run_demo_bots(url, [], stop))
            print(f"ronda demo: bots trading; open http://{cfg.host}:{server.port}/ and log"
                  " in as ana / ana-demo-token (risk console: /console.html, rita)",
                  flush=True)
        await stop.wait()
        if bots is not None:
            try:  # let the bots cancel their orders and log out
                await asyncio.wait_for(bots, 5)
            except (TimeoutError, Exception):
                bots.cancel()
        await server.stop()
        rc = 3 if server.failure is not None else 0
        if rc:
            print(f"ronda serve: the journal failed ({server.failure}); stopped. Restart to "
                  "replay the journal.", file=sys.stderr)
        return rc

    from gateway.core import ReplayDiverged
    from sync.store import StoreOwned

    try:
        import uvloop

        rc = uvloop.run(run())
    except SequencerStopped as exc:  # the journal failed while the server started
        print(f"ronda serve: the journal failed at start ({exc}); nothing was served.",
              file=sys.stderr)
        return 3
    except (StoreOwned, EngineIdError) as exc:
        print(f"ronda serve: {exc}. Nothing was served.", file=sys.stderr)
        return 2
    except ReplayDiverged as exc:
        print(f"ronda serve: {exc}. Nothing was served. Run the server that wrote the "
              "journal, or, if the change of behaviour is deliberate and the traders are to "
              "be told, start with --accept-replay-divergence.", file=sys.stderr)
        return 4
    except RefDataError as exc:
        print(f"ronda serve: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"ronda serve: {exc}", file=sys.stderr)
        return 2
    return rc


def _cmd_demo(args: argparse.Namespace) -> int:
    """``ronda demo``: a fresh demo data folder, the simulated clock, and bots (market makers,
    aggressive takers, an iceberg, a linked basket), so that the web screen shows a living
    market within seconds."""
    import shutil

    shutil.rmtree(args.data_dir, ignore_errors=True)
    ns = build_parser().parse_args([
        "serve", "--data-dir", args.data_dir, "--port", str(args.port), "--speed",
        str(args.speed), "--bots", "--no-fsync", "--calendar", "omie-2018"])
    rc: int = ns.func(ns)
    return rc


def _cmd_journal_snapshot(args: argparse.Namespace) -> int:
    from gateway import snapshot
    from gateway.journal import JournalError

    if args.synced_through < 0:
        print("ronda journal snapshot: --synced-through must be 0 or more", file=sys.stderr)
        return 2
    try:
        made = snapshot.make(Path(args.data_dir), args.profile, args.synced_through)
    except (JournalError, OSError) as exc:
        print(f"ronda journal snapshot: {exc}", file=sys.stderr)
        return 1
    if made is None:
        print("ronda journal snapshot: no record since the last snapshot")
    else:
        print(f"ronda journal snapshot: record {made[0]} ({made[1]} records replayed)")
    return 0


def _cmd_journal_export(args: argparse.Namespace) -> int:
    from gateway.codec import encode
    from gateway.journal import Journal, JournalError
    from gateway.wire import fmt_instant

    out = sys.stdout.buffer if args.output == "-" else open(args.output, "wb")  # noqa: SIM115
    try:
        with Journal(Path(args.journal), fsync=False) as j:
            for rec in j.records():
                line = {"at": fmt_instant(rec.ts), "origin": rec.origin,
                        "command": encode(rec.command)}
                if rec.key is not None:  # the AMQP request's idempotency key
                    line["message_id"], line["digest"] = rec.key[0], rec.key[1].hex()
                out.write(orjson.dumps(line) + b"\n")
    except JournalError as exc:
        print(f"ronda journal export: {exc}", file=sys.stderr)
        return 2
    finally:
        if out is not sys.stdout.buffer:
            out.close()
    return 0


def _cmd_settlement_report(args: argparse.Namespace) -> int:
    import asyncio
    from datetime import date

    from sync.report import report, to_csv
    from sync.store import open_store

    try:
        date.fromisoformat(args.day)
    except ValueError:
        print(f"ronda settlement report: --day {args.day!r} is not YYYY-MM-DD", file=sys.stderr)
        return 2
    path = Path(args.data_dir) / "settlement.sqlite"
    if not args.store and not path.exists():
        print(f"ronda settlement report: no settlement store at {path}", file=sys.stderr)
        return 2

    async def run() -> dict:  # type: ignore[type-arg]
        store = open_store(args.store, Path(args.data_dir))
        await store.open()
        try:
            return await report(store, args.agent, args.day)
        finally:
            await store.close()

    rep = asyncio.run(run())
    if args.format == "csv":
        sys.stdout.write(to_csv(rep))
    else:
        sys.stdout.buffer.write(orjson.dumps(rep, option=orjson.OPT_INDENT_2) + b"\n")
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

    from gateway.server import DEFAULT_REFDATA

    v = sub.add_parser("serve", help="run the trading platform (WebSocket, web screen, AMQP)")
    v.add_argument("--data-dir", default="data", help="journal and stores (default: ./data)")
    v.add_argument("--host", default="127.0.0.1")
    v.add_argument("--port", type=int, default=8080)
    v.add_argument("--refdata", default=str(DEFAULT_REFDATA),
                   help="reference data file (default: the demo, examples/refdata.toml)")
    v.add_argument("--profile", choices=sorted(PROFILES), default="harmonised")
    from auctions.calendar import PROFILES as CALENDARS

    v.add_argument("--calendar", choices=sorted(CALENDARS), default="omie-2018",
                   help="trading calendar: contracts, gate closures, auctions (docs/auctions.md)")
    v.add_argument("--gate-closure", type=int, default=60, help="minutes before delivery")
    v.add_argument("--speed", type=float, default=1.0,
                   help="simulated clock: this many times faster than real time")
    v.add_argument("--start", help="simulated clock: the instant it starts at (ISO-8601)")
    v.add_argument("--bots", action="store_true", help="run the simulated traders too")
    v.add_argument("--depth", type=int, default=20, help="local order list entries per side")
    v.add_argument("--no-calendar", action="store_true",
                   help="do not open and close contracts by the calendar")
    v.add_argument("--no-fsync", action="store_true",
                   help="journal without fsync (loses durability on a machine crash)")
    v.add_argument("--journal-sync", choices=("process", "loop"), default="process",
                   help="where the journal's sync of a batch of 8 records or more waits: "
                        "a helper process, the event loop serving meanwhile (the default), "
                        "or the event loop's own thread; smaller batches are synced on the "
                        "event loop's thread either way")
    v.add_argument("--accept-replay-divergence", action="store_true",
                   help="start even if replaying the journal does not give the state the "
                        "server had at one of its checkpoints (after a deliberate change of "
                        "the engine's behaviour); logged")
    v.add_argument("--snapshot-every", type=float, default=300.0, metavar="SECONDS",
                   help="write a snapshot of the journal's state this often, in a child "
                        "process, so that a restart replays only the records after it "
                        "(default: 300; 0: never)")
    v.add_argument("--amqp-url", help="also serve AMQP through this RabbitMQ broker")
    v.add_argument("--settlement-url",
                   help="postgresql://… for the settlement store (default: SQLite in the"
                        " data folder)")
    v.add_argument("--tls-cert", help="serve wss:// with this certificate (PEM)")
    v.add_argument("--tls-key", help="the certificate's key (PEM)")
    v.add_argument("--tls-client-ca", help="require client certificates from this CA;"
                   " the certificate's CN is the user")
    v.set_defaults(func=_cmd_serve)

    d = sub.add_parser("demo", help="the embedded platform on a simulated clock with bots")
    d.add_argument("--data-dir", default="data-demo")
    d.add_argument("--port", type=int, default=8080)
    d.add_argument("--speed", type=float, default=60.0,
                   help="simulated minutes per real second (default 60)")
    d.set_defaults(func=_cmd_demo)

    jn = sub.add_parser("journal", help="journal tools")
    jsub = jn.add_subparsers(dest="journal_command", required=True)
    je = jsub.add_parser("export", help="write a journal as a replay scenario (JSONL)")
    je.add_argument("journal", help="the journal folder (DATA_DIR/journal)")
    je.add_argument("-o", "--output", default="-")
    je.set_defaults(func=_cmd_journal_export)

    js = jsub.add_parser("snapshot", help="write a snapshot of the state the journal's "
                         "records build, so that a restart replays only the records after "
                         "it (ronda serve runs this every --snapshot-every seconds)")
    js.add_argument("data_dir", help="the server's data folder (DATA_DIR)")
    js.add_argument("--profile", default="harmonised", choices=sorted(PROFILES),
                    help="the server's engine profile (default: harmonised)")
    js.add_argument("--synced-through", type=int, default=0, metavar="ROUND",
                    help="the last round the settlement store has synchronised: the "
                         "snapshot leaves out the trades of the rounds up to it")
    js.set_defaults(func=_cmd_journal_snapshot)

    st = sub.add_parser("settlement", help="settlement store tools")
    ssub = st.add_subparsers(dest="settlement_command", required=True)
    sr = ssub.add_parser("report", help="an agent's entries, totals, balance and programs")
    sr.add_argument("--agent", required=True)
    sr.add_argument("--day", required=True, help="delivery day, YYYY-MM-DD")
    sr.add_argument("--format", choices=("json", "csv"), default="json")
    sr.add_argument("--data-dir", default="data", help="where settlement.sqlite is")
    sr.add_argument("--store", help="postgresql://… (default: SQLite in the data folder)")
    sr.set_defaults(func=_cmd_settlement_report)
    from clients.risk_cli import add_arguments as risk_arguments

    rk = sub.add_parser("risk", help="the risk officer's console for scripts (docs/risk.md)")
    risk_arguments(rk)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    rc: int = args.func(args)
    return rc


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
