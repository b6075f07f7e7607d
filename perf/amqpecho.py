"""The least an AMQP RPC server can cost: a lean echo for ``perf/bench_amqp.py --echo lean``.

The benchmark's default baseline is an aio-pika RPC echo (the issue's "raw RPC echo"); it
costs about as much CPU per request as ronda's whole server, most of it in the client
library.  This one answers the same requests through the same broker with the same consumer
settings (a durable queue, prefetch 256, manual acks after the reply is published on the
same channel, no publisher confirms) on :class:`amqpload.LeanClient`: deliveries parsed in
place, the reply and the ack encoded by :mod:`gateway.amqpframes` and written once per read
from the socket.  No journal, no engine: what is left of a request's latency is the load
generator's and the broker's, the floor under any server on this machine.

    python perf/amqpecho.py AMQP_URL QUEUE      # prints "ready" once consuming
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from urllib.parse import unquote, urlsplit

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "perf")]

import amqpload  # noqa: E402
import orjson  # noqa: E402
import uvloop  # noqa: E402
from pamqp import commands  # noqa: E402

from gateway import amqpframes  # noqa: E402

CONSUMER = "echo"


class LeanEcho(amqpload.LeanClient):
    """Answers every delivery to :data:`CONSUMER` with ``{"type": "ack", "kind": <its
    type>}`` to its ``reply_to`` (``correlation_id``, else ``message_id``), then acks it; the
    frames of one read from the socket go out in one write."""

    def __init__(self) -> None:
        super().__init__()
        self._out: list[bytes] = []
        self.answered = 0

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._out:
            self._write(b"".join(self._out))
            self._out = []

    def _deliver(self, body: bytes) -> None:
        if self._cur is None:
            return
        self._cur = None
        try:
            kind = orjson.loads(body).get("type")
        except (orjson.JSONDecodeError, AttributeError):
            kind = None
        _size, _ctype, corr, mid, reply, _user = self._cur_header
        if reply:
            props = amqpframes.properties(content_type="application/json",
                                          correlation_id=corr or mid, message_type="ack",
                                          app_id="echo")
            self._out.append(amqpframes.publish(
                amqpload.CHANNEL, "", reply, props,
                orjson.dumps({"type": "ack", "kind": kind}), self._max_content))
        self._out.append(amqpframes.ack(amqpload.CHANNEL, self._cur_tag))
        self.answered += 1


async def main(url: str, name: str) -> None:
    u = urlsplit(url)
    loop = asyncio.get_running_loop()
    _, echo = await loop.create_connection(LeanEcho, u.hostname or "127.0.0.1", u.port or 5672)
    await echo.open(unquote(u.username or ""), unquote(u.password or ""), confirms=False)
    ch = amqpload.CHANNEL
    await echo._rpc(commands.Basic.Qos(prefetch_count=256), ch, commands.Basic.QosOk)
    await echo._rpc(commands.Exchange.Declare(exchange=name, exchange_type="direct",
                                              durable=True), ch, commands.Exchange.DeclareOk)
    await echo._rpc(commands.Queue.Declare(queue=name, durable=True), ch,
                    commands.Queue.DeclareOk)
    await echo._rpc(commands.Queue.Bind(queue=name, exchange=name, routing_key="request"),
                    ch, commands.Queue.BindOk)
    echo._consumers[CONSUMER] = lambda corr, body: None  # answered by LeanEcho._deliver
    await echo._rpc(commands.Basic.Consume(queue=name, consumer_tag=CONSUMER, no_ack=False),
                    ch, commands.Basic.ConsumeOk)
    print("ready", flush=True)
    assert echo._closed is not None
    await echo._closed
    raise SystemExit(f"the broker closed the echo's connection: {echo.error}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    uvloop.run(main(sys.argv[1], sys.argv[2]))
