"""perf/amqp_wire.py reads tshark's fields of a capture: the lists tshark gives per packet
hold only the values present, so the content headers' property flags are what keeps the
correlation_ids and reply_tos in step with their messages.  These lines are tshark's own,
from a capture of a benchmark run (a server's packet of replies and private-stream
batches), and deliveries made up in the same form."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "perf"))
import amqp_wire

# five replies (content-type, delivery-mode, correlation_id, type, app-id: 0x9428), four
# private-stream batches (no correlation_id: 0xb0a8), then an ack; from port 59474
REPLIES = ("1796567854.598724000|59474|52605|1,2,3,1,2,3,1,2,3,1,2,3,1,2,3,1,2,3,1,2,3,"
           "1,2,3,1,2,3,1|60,60,60,60,60,60,60,60,60,60|40,40,40,40,40,40,40,40,40,80|"
           "amq.gen-f6,amq.gen-Bt,amq.gen-4S,amq.gen-aR,amq.gen-aR,private.u0,private.u1,"
           "private.u2,private.u3|0x9428,0x9428,0x9428,0x9428,0x9428,0xb0a8,0xb0a8,0xb0a8,"
           "0xb0a8|1,1,1,1,2|")


def test_replies_keep_their_correlation_ids_and_batches_have_none() -> None:
    got = amqp_wire.parse_packet(REPLIES)
    assert [(m[4], m[5], m[6]) for m in got] == [
        ("amq.gen-f6", "1", None), ("amq.gen-Bt", "1", None), ("amq.gen-4S", "1", None),
        ("amq.gen-aR", "1", None), ("amq.gen-aR", "2", None),
        ("private.u0", None, None), ("private.u1", None, None), ("private.u2", None, None),
        ("private.u3", None, None)]
    assert all(m[3] == amqp_wire.PUBLISH and (m[1], m[2]) == (59474, 52605) for m in got)
    assert got[0][0] == 1796567854.598724


def test_a_header_without_correlation_id_does_not_shift_the_ones_after_it() -> None:
    """A batch (no correlation_id) between two replies: the second reply takes the second
    id, not the batch.  Deliveries of requests carry a reply_to (0x9628: the reply's flags
    and reply_to), each taken in step."""
    line = ("1.5|52605|59474|1,2,3,1,2,3,1,2,3,1,2,3|60,60,60,60|40,40,60,60|"
            "q1,private.u0,request,request|0x9428,0xb0a8,0x9628,0x9628|7,8,9|rA,rB")
    got = amqp_wire.parse_packet(line)
    assert [(m[3], m[4], m[5], m[6]) for m in got] == [
        (amqp_wire.PUBLISH, "q1", "7", None), (amqp_wire.PUBLISH, "private.u0", None, None),
        (amqp_wire.DELIVER, "request", "8", "rA"), (amqp_wire.DELIVER, "request", "9", "rB")]


def test_other_methods_are_skipped_and_a_routing_key_of_a_binding_is_consumed() -> None:
    """A queue.bind (class 50, method 20) carries a routing key too; a basic.ack none; a
    content header whose method came in an earlier packet is not followed."""
    line = "2.0|1|2|1,1,2,3,1|50,60,60|20,40,80|bind-key,pubkey|0x9428|5|"
    got = amqp_wire.parse_packet(line)
    assert [(m[3], m[4], m[5]) for m in got] == [(amqp_wire.PUBLISH, "pubkey", "5")]
    assert amqp_wire.parse_packet("3.0|1|2|2,3||||0x9428|5|") == []
