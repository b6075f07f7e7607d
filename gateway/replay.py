"""The replay tool: a scenario (JSONL) in, events (JSONL) out, byte for byte repeatable.

One command per line (documented in ``docs/replay.md``)::

    {"at": "2027-01-15T09:00:00.000Z", "user": "trader1", "agent": "AG1", "request": {...}}
    {"at": "2027-01-15T09:00:00.000Z", "operator": {"type": "contract_open", ...}}

``request`` is a protocol trading request (the gateway's pydantic models); ``operator`` is
an operator command.  ``agent`` defaults to the user (until reference data say otherwise).
Times must not decrease.  Output: one event per line as JSON, then a final line
``{"type": "state_hash", ...}``.  A malformed line stops the replay with an error naming
the line and the field: continuing would produce a different history.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import orjson

from engine.config import EngineConfig
from gateway.core import Checkpoint, CheckpointCheck
from gateway.protocol import (
    ProtocolError,
    parse_instant,
    parse_operator,
    parse_request,
    to_command,
    to_operator_command,
)
from gateway.wire import event_to_wire
from risk.commands import LoadReferenceData

_LINE_KEYS = {"at", "user", "agent", "request", "operator", "origin", "command",
              "message_id", "digest"}


class ScenarioError(ValueError):
    def __init__(self, line: int, field: str, reason: str) -> None:
        super().__init__(f"line {line}: {field}: {reason}")
        self.line = line
        self.field = field
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Step:
    line: int
    at: int
    user: str | None
    command: Any


AgentOf = Callable[[str], str | None]


def parse_line(raw: bytes | str, lineno: int, agent_of: AgentOf | None = None
               ) -> Step | None:
    """One scenario line to a :class:`Step` (None for blank lines and ``#`` comments)."""
    text = raw.decode() if isinstance(raw, bytes) else raw
    if not text.strip() or text.lstrip().startswith("#"):
        return None
    try:
        obj = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise ScenarioError(lineno, "line", f"invalid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ScenarioError(lineno, "line", "must be a JSON object")
    extra = set(obj) - _LINE_KEYS
    if extra:
        raise ScenarioError(lineno, sorted(extra)[0], "unknown field")
    try:
        at = parse_instant(obj.get("at"))
    except ValueError as exc:
        raise ScenarioError(lineno, "at", str(exc)) from None
    if "command" in obj:  # a core command as the journal keeps it (ronda journal export)
        from gateway.codec import CodecError, decode

        origin = obj.get("origin", "operator")
        if not isinstance(origin, str):
            raise ScenarioError(lineno, "origin", "must be a string")
        # the request's idempotency key, as exported: what it was, for the reader only
        for name in ("message_id", "digest"):
            if name in obj and not isinstance(obj[name], str):
                raise ScenarioError(lineno, name, "must be a string")
        try:
            return Step(lineno, at, origin, decode(obj["command"]))
        except CodecError as exc:
            raise ScenarioError(lineno, "command", str(exc)) from None
    for name in ("message_id", "digest"):
        if name in obj:
            raise ScenarioError(lineno, name, "only with 'command' (a journal's export)")
    has_req, has_op = "request" in obj, "operator" in obj
    if has_req == has_op:
        raise ScenarioError(lineno, "line",
                            "needs exactly one of 'request', 'operator' or 'command'")
    try:
        if has_req:
            user = obj.get("user")
            if not isinstance(user, str) or not user:
                raise ProtocolError("user", "a request needs the user who sends it")
            if agent_of is None:
                agent = obj.get("agent", user)
            else:
                # with reference data, the user's agent is what the data say
                agent = agent_of(user)
                if agent is None:
                    raise ProtocolError("user", f"user {user!r} is not in the reference data")
                if obj.get("agent", agent) != agent:
                    raise ProtocolError("agent", f"user {user!r} belongs to agent {agent!r}")
            if not isinstance(agent, str) or not agent:
                raise ProtocolError("agent", "must be a non-empty string")
            req = parse_request(obj["request"])
            return Step(lineno, at, user, to_command(req, user, agent))
        op = parse_operator(obj["operator"])
        return Step(lineno, at, None, to_operator_command(op))
    except ProtocolError as exc:
        prefix = "request" if has_req and exc.field not in ("user", "agent") else (
            "" if has_req else "operator")
        field = f"{prefix}.{exc.field}" if prefix else exc.field
        raise ScenarioError(lineno, field, exc.reason) from None


def read_scenario(lines: Iterable[bytes | str], agent_of: AgentOf | None = None
                  ) -> Iterator[Step]:
    last = None
    for n, raw in enumerate(lines, 1):
        step = parse_line(raw, n, agent_of)
        if step is None:
            continue
        if last is not None and step.at < last:
            raise ScenarioError(n, "at", "time goes backwards from the previous command")
        last = step.at
        yield step


def replay(lines: Iterable[bytes | str], config: EngineConfig | None = None,
           refdata_json: str | None = None) -> Iterator[bytes]:
    """Run a scenario; yield each output line (JSON, without newline).

    The core is the server's (:class:`gateway.core.Core`: engine, risk, auctions), so an
    exported journal replays to the server's state hash.  Risk is on when ``refdata_json``
    is given — loaded by a :class:`LoadReferenceData` command at the instant of the first
    line, as the server's journal starts, each request's agent then being the user's agent
    in those data — or when the scenario carries its own (an exported journal)."""
    from gateway.core import Core

    steps_iter = read_scenario(lines, None)
    first: list[Step] = []
    risk = refdata_json is not None
    if not risk:
        # an exported journal starts with its reference data: look at the first step
        for step in steps_iter:
            first.append(step)
            risk = isinstance(step.command, LoadReferenceData)
            break
    core = Core(config, risk=risk)
    agent_of: AgentOf | None = None
    if refdata_json is not None:
        def agent_of(user: str) -> str | None:
            u = core.ref.users.get(user)
            return None if u is None else u.agent

    def steps() -> Iterator[Step]:
        yield from first
        if refdata_json is None:
            yield from steps_iter
        else:
            yield from read_scenario(lines_rest, agent_of)

    lines_rest = lines
    loaded = refdata_json is None
    # the checkpoints of an exported journal, checked as the server's recovery does (the
    # records after the last one are not: the tool replays whatever it is given)
    check = CheckpointCheck()
    for step in steps():
        if not loaded:
            loaded = True
            for ev in core.engine.apply(LoadReferenceData(refdata_json or ""), step.at):
                yield orjson.dumps(event_to_wire(ev))
        if type(step.command) is Checkpoint:  # the server's own record (ronda journal export)
            check.check(step.line, step.at, step.command, core.state_hash())
            continue
        # as the server applies it: a command that raises is a command_failed event, and
        # the replay goes on (gateway/core.py)
        for ev in core.apply(step.command, step.at):
            yield orjson.dumps(event_to_wire(ev))
    if check.divergences:  # what no accepted checkpoint settled (the server's rule)
        d = check.divergences[0]
        cp = d.checkpoint
        raise ScenarioError(d.seq, "command", (
            f"the replay's state differs from the server's at its {cp.reason} checkpoint "
            f"({cp.server}): the server's state hash was {cp.state_hash}, the replay's is "
            f"{d.replayed}"))
    yield orjson.dumps({"type": "state_hash", "hash": core.state_hash()})
