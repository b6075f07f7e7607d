"""Events of the risk module (records like the engine's, :class:`engine.events.Event`,
registered with its event names so that the wire and the replay tool render them)."""

from __future__ import annotations

from engine.events import EVENT_NAMES, EVENT_TYPES, Event


class RiskNotice(Event):
    """Something happened to an agent's account or status: ``kind`` is one of
    GUARANTEES_SET, REQUEST_PENDING, REQUEST_ACCEPTED, REQUEST_REFUSED, SYNC_REDUCTION,
    OBLIGATIONS_RELEASED, AGENT_SUSPENDED, AGENT_REINSTATED, RATE_LIMITS_SET,
    REFERENCE_DATA_LOADED, PROGRAM_SET, UNAVAILABILITY_SET, LIMITATION_SET,
    LIMITATION_EFFECTIVE, LIMITATION_DROPPED.  Private to the agent and its risk
    officers."""

    __slots__ = ()

    ts: int
    kind: str
    agent: str | None
    by: str
    request_id: int | None
    amount: int | None  # cents of €, where the kind has an amount
    detail: str


class ThrottlingStatus(Event):
    """R48.c: a user's rate-limit state changed: OK, WARNING (near a limit) or BREACHED."""

    __slots__ = ()

    ts: int
    user: str
    state: str
    counts: tuple[int, ...]
    limits: tuple[int, ...]
    windows_ms: tuple[int, ...]


for _cls, _name in ((RiskNotice, "risk_notice"), (ThrottlingStatus, "throttling")):
    EVENT_TYPES[_name] = _cls
    EVENT_NAMES[_cls] = _name
