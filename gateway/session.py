"""A client session, independent of the transport (WebSocket or AMQP).

It logs a user in, authorises every request by role and ownership, turns requests into
commands for the sequencer, answers each request exactly once (``ack``, ``reject`` or
``error``), serves queries and subscriptions, and owns the bounded outbound queue of the
connection:

* a slow consumer's book streams are conflated: pending book deltas are dropped and a fresh
  snapshot is sent once the queue has room again;
* a consumer that stays behind — more than ``max_queue`` messages waiting for longer than
  ``max_behind_s`` — is disconnected with a reason, and so is one whose backlog reaches
  :data:`HARD_QUEUE_FACTOR` times ``max_queue``.  What one commit produces for a session
  (a ``cancel_all`` of thousands of orders: one report each) never counts against it
  until the session has had the time to take it.  Memory never grows without bound: at
  most the hard bound plus one commit's messages.

Malformed input gets an ``error`` naming the field; a client that keeps sending malformed
messages is throttled and then disconnected.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
from collections import deque
from collections.abc import Callable
from datetime import date
from typing import TYPE_CHECKING, Any, Protocol

from engine.events import Ack, OrderReport, Reject
from gateway.core import CommandFailed, SessionMark
from gateway.fanout import account_message
from gateway.inbound import clip, shown
from gateway.journal import RequestKey
from gateway.protocol import (
    ProtocolError,
    fast_command,
    parse_operator,
    parse_request,
    to_command,
    to_operator_command,
)
from gateway.sequencer import Done, SequencerStopped
from gateway.wire import event_to_wire_last, fmt_instant

if TYPE_CHECKING:
    from gateway.server import Server

log = logging.getLogger("ronda.session")

TRADER = "trader"
OFFICER = "risk_officer"
MARKET = "market_operator"
AUCTION = "auction_operator"
SYSTEM = "system_operator"

# which roles may send which request (everything else is refused with NOT_PERMITTED)
ROLES: dict[str, frozenset[str]] = {
    **{t: frozenset({TRADER}) for t in (
        "order_entry", "basket_entry", "order_modify", "order_cancel", "order_deactivate",
        "order_activate", "cancel_all", "guarantee_request", "set_breach_action",
        "auction_bid", "auction_bid_cancel", "set_reactivation")},
    **{t: frozenset({AUCTION, MARKET}) for t in ("auction_run", "auction_delay",
                                                 "auction_cancel")},
    **{t: frozenset({OFFICER}) for t in (
        "set_guarantees", "decide_guarantee_request", "suspend_agent", "reinstate_agent",
        "set_rate_limits")},
    "interrupt_contracts": frozenset({OFFICER, MARKET}),
    "resume_contracts": frozenset({OFFICER, MARKET}),
    **{t: frozenset({SYSTEM}) for t in ("set_program", "set_unavailability",
                                        "set_limitation")},
    **{t: frozenset({MARKET, AUCTION}) for t in (
        "contract_create", "contract_open", "contract_close", "contract_interrupt",
        "contract_resume", "hibernate", "reactivate", "time")},
    "cancel_agent_orders": frozenset({MARKET, OFFICER}),
}
OPERATOR_TYPES = frozenset({"contract_create", "contract_open", "contract_close",
                            "contract_interrupt", "contract_resume", "hibernate",
                            "reactivate", "cancel_agent_orders", "time"})
STAFF = frozenset({OFFICER, MARKET, AUCTION, SYSTEM})
SESSION_TYPES = frozenset({"login", "logout", "subscribe", "unsubscribe", "heartbeat",
                           "query_contracts", "query_orders", "query_trades",
                           "query_account", "query_book", "query_throttling", "query_me",
                           "query_settlement", "query_agents", "query_public_trades",
                           "query_audit"})


_BASE = frozenset({"type", "req_id"})
SESSION_FIELDS: dict[str, frozenset[str]] = {
    "login": _BASE | {"user", "token", "on_disconnect"},
    "logout": _BASE, "heartbeat": _BASE, "query_me": _BASE, "query_contracts": _BASE,
    "subscribe": _BASE | {"stream", "contract", "agent"},
    "unsubscribe": _BASE | {"stream", "contract", "agent"},
    "query_orders": _BASE | {"agent"}, "query_trades": _BASE | {"agent"},
    "query_account": _BASE | {"agent"}, "query_book": _BASE | {"contract"},
    "query_throttling": _BASE | {"user"}, "query_settlement": _BASE | {"agent", "day"},
    "query_agents": _BASE, "query_public_trades": _BASE | {"contract"},
    "query_audit": _BASE | {"agent", "before", "limit"},
}
SETTLEMENT_QUERIES = 4  # query_settlement tasks per session at a time, at most
# Query answers can be large (an agent's orders, trades, audit entries...) and cost the
# event loop to build.  A connection may have at most QUERY_BACKLOG of them built and not
# yet written to its socket, holding at most QUERY_BACKLOG_ITEMS listed items in all; at
# that point the server stops reading the connection (as for requests in flight) until
# they are written, and goes on in a later turn of the event loop.  This bounds both the
# memory a client that does not read can make the server hold and the time one burst of
# queries takes the event loop from everybody else.  (A transport that cannot stop
# reading gets RATE_LIMIT for a query beyond the bound.)
QUERY_BACKLOG = 8
QUERY_BACKLOG_ITEMS = 10_000
QUERIES = frozenset({"query_agents", "query_audit", "query_public_trades", "query_contracts",
                     "query_orders", "query_trades", "query_account", "query_book",
                     "query_settlement"})
AUDIT_LIMIT = 1000  # entries per query_audit answer, at most
WRITE_BATCH = 256  # queued messages handed to the transport at once, at most
# the backlog (what was queued before the current commit) at which a session is let go at
# once, in multiples of max_queue
HARD_QUEUE_FACTOR = 10


class Transport(Protocol):
    async def send(self, msg: dict[str, Any]) -> None: ...

    async def send_many(self, msgs: list[dict[str, Any]]) -> None: ...

    # optional: ``send_now(msgs) -> bool`` writes without waiting when nothing would make
    # it wait, and returns False (nothing sent) otherwise (gateway/ws.py)

    async def close(self, code: int, reason: str) -> None: ...

    def abort(self) -> None: ...


def _ignore(events: list[Any] | None, exc: BaseException | None) -> None:
    """The outcome of a record nobody waits for (a :class:`SessionMark`)."""


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Session:
    # the session lives as long as one connection (WebSocket); an AMQP session does not
    connection_bound = True

    def __init__(self, server: Server, transport: Transport, cert_user: str | None = None,
                 max_queue: int = 2000, ticks: bool = False, max_inflight: int = 1000,
                 max_behind_s: float = 5.0) -> None:
        self.server = server
        self.ticks = ticks  # msgpack: prices and quantities may come as integer ticks
        self.transport = transport
        self.cert_user = cert_user
        self.user: str | None = None
        self.agent: str | None = None
        self.roles: frozenset[str] = frozenset()
        self.on_disconnect = "none"
        self._watched = False  # a SessionMark(+1) journaled for this connection
        self.max_queue = max_queue
        self.hard_queue = max_queue * HARD_QUEUE_FACTOR
        self.max_behind_s = max_behind_s
        self._burst = 0  # messages queued since the last flush: the current commit's
        # messages of commits larger than max_queue still waiting (at most): a consumer
        # that reads them is not let go by the hard bound while they drain
        self._exempt = 0
        self._behind_since: float | None = None  # more than max_queue waiting since then
        # inbound back-pressure: requests submitted and not yet answered; at the limit the
        # transport stops reading (``pause_input``) until half of them are answered
        self.max_inflight = max_inflight
        self.inflight = 0
        self._input_paused = False
        self._out: deque[dict[str, Any]] = deque()
        self._wake = asyncio.Event()
        self._stale_books: set[str] = set()
        self._closing: str | None = None
        self._flush_first = True
        self.writer_task: asyncio.Task[None] | None = None
        self._writer_idle = False  # the writer task is asleep, not in the middle of a send
        self._flush_due = False  # a _flush callback is scheduled
        self._send_now = getattr(transport, "send_now", None)
        self._errors: deque[float] = deque()
        self._failed_logins = 0
        # a logout waiting for the answers in flight: how to send its ack then
        self._logout_reply: Callable[[dict[str, Any]], None] | None = None
        self._logout_req: Any = None
        self._logging_out = False
        self._settlements = 0  # query_settlement tasks running
        # query answers in the outbound queue: (messages pushed when it was, its items)
        self._queries: deque[tuple[int, int]] = deque()
        self._query_items = 0
        self._queries_full = False  # input paused until the query answers are written
        self._pushed = 0  # messages ever put in the outbound queue
        self.sent = 0
        self.dropped_book_messages = 0

    # ------------------------------------------------------------------ outbound

    def _push(self, msg: dict[str, Any]) -> bool:
        if self._closing:
            return False
        if len(self._out) - self._burst - self._exempt >= self.hard_queue:
            return False
        self._out.append(msg)
        self._burst += 1
        self._pushed += 1
        if not self._flush_due:
            self._flush_due = True
            asyncio.get_running_loop().call_soon(self._flush)
        return True

    def _flush(self) -> None:
        """What was queued since the loop last came here (a whole commit's answers and
        stream messages, typically) goes out in one write, from this plain callback, when
        the transport can take it without waiting; the writer task is woken only for what
        may wait (flow control, closing, conflated book streams).  Waking the task for
        every batch cost more than the write itself at 5,000 orders/s."""
        self._flush_due = False
        if self._burst > self.max_queue:  # one commit's many messages: exempt while they go
            self._exempt = min(len(self._out), self._exempt + self._burst)
        self._burst = 0
        out = self._out
        if not out:
            return
        send_now = self._send_now
        if (send_now is None or not self._writer_idle or self._closing
                or self._stale_books):
            self._wake.set()
            self._check_behind()
            return
        try:
            while out:
                n = len(out) if len(out) < WRITE_BATCH else WRITE_BATCH
                batch = [out.popleft() for _ in range(n)]
                if not send_now(batch):
                    out.extendleft(reversed(batch))  # the writer sends them, in order
                    self._wake.set()
                    self._check_behind()
                    return
                self.sent += n
                if self._exempt:
                    self._exempt = max(0, self._exempt - n)
                if self._queries_full:
                    self._queries_written()
        except Exception as exc:
            # send_now refuses (returns False) when the connection is closing, so this is a
            # message that cannot be encoded: a defect.  Going on would leave a gap in the
            # answers and the streams, so the session ends, saying why.
            log.exception("sending failed; ending the session")
            self._drop(f"internal error: cannot send a message ({type(exc).__name__})")

    def _check_behind(self) -> None:
        """After a flush or a write: start, end or judge a period with more than
        ``max_queue`` messages waiting (a timer judges it too, should nothing else happen
        meanwhile)."""
        if len(self._out) <= self.max_queue or self._closing:
            self._behind_since = None
            return
        loop = asyncio.get_running_loop()
        if self._behind_since is None:
            self._behind_since = loop.time()
            loop.call_later(self.max_behind_s, self._behind_timeout)
        elif loop.time() - self._behind_since >= self.max_behind_s:
            self._drop(f"slow consumer: more than {self.max_queue} messages waiting for"
                       f" {self.max_behind_s:g} s")

    def _behind_timeout(self) -> None:
        if self._behind_since is None or self._closing:
            return
        loop = asyncio.get_running_loop()
        left = self._behind_since + self.max_behind_s - loop.time()
        if left > 0 and len(self._out) > self.max_queue:  # (a timer a hair early)
            loop.call_later(left + 0.001, self._behind_timeout)
            return
        self._check_behind()

    def send(self, msg: dict[str, Any]) -> None:
        """Queue a message that must not be lost (answers, private stream...)."""
        if not self._push(msg) and not self._closing:
            self._drop(f"slow consumer: {len(self._out)} messages waiting")

    def _close_after_flush(self, reason: str) -> None:
        """Close once what is queued has gone out (logout, failed logins, flood): the
        answers that explain the close are sent first."""
        if self._closing is None:
            self._closing = reason
            self._flush_first = True
            self._wake.set()

    def _drop(self, reason: str) -> None:
        """A consumer that cannot keep up: stop feeding it at once, tell it if the socket
        still takes a message, and cut the connection — without waiting for it to read."""
        self._closing = reason
        self._flush_first = False
        self._out.clear()
        self.server.hub.unsubscribe_all(self)
        if self.user is not None:
            self.server.sessions_of[self.user].discard(self)
        self._wake.set()
        asyncio.get_running_loop().create_task(self._kill(reason))

    async def _kill(self, reason: str) -> None:
        if self.writer_task is not None:
            self.writer_task.cancel()
        try:
            await asyncio.wait_for(self.transport.send(
                {"type": "error", "code": "DISCONNECTED", "reason": reason}), 0.5)
            await asyncio.wait_for(self.transport.close(1008, reason), 1.0)
        except (TimeoutError, Exception):
            self.transport.abort()

    def deliver(self, msg: dict[str, Any]) -> None:
        self.send(msg)

    def deliver_book(self, contract: str, msg: dict[str, Any]) -> None:
        """Book deltas of a slow consumer are conflated into a fresh snapshot later."""
        if contract in self._stale_books:
            self.dropped_book_messages += 1
            return
        if len(self._out) >= self.max_queue * 3 // 4 or not self._push(msg):
            self._stale_books.add(contract)
            self.dropped_book_messages += 1

    async def writer(self) -> None:
        """Drain the outbound queue into the transport (one task per connection)."""
        try:
            while True:
                while not self._out and not self._closing:
                    self._wake.clear()
                    if self._stale_books and len(self._out) < self.max_queue // 2:
                        self._refresh_books()
                        continue
                    self._writer_idle = True
                    try:
                        await self._wake.wait()
                    finally:
                        self._writer_idle = False
                if self._closing and (not self._out or not self._flush_first):
                    if self._flush_first:  # say why, then go
                        await self.transport.send({"type": "error", "code": "DISCONNECTED",
                                                   "reason": self._closing})
                    await self.transport.close(1008, self._closing)
                    return
                out = self._out
                n = min(len(out), WRITE_BATCH)
                batch = [out.popleft() for _ in range(n)]
                await self.transport.send_many(batch)
                self.sent += n
                if self._exempt:
                    self._exempt = max(0, self._exempt - n)
                if self._behind_since is not None:
                    self._check_behind()
                if self._queries_full:
                    self._queries_written()
                if self._stale_books and len(self._out) < self.max_queue // 2:
                    self._refresh_books()
        except asyncio.CancelledError:
            raise
        except Exception:  # the connection went away
            return

    def _refresh_books(self) -> None:
        for contract in sorted(self._stale_books):
            if len(self._out) >= self.max_queue // 2:
                return
            self._stale_books.discard(contract)
            snap = self.server.hub.book_snapshot(contract)
            snap["conflated"] = True
            self._push(snap)

    # ------------------------------------------------------------------ inbound

    def error(self, field: str, reason: str, req_id: Any = None, code: str = "INVALID_FIELD"
              ) -> None:
        msg: dict[str, Any] = {"type": "error", "code": code, "field": field, "reason": reason}
        if isinstance(req_id, str):
            msg["req_id"] = req_id
        self.send(msg)
        self._count_error()

    def _count_error(self) -> None:
        """A client flooding malformed input is throttled, then disconnected."""
        now = asyncio.get_running_loop().time()
        self._errors.append(now)
        while self._errors and self._errors[0] < now - 10:
            self._errors.popleft()
        n = len(self._errors)
        if n > self.server.config.max_errors_per_10s:
            self._close_after_flush(f"too many malformed messages ({n} in 10 s, those "
                                    "answered THROTTLED included)")

    def throttled(self) -> bool:
        now = asyncio.get_running_loop().time()
        while self._errors and self._errors[0] < now - 10:
            self._errors.popleft()
        return len(self._errors) > self.server.config.max_errors_per_10s // 2

    def reject(self, req_id: Any, code: str, reason: str, **extra: Any) -> None:
        msg: dict[str, Any] = {"type": "reject", "code": code, "reason": reason}
        if isinstance(req_id, str):
            msg["req_id"] = req_id
        msg.update(extra)
        self.send(msg)

    def handle(self, data: Any, str_keys: bool = False) -> None:
        """One decoded message.  Never raises for bad input.  ``str_keys``: the decoder
        gives only text keys (JSON), so they need no check."""
        if self._closing or self._logging_out:
            return
        if not isinstance(data, dict):
            self.error("message", f"must be an object, got {type(data).__name__}")
            return
        if not str_keys and not all(isinstance(k, str) for k in data):
            self.error("message", "every field name must be a string")
            return
        req_id = data.get("req_id")
        if req_id is not None and (not isinstance(req_id, str) or not 1 <= len(req_id) <= 64):
            self.error("req_id", "must be a string of 1 to 64 characters")
            return
        if self.throttled():
            self.error("message", "too many malformed messages; slow down", req_id,
                       code="THROTTLED")
            return
        typ = data.get("type")
        if not isinstance(typ, str):
            self.error("type", "missing message type", req_id)
            return
        if typ == "login":
            self._login(data)
            return
        if typ == "heartbeat" and set(data) <= SESSION_FIELDS["heartbeat"]:
            self._session_request(typ, data, req_id)  # liveness, logged in or not
            return
        if self.user is None:
            self.reject(req_id, "NOT_LOGGED_IN", "log in first")
            return
        if typ in SESSION_TYPES:
            extra = set(data) - SESSION_FIELDS[typ]
            if extra:
                self.error(clip(sorted(extra)[0], 100), "unknown field", req_id)
                return
            self._session_request(typ, data, req_id)
            return
        self._command(typ, data, req_id)

    # ------------------------------------------------------------------ login

    def _login(self, data: dict[str, Any]) -> None:
        req_id = data.get("req_id")
        if self.user is not None:
            self.reject(req_id, "ALREADY_LOGGED_IN", f"already logged in as {self.user}")
            return
        extra = set(data) - SESSION_FIELDS["login"]
        if extra:
            self.error(clip(sorted(map(str, extra))[0], 100), "unknown field", req_id)
            return
        user = data.get("user", self.cert_user)
        token = data.get("token")
        on_disc = data.get("on_disconnect", "none")
        if not isinstance(user, str) or not user or len(user) > 64:
            self.error("user", "must be a user id", req_id)
            return
        if on_disc not in ("none", "hibernate"):
            self.error("on_disconnect", "must be 'none' or 'hibernate'", req_id)
            return
        ref = self.server.core.ref
        u = ref.users.get(user)
        ok = False
        if u is not None:
            if self.cert_user is not None:
                ok = self.cert_user == user  # TLS client certificate (CN = user id)
            elif isinstance(token, str) and u.token_sha256 is not None:
                ok = hmac.compare_digest(token_hash(token), u.token_sha256)
        if not ok:
            self._failed_logins += 1
            self.reject(req_id, "LOGIN_FAILED", "unknown user or wrong credentials")
            if self._failed_logins >= 3:
                self._close_after_flush("too many failed logins")
            return
        assert u is not None
        self.user = user
        self.agent = u.agent
        self.roles = u.roles
        self.on_disconnect = on_disc
        self._watch(on_disc == "hibernate" and TRADER in u.roles)
        self.server.sessions_of[user].add(self)
        self.send({"type": "ack", "kind": "login", "req_id": req_id, "user": user,
                   "agent": u.agent, "roles": sorted(u.roles),
                   "server_time": fmt_instant(self.server.sequencer.clock.now())})

    def _watch(self, on: bool) -> None:
        """Journal that this connection now has (or no longer has) the login option
        ``on_disconnect: hibernate`` (:class:`gateway.core.SessionMark`): after a crash,
        which closes it without a word, the restarted server hibernates the user's orders
        as the option promises."""
        if on == self._watched or self.user is None:
            return
        self._watched = on
        with contextlib.suppress(SequencerStopped):
            self.server.sequencer.submit_with(SessionMark(self.user, 1 if on else -1),
                                              self.user, _ignore)

    async def closed(self) -> None:
        """The connection is gone: unsubscribe; hibernate the user's orders if asked."""
        hub = self.server.hub
        hub.unsubscribe_all(self)
        if self.user is not None:
            others = self.server.sessions_of[self.user]
            others.discard(self)
            # another connection of the user keeps its orders active; an AMQP session does
            # not count (it outlives every connection until logout: counting it would make
            # the option a no-op for a user who ever sent an AMQP request)
            if (self.on_disconnect == "hibernate" and TRADER in self.roles
                    and not any(o.connection_bound for o in others)):
                from engine.commands import HibernateOrders

                with contextlib.suppress(SequencerStopped):
                    await self.server.sequencer.submit(
                        HibernateOrders(user=self.user,
                                        reason="disconnected (login option: hibernate)"),
                        self.user)
            self._watch(False)  # (after the hibernation: a crash between them repeats it)

    # ------------------------------------------------------------------ commands

    def _command(self, typ: str, data: dict[str, Any], req_id: Any) -> None:
        allowed = ROLES.get(typ)
        if allowed is None:
            self.error("type", f"unknown message type {shown(typ)}", req_id)
            return
        if self.roles.isdisjoint(allowed):
            self.reject(req_id, "NOT_PERMITTED",
                        f"{typ} needs the role {' or '.join(sorted(allowed))}")
            return
        try:
            if typ in OPERATOR_TYPES:
                cmd = to_operator_command(parse_operator(data, self.ticks))
            else:
                assert self.user is not None and self.agent is not None
                cmd = fast_command(typ, data, self.ticks, self.user, self.agent)
                if cmd is None:  # not plainly valid: the models decide and name the field
                    cmd = to_command(parse_request(data, self.ticks), self.user, self.agent)
        except ProtocolError as exc:
            self.error(exc.field, exc.reason, req_id)
            return
        try:
            self.server.sequencer.submit_with(cmd, self.user or "?",
                                              self._answerer(typ, req_id), self._key())
        except SequencerStopped as exc:
            self.reject(req_id, "UNAVAILABLE", str(exc))
            return
        self.inflight += 1
        if self.inflight >= self.max_inflight and not self._input_paused:
            pause = getattr(self.transport, "pause_input", None)
            if pause is not None:  # (AMQP: the broker's prefetch bounds what is in flight)
                self._input_paused = True
                pause()

    def _key(self) -> RequestKey | None:
        """The idempotency key of the request being handled, journaled with its command
        (gateway/executed.py); none over WebSocket, where a client finds what became of
        a request by its ``client_order_id`` instead."""
        return None

    def _answerer(self, typ: str, req_id: Any) -> Done:
        """What the sequencer calls once the command is applied (or will never be).  It is
        called from the sequencer's task, not from this request's handling: a session
        that needs anything of the request's own context captures it here."""
        return lambda events, exc: self._answer(typ, req_id, events, exc)

    def _reply_later(self) -> Callable[[dict[str, Any]], None]:
        """How to answer, later, the request being handled now (a logout waits for the
        answers in flight).  A transport that routes an answer by its request (AMQP)
        captures the request here."""
        return self.send

    def _finish_logout(self) -> None:
        if self._logging_out and self.inflight == 0 and self._settlements == 0:
            self._logging_out = False
            reply = self._logout_reply or self.send
            self._logout_reply = None
            reply({"type": "ack", "kind": "logout", "req_id": self._logout_req})
            self._close_after_flush("logged out")

    def _answer(self, typ: str, req_id: Any, events: list[Any] | None,
                exc: BaseException | None) -> None:
        self.inflight -= 1
        self._answer_one(typ, req_id, events, exc)
        if self._logging_out:  # the logout waited for this answer
            self._finish_logout()

    def _answer_one(self, typ: str, req_id: Any, events: list[Any] | None,
                    exc: BaseException | None) -> None:
        if self._input_paused and self.inflight <= self.max_inflight // 2:
            self._input_paused = False
            if not self._queries_full:
                self.transport.resume_input()  # type: ignore[attr-defined]
        if events is None:
            if getattr(exc, "in_doubt", False):  # may be journaled: not a refusal
                self.reject(req_id, "OUTCOME_UNKNOWN", str(exc))
            else:
                self.reject(req_id, "UNAVAILABLE", str(exc))
            return
        self.send(command_answer(typ, req_id, self.user, events))

    # ------------------------------------------------------------------ session requests

    def _backlog_full(self) -> bool:
        """Whether the query answers built and not yet written reach the bound (see
        :data:`QUERY_BACKLOG`)."""
        q = self._queries
        while q and q[0][0] <= self.sent:  # written to the socket: no longer held
            self._query_items -= q.popleft()[1]
        return len(q) >= QUERY_BACKLOG or self._query_items >= QUERY_BACKLOG_ITEMS

    def _query_room(self, req_id: Any) -> bool:
        if not self._backlog_full():
            return True
        self.reject(req_id, "RATE_LIMIT",
                    f"{len(self._queries)} query answers ({self._query_items} items) not"
                    " yet read by this connection: read them before asking again")
        return False

    def _pause_for_queries(self) -> None:
        if not self._queries_full and self._backlog_full():
            pause = getattr(self.transport, "pause_input", None)
            if pause is not None:
                self._queries_full = True
                pause()

    def _queries_written(self) -> None:
        """Messages went to the socket: read the connection again if the query answers
        that stopped it are out (and the requests in flight do not hold it)."""
        if not self._backlog_full():
            self._queries_full = False
            if not self._input_paused and not self._closing:
                self.transport.resume_input()  # type: ignore[attr-defined]

    def _held_query(self, pushed_before: int) -> None:
        """The answer just queued by a query is held until written: count it."""
        n = self._pushed - pushed_before
        if n <= 0:  # answered another way (AMQP), or not at all
            return
        out = self._out
        items = 1
        for i in range(len(out) - min(n, len(out)), len(out)):
            for v in out[i].values():
                if type(v) is list:
                    items += len(v)
        self._queries.append((self._pushed, items))
        self._query_items += items

    def _session_request(self, typ: str, data: dict[str, Any], req_id: Any) -> None:
        if typ in QUERIES:
            if not self._query_room(req_id):
                return
            before = self._pushed
            self._do_session_request(typ, data, req_id)
            self._held_query(before)
            self._pause_for_queries()
            return
        self._do_session_request(typ, data, req_id)

    def _do_session_request(self, typ: str, data: dict[str, Any], req_id: Any) -> None:
        srv = self.server
        core = srv.core
        if typ == "heartbeat":
            self.send({"type": "heartbeat", "req_id": req_id,
                       "server_time": fmt_instant(srv.sequencer.clock.now())})
        elif typ == "logout":
            # the answers of the requests in flight come first (each request gets its
            # one answer); nothing sent after the logout is handled
            self._logging_out = True
            self._logout_req = req_id
            self._logout_reply = self._reply_later()
            self._finish_logout()
        elif typ == "query_me":
            own = sorted((u for u in core.ref.units.values() if u.responsible == self.agent),
                         key=lambda u: u.code)
            self.send({"type": "me", "req_id": req_id, "user": self.user, "agent": self.agent,
                       "roles": sorted(self.roles), "units": [u.code for u in own],
                       # each unit's kind, as the side it trades by default: a selling
                       # unit sells (it may buy too, R46.2.4)
                       "unit_sides": {u.code: "SELL" if u.sells else "BUY" for u in own}})
        elif typ == "query_agents":
            if self.roles.isdisjoint({OFFICER, MARKET}):
                self.reject(req_id, "NOT_PERMITTED", "only officers list the agents")
                return
            risk = core.risk
            agents = []
            for a in sorted(core.ref.agents.values(), key=lambda a: a.code):
                agents.append({
                    "agent": a.code, "name": a.name,
                    "suspended": risk is not None and a.code in risk.suspended,
                    "units": sorted(u.code for u in core.ref.units.values()
                                    if u.responsible == a.code),
                    "users": sorted(u.id for u in core.ref.users.values()
                                    if u.agent == a.code)})
            self.send({"type": "agents", "req_id": req_id, "agents": agents})
        elif typ == "query_audit":
            self._query_audit(data, req_id)
        elif typ == "query_public_trades":
            contract = data.get("contract")
            if not isinstance(contract, str) or contract not in core.engine.contracts:
                self.error("contract", "unknown contract", req_id)
                return
            self.send({"type": "public_trades", "req_id": req_id, "contract": contract,
                       "seq": srv.hub.trade_seq[contract],
                       "trades": list(srv.hub.public_trades.get(contract, ()))})
        elif typ == "query_contracts":
            rows = [{**c, "close_at": fmt_instant(c["close_at"]),
                     "delivery_start": fmt_instant(c["delivery_start"]),
                     "delivery_end": fmt_instant(c["delivery_end"])} for c in core.contracts()]
            self.send({"type": "contracts", "req_id": req_id, "contracts": rows})
        elif typ in ("query_orders", "query_trades", "query_account"):
            agent = self._agent_param(data, req_id)
            if agent is None:
                return
            if typ == "query_orders":
                orders = [_order_wire(core.order_view(o)) for o in core.orders_of(agent)]
                self.send({"type": "orders", "req_id": req_id, "agent": agent,
                           "orders": orders})
            elif typ == "query_trades":
                self.send({"type": "trades", "req_id": req_id, "agent": agent,
                           "trades": list(srv.hub.trades_by_agent.get(agent, []))})
            else:
                acct = core.account(agent)
                if acct is None:
                    self.reject(req_id, "AGENT_UNKNOWN", f"no account for agent {agent}")
                    return
                msg = account_message(acct)
                msg["req_id"] = req_id
                self.send(msg)
        elif typ == "query_book":
            contract = data.get("contract")
            if not isinstance(contract, str) or contract not in core.engine.contracts:
                self.error("contract", "unknown contract", req_id)
                return
            snap = srv.hub.book_snapshot(contract)
            snap["req_id"] = req_id
            self.send(snap)
        elif typ == "query_throttling":
            user = data.get("user", self.user)
            if user != self.user and OFFICER not in self.roles:
                self.reject(req_id, "NOT_PERMITTED", "only your own throttling status")
                return
            st = core.throttling(str(user), srv.sequencer.clock.now())
            self.send({"type": "throttling", "req_id": req_id, **(st or {"user": user})})
        elif typ in ("subscribe", "unsubscribe"):
            self._subscribe(typ == "subscribe", data, req_id)
        elif typ == "query_settlement":
            agent = self._agent_param(data, req_id)
            day = data.get("day")
            if agent is None:
                return
            try:
                ok = (isinstance(day, str) and len(day) == 10
                      and date.fromisoformat(day).isoformat() == day)
            except ValueError:
                ok = False
            if not ok:
                self.error("day", "must be a delivery day YYYY-MM-DD", req_id)
                return
            if self._settlements >= SETTLEMENT_QUERIES:
                self.reject(req_id, "RATE_LIMIT",
                            f"at most {SETTLEMENT_QUERIES} settlement queries at a time")
                return
            self._settlements += 1
            # answered from a task (the store is read off the loop): over AMQP the answer
            # must still go to this request, not to the user's broadcast queue
            reply = self._reply_later()
            asyncio.get_running_loop().create_task(
                self._settlement(agent, str(day), req_id, reply))

    async def _settlement(self, agent: str, day: str, req_id: Any,
                          reply: Callable[[dict[str, Any]], None]) -> None:
        from sync.report import report

        try:
            rep = await report(self.server.store, agent, day)
        except Exception as exc:  # the store failed: still one answer
            log.exception("settlement report failed")
            msg: dict[str, Any] = {"type": "reject", "code": "UNAVAILABLE",
                                   "reason": f"settlement store: {type(exc).__name__}"}
            if isinstance(req_id, str):
                msg["req_id"] = req_id
            reply(msg)
        else:
            before = self._pushed
            reply({"type": "settlement", "req_id": req_id, **rep})
            self._held_query(before)
            self._pause_for_queries()
        finally:
            self._settlements -= 1
            self._finish_logout()

    def _query_audit(self, data: dict[str, Any], req_id: Any) -> None:
        """The audit trail (gateway/audit.py), newest first.  Officers and the market
        operator see every entry whole (``agent`` filters); anyone else the entries about its
        own agent, each narrowed to what concerns that agent (``view_of``)."""
        staff = not self.roles.isdisjoint({OFFICER, MARKET})
        agent = data.get("agent")
        if agent is not None and not isinstance(agent, str):
            self.error("agent", "must be an agent code", req_id)
            return
        if not staff:
            if agent is not None and agent != self.agent:
                self.reject(req_id, "NOT_PERMITTED", "you can see only your own agent's data")
                return
            agent = self.agent
        before = data.get("before")
        if before is not None and (type(before) is not int or before < 1):
            self.error("before", "must be an audit entry's seq (an integer >= 1)", req_id)
            return
        limit = data.get("limit", 200)
        if type(limit) is not int or not 1 <= limit <= AUDIT_LIMIT:
            self.error("limit", f"must be an integer from 1 to {AUDIT_LIMIT}", req_id)
            return
        audit = self.server.audit
        self.send({"type": "audit", "req_id": req_id, "agent": agent, "last_seq": audit.seq,
                   "entries": audit.query(agent, before, limit,
                                          view_of=None if staff else agent or "")})

    def _agent_param(self, data: dict[str, Any], req_id: Any) -> str | None:
        agent = data.get("agent", self.agent)
        if not isinstance(agent, str):
            self.error("agent", "must be an agent code", req_id)
            return None
        if agent != self.agent and OFFICER not in self.roles and MARKET not in self.roles:
            # a trader sees only its own agent's data (R46.2.12)
            self.reject(req_id, "NOT_PERMITTED", "you can see only your own agent's data")
            return None
        return agent

    def _misplaced(self, stream: str, data: dict[str, Any], req_id: Any) -> bool:
        """A field of another stream in a (un)subscribe: refused, not silently ignored (a
        client meaning another stream hears of it)."""
        if stream not in ("book", "trades") and data.get("contract") is not None:
            self.error("contract", f"not a field of the {stream} stream (only of book and "
                       "trades)", req_id)
            return True
        if stream != "private" and data.get("agent") is not None:
            self.error("agent", f"not a field of the {stream} stream (only of private)",
                       req_id)
            return True
        return False

    def _subscribe(self, on: bool, data: dict[str, Any], req_id: Any) -> None:
        hub = self.server.hub
        stream = data.get("stream")
        if stream not in ("book", "trades", "states", "private"):
            self.error("stream", "must be one of book, trades, states, private", req_id)
            return
        if self._misplaced(stream, data, req_id):
            return
        if stream in ("book", "trades"):
            contract = data.get("contract")
            if not isinstance(contract, str) or contract not in self.server.core.engine.contracts:
                self.error("contract", "unknown contract", req_id)
                return
            hub.follow(stream, contract, self, on)  # a book's mirror made if need be
            ack: dict[str, Any] = {"type": "ack", "kind": "subscribe" if on else "unsubscribe",
                                   "req_id": req_id, "stream": f"{stream}:{contract}"}
            if stream == "trades":
                ack["seq"] = hub.trade_seq[contract]
            self.send(ack)
            if stream == "book":
                # a conflated book's fresh snapshot is due no more: sent now on a subscribe,
                # not at all after an unsubscribe
                self._stale_books.discard(contract)
                if on:
                    self.send(hub.book_snapshot(contract))
            return
        if stream == "states":
            (hub.state_subs.add if on else hub.state_subs.discard)(self)
            self.send({"type": "ack", "kind": "subscribe" if on else "unsubscribe",
                       "req_id": req_id, "stream": "states", "seq": hub.state_seq})
            return
        agent = data.get("agent", self.agent)
        if agent == "*":
            if OFFICER not in self.roles and MARKET not in self.roles:
                self.reject(req_id, "NOT_PERMITTED", "only officers see every agent")
                return
            (hub.officer_subs.add if on else hub.officer_subs.discard)(self)
            self.send({"type": "ack", "kind": "subscribe" if on else "unsubscribe",
                       "req_id": req_id, "stream": "private:*"})
            return
        agent = self._agent_param({"agent": agent}, req_id)
        if agent is None:
            return
        if agent not in self.server.core.ref.agents:
            self.reject(req_id, "AGENT_UNKNOWN", "no such agent")
            return
        subs = hub.private_subs[agent]
        (subs.add if on else subs.discard)(self)
        self.send({"type": "ack", "kind": "subscribe" if on else "unsubscribe",
                   "req_id": req_id, "stream": f"private:{agent}",
                   "seq": hub.private_seq[agent]})


def _order_wire(v: dict[str, Any]) -> dict[str, Any]:
    from engine.config import fmt_price, fmt_qty

    out = dict(v)
    for k in ("price", "price_increment"):
        out[k] = fmt_price(out[k])
    for k in ("visible", "hidden", "filled", "peak"):
        out[k] = fmt_qty(out[k])
    if out["expiry"] is not None:
        out["expiry"] = fmt_instant(out["expiry"])
    return out


def command_answer(typ: str, req_id: Any, user: str | None, events: list[Any]
                   ) -> dict[str, Any]:
    """The answer to a command request of type ``typ`` that was executed and caused
    ``events``: :func:`answer`, or the refusal of a command that failed inside the
    engine.  A function of its arguments alone: a repeat of the request reaching a
    restarted server gets the same answer from the journal's replay (gateway/executed.py)."""
    if events and type(events[-1]) is CommandFailed:
        msg: dict[str, Any] = {
            "type": "reject", "code": "INTERNAL_ERROR",
            "reason": f"the command failed inside the engine ({events[-1].error}); the "
                      f"operator is alerted; check the state (query_orders) before sending "
                      f"it again"}
        if isinstance(req_id, str):
            msg["req_id"] = req_id
        return msg
    return answer(typ, req_id, user, events)


def answer(typ: str, req_id: Any, user: str | None, events: list[Any]) -> dict[str, Any]:
    """The one answer to a request, from the events its command caused."""
    rid = req_id if isinstance(req_id, str) else None
    rejects: list[Reject] = []  # all of them are this command's
    reports: list[OrderReport] = []  # the reports of this request's own orders
    acks: list[Ack] = []
    for e in events:  # one pass: this runs for every command answered
        t = type(e)
        if t is OrderReport:
            if e.user == user and e.req_id == rid:
                reports.append(e)
        elif t is Reject:
            rejects.append(e)
        elif t is Ack:
            acks.append(e)
    if rejects and not reports and not acks:
        last = rejects[-1]
        msg: dict[str, Any] = {"type": "reject", "req_id": rid, "kind": typ,
                               "code": last.code, "reason": last.reason}
        if last.order_id is not None:
            msg["order_id"] = last.order_id
        if len(rejects) > 1:
            msg["details"] = [{"client_order_id": r.client_order_id, "code": r.code,
                               "reason": r.reason} for r in rejects[:-1]]
        return msg
    ids: list[int] = []
    for a in acks:
        ids.extend(a.order_ids)
    for r in reports:
        if r.order_id not in ids:
            ids.append(r.order_id)
    msg = {"type": "ack", "req_id": rid, "kind": typ, "order_ids": ids,
           "reports": [event_to_wire_last(r) for r in reports]}
    if rejects:  # e.g. some orders of a NONE basket refused
        msg["rejects"] = [{"client_order_id": r.client_order_id, "code": r.code,
                           "reason": r.reason} for r in rejects]
    return msg
