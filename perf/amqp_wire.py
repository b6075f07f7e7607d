"""Where an AMQP request's time goes on the wire: a loopback capture of a
``perf/bench_amqp.py`` run, decoded by tshark's AMQP dissector, each request followed from
the trader's publish to the delivery of its reply, through the broker and the server.

    tcpdump -i lo -s 0 -w run.pcap tcp &        # Debian's tcpdump, during the open loop
    .venv/bin/python perf/bench_amqp.py …
    kill %1
    .venv/bin/python perf/amqp_wire.py run.pcap   # Debian's tshark

For every server on the capture (a connection that is delivered requests: ronda's, and
the benchmark's echo), p50 / p90 / p99 / max in µs of four spans, each between two
packets on the loopback (kernel timestamps, so the generator's own delays are not in them):

* ``broker_in``: the trader's publish → the broker's delivery to the server;
* ``server``: that delivery → the server's publish of the reply;
* ``broker_out``: the reply's publish → its delivery to the trader;
* ``total``: the trader's publish → the reply's delivery.

A request is recognised by its ``reply_to`` and ``correlation_id`` (unique per trader
connection in the benchmark); ronda's server is the one that also publishes to
``private.*``.  The capture itself loads the machine (tcpdump writes every packet): the
figures are for comparing spans, not for the target.  Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

# basic properties (AMQP 0-9-1, 4.2.6.1): the flag bits of those before reply_to
CORRELATION_ID_BIT = 1 << 10
REPLY_TO_BIT = 1 << 9
# (class, method) of the methods whose arguments carry a routing key
ROUTED = {(40, 30), (40, 40), (50, 20), (50, 50), (60, 40), (60, 50), (60, 60), (60, 71)}
PUBLISH, DELIVER = (60, 40), (60, 60)
FIELDS = ("frame.time_epoch", "tcp.srcport", "tcp.dstport", "amqp.type", "amqp.method.class",
          "amqp.method.method", "amqp.method.arguments.routing_key", "amqp.header.property-flags",
          "amqp.method.properties.correlation_id", "amqp.method.properties.reply_to")


def tshark(pcap: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(["tshark", "-r", str(pcap), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)


def broker_port(pcap: Path) -> int:
    """The port on most of the capture's packets: the broker's."""
    ports: Counter[int] = Counter()
    p = tshark(pcap, "-T", "fields", "-e", "tcp.srcport", "-e", "tcp.dstport")
    assert p.stdout is not None
    for line in p.stdout:
        for x in line.split():
            ports[int(x)] += 1
    p.wait()
    if not ports:
        raise SystemExit(f"{pcap}: no TCP packets")
    return ports.most_common(1)[0][0]


Message = tuple[float, int, int, tuple[int, int], "str | None", "str | None", "str | None"]


def messages(pcap: Path, port: int) -> Any:
    """(time, source port, destination port, (class, method), routing key, correlation_id,
    reply_to) of every publish and delivery, in capture order."""
    cmd = ["-d", f"tcp.port=={port},amqp", "-Y", "amqp", "-T", "fields", "-E", "separator=|",
           "-E", "occurrence=a", "-E", "aggregator=,"]
    for f in FIELDS:
        cmd += ["-e", f]
    p = tshark(pcap, *cmd)
    assert p.stdout is not None
    for line in p.stdout:
        yield from parse_packet(line)
    p.wait()


def parse_packet(line: str) -> list[Message]:
    """The publishes and deliveries of one packet, from tshark's line of :data:`FIELDS`.
    Its frames in order (``amqp.type``): a method frame (1) takes the next class and
    method, and the next routing key if its method has one; a content header (2) the next
    property flags, and a correlation_id and a reply_to when its flags say so (the lists
    hold only the values present, so the flags are what keeps them in step)."""
    cols = line.rstrip("\n").split("|")
    t, sp, dp = cols[:3]
    types, classes, methods, keys, flags, corrs, replies = (
        [x for x in col.split(",") if x] for col in cols[3:])
    out: list[Message] = []
    ki = fi = ci = ri = mi = 0
    pending: list[tuple[tuple[int, int], str | None]] = []  # methods awaiting their header
    for typ in types:
        if typ == "1":
            cm = (int(classes[mi]), int(methods[mi]))
            mi += 1
            key = None
            if cm in ROUTED:
                key = keys[ki] if ki < len(keys) else None
                ki += 1
            if cm in (PUBLISH, DELIVER):
                pending.append((cm, key))
        elif typ == "2":
            bits = int(flags[fi], 0)
            fi += 1
            corr = reply = None
            if bits & CORRELATION_ID_BIT:
                corr = corrs[ci]
                ci += 1
            if bits & REPLY_TO_BIT:
                reply = replies[ri]
                ri += 1
            if pending:  # (a header whose method was in an earlier packet: not followed)
                cm, key = pending.pop(0)
                out.append((float(t), int(sp), int(dp), cm, key, corr, reply))
    return out


def pct(xs: list[float]) -> dict[str, int]:
    xs = sorted(xs)
    if not xs:
        return {}
    at = {"p50": 0.5, "p90": 0.9, "p99": 0.99}
    out = {k: round(xs[min(len(xs) - 1, int(len(xs) * q))]) for k, q in at.items()}
    out["max"] = round(xs[-1])
    return out


def analyse(pcap: Path) -> dict[str, Any]:
    port = broker_port(pcap)
    seen: dict[tuple[str, str], dict[str, float]] = defaultdict(dict)
    served: Counter[int] = Counter()  # server port -> requests delivered to it
    private: set[int] = set()  # ports that publish to private.*
    where: dict[tuple[str, str], int] = {}  # request -> the server it went to
    for t, sp, dp, cm, key, corr, reply in messages(pcap, port):
        if cm == PUBLISH and dp == port:
            if key and key.startswith("private."):
                private.add(sp)
            elif reply and corr:  # a trader's request
                seen[(reply, corr)].setdefault("pub", t)
            elif key and corr:  # a server's reply: to the trader's queue
                seen[(key, corr)].setdefault("rep", t)
        elif cm == DELIVER and sp == port and corr:
            if reply:  # a request, to a server
                seen[(reply, corr)].setdefault("dlv", t)
                where.setdefault((reply, corr), dp)
                served[dp] += 1
            elif key:  # a reply, to its trader
                seen[(key, corr)].setdefault("got", t)
    result: dict[str, Any] = {"broker_port": port, "servers": []}
    for srv, n in served.most_common():
        spans: dict[str, list[float]] = defaultdict(list)
        for k, s in seen.items():
            if where.get(k) != srv or len(s) < 4:
                continue
            spans["broker_in"].append((s["dlv"] - s["pub"]) * 1e6)
            spans["server"].append((s["rep"] - s["dlv"]) * 1e6)
            spans["broker_out"].append((s["got"] - s["rep"]) * 1e6)
            spans["total"].append((s["got"] - s["pub"]) * 1e6)
        result["servers"].append({
            "server": "ronda" if srv in private else "echo", "port": srv,
            "delivered": n, "followed": len(spans["total"]),
            **{f"{name}_us": pct(xs) for name, xs in spans.items()}})
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("pcap", type=Path, help="a capture of the benchmark's loopback traffic")
    args = ap.parse_args()
    if shutil.which("tshark") is None:
        ap.error("tshark is not installed (Debian: apt-get install tshark)")
    if not args.pcap.is_file():
        ap.error(f"{args.pcap}: no such file")
    res = analyse(args.pcap)
    for s in res["servers"]:
        print(f"{s['server']} (port {s['port']}): {s['followed']} of {s['delivered']} "
              "requests followed", file=sys.stderr)
    print(json.dumps(res))


if __name__ == "__main__":
    main()
