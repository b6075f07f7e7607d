"""What the server remembers of the commands it executed under an idempotency key.

An AMQP request may be delivered more than once: the broker redelivers a request whose
acknowledgement it did not get (the server's connection dropped, the server crashed
after journaling the command), and a client resends a request it got no answer to, with
the same ``message_id``.  A repeat must be answered, never executed again: a guarantee
request or an auction bid executed twice is money moved twice, an order without a
``client_order_id`` is entered twice.

The key of a command is the sender and its request's ``message_id``; the journal keeps it
with the command, together with a digest of the request as received
(:data:`gateway.journal.RequestKey`), so that:

* a repeat reaching this server process is answered with the answer it was given (kept
  here encoded, out of the garbage collector's sight: :class:`Entry`);
* a repeat reaching a server restarted since (a crash between the journal and the
  acknowledgement, a resend after a restart) finds the command in the journal's replay:
  the answer is built again from the events the replay gave the command, which are the
  events the first execution gave it (the core is deterministic);
* a *different* request under a ``message_id`` already used (its digest differs) is
  refused, never taken for a repeat (that would swallow a new order) nor executed (that
  would make the key meaningless).

The memory is bounded: the last :attr:`Executed.limit` commands, and at most
:attr:`Executed.limit_items` items in all (an answer counts 1 plus the length of each of
its lists, a replayed command 1 plus its number of events), so that a few large answers
(a ``cancel_all`` of thousands of orders) cannot fill the memory.  A repeat older than that
is executed again, where the engine's own keys still refuse what they can (a repeated
``client_order_id``, a stale ``revision``, an order no longer active): ``docs/amqp.md``.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import Any, NamedTuple

import orjson

from engine.events import Ack, OrderReport, Reject
from gateway.core import CommandFailed
from gateway.journal import DIGEST_SIZE, Record, RequestKey

Message = dict[str, Any]

# the events an answer is made of besides the sender's order reports
_ANSWERED = (Reject, Ack, CommandFailed)

DEFAULT_LIMIT = 20_000
DEFAULT_LIMIT_ITEMS = 200_000


def request_digest(content_type: str, body: bytes) -> bytes:
    """The digest a request is told apart by: its (normalised) content type and its body,
    the bytes the server received.  A broker's redelivery and a client's resend of the
    same message give the same digest."""
    ctype = content_type.encode("utf-8", "surrogateescape")
    h = hashlib.blake2b(digest_size=DIGEST_SIZE)
    h.update(len(ctype).to_bytes(4, "big"))
    h.update(ctype)
    h.update(body)
    return h.digest()


def answer_items(msg: Message) -> int:
    """What an answer weighs against :attr:`Executed.limit_items`."""
    return 1 + sum(len(v) for v in msg.values() if type(v) is list)


class Entry(NamedTuple):
    """One command executed under a key: the answer it was given, or (recovered from the
    journal, not asked for again yet) the events it caused.

    :class:`Executed` keeps each as a plain tuple of these fields (a tuple subclass is
    never untracked by the cyclic collector), its answer encoded (``packed``): the memory
    holds the last 20,000 answers, and as dicts and lists they were nearly all the objects
    the collector walked at 2,000 AMQP requests/s (110,000; a full collection 54-72 ms,
    and every request in flight waited for it: docs/performance.md); a tuple of bytes,
    ints and None is untracked at the collector's first look.  An answer orjson cannot
    encode (none the protocol makes: it is how the JSON clients get theirs) is kept as
    the dict it is."""

    digest: bytes
    packed: bytes | Message | None
    events: list[Any] | None
    items: int

    @property
    def answer(self) -> Message | None:
        """The answer, as it was given (a new dict at each call)."""
        p = self.packed
        if type(p) is bytes:
            answer: Message = orjson.loads(p)
            return answer
        return p  # type: ignore[return-value]


def _pack(answer: Message) -> bytes | Message:
    try:
        return orjson.dumps(answer)
    except TypeError:  # orjson.JSONEncodeError: not JSON (see Entry)
        return answer


class Executed:
    """The commands executed under a key, per ``(user, message_id)``, most recent last."""

    def __init__(self, limit: int = DEFAULT_LIMIT,
                 limit_items: int = DEFAULT_LIMIT_ITEMS) -> None:
        self.limit = limit
        self.limit_items = limit_items
        # (user, message_id) -> the fields of an Entry, as a plain tuple (see Entry)
        self.entries: OrderedDict[tuple[str, str], tuple[Any, ...]] = OrderedDict()
        self.items = 0

    def __len__(self) -> int:
        return len(self.entries)

    def recovered(self, rec: Record, events: list[Any]) -> None:
        """A journaled command with a key, as the replay applied it (the sequencer's
        ``keyed`` callback at recovery).  Only the events its answer is made of are kept
        (:func:`gateway.session.answer`: refusals, acknowledgements, the failure, the
        sender's own reports of this request), and the entry weighs what they weigh: the
        other events (the counterparties' reports, public trades, book changes, the
        expiries the engine ran before the command) would make a command weigh ten times
        its answer, or more than the whole memory."""
        assert rec.key is not None
        message_id, digest = rec.key
        user = rec.origin
        rid = getattr(rec.command, "req_id", None)
        kept = [e for e in events if type(e) in _ANSWERED
                or (type(e) is OrderReport and e.user == user and e.req_id == rid)]
        self._put((user, message_id), (digest, None, kept, 1 + len(kept)))

    def put(self, user: str, key: RequestKey, answer: Message) -> bytes | None:
        """The answer a command executed under ``key`` was given; returns it as orjson
        encoded it (the body of a JSON reply), None if it could not."""
        message_id, digest = key
        packed = _pack(answer)
        self._put((user, message_id), (digest, packed, None, answer_items(answer)))
        return packed if type(packed) is bytes else None

    def get(self, user: str, message_id: str) -> Entry | None:
        """The command executed under this key, if it is remembered (it becomes the most
        recently used)."""
        k = (user, message_id)
        e = self.entries.get(k)
        if e is None:
            return None
        self.entries.move_to_end(k)
        return Entry._make(e)

    def answered(self, user: str, message_id: str, answer: Message) -> None:
        """The command under this key (a recovered one) was answered with ``answer``: keep
        the answer, the events are no longer needed."""
        k = (user, message_id)
        entry = self.entries.get(k)
        if entry is None:
            return
        new = (entry[0], _pack(answer), None, answer_items(answer))
        self.items += new[3] - entry[3]
        self.entries[k] = new
        self._trim()

    def _put(self, k: tuple[str, str], entry: tuple[Any, ...]) -> None:
        old = self.entries.pop(k, None)
        if old is not None:
            self.items -= old[3]
        self.entries[k] = entry
        self.items += entry[3]
        self._trim()

    def _trim(self) -> None:
        while self.entries and (len(self.entries) > self.limit
                                or self.items > self.limit_items):
            self.items -= self.entries.popitem(last=False)[1][3]
