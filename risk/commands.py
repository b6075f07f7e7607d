"""Commands of the risk module: reference data, risk-officer, system-operator and sync
actions.  Like every command they go through the sequencer and the journal (DESIGN rule 1);
``by`` is the acting user, checked against its roles and recorded for the audit trail.
Amounts are integer cents of €; energies integer tenths of MWh per hourly period."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "AdjustProgram",
    "DecideGuaranteeRequest",
    "LoadReferenceData",
    "ReinstateAgent",
    "ReleaseObligations",
    "RequestGuaranteeChange",
    "SetBreachAction",
    "SetGuarantees",
    "SetLimitation",
    "SetProgram",
    "SetRateLimits",
    "SetSyncReduction",
    "SetUnavailability",
    "SuspendAgent",
]


@dataclass(frozen=True, slots=True)
class LoadReferenceData:
    """Replace the reference data (``document_json``: canonical JSON of the document in
    docs/refdata.md).  The first command of every journal."""

    document_json: str
    by: str = "operator"


@dataclass(frozen=True, slots=True)
class SetGuarantees:
    """R49.1.4.1: the guarantees the agent reserves for continuous trading (GMIC)."""

    by: str
    agent: str
    amount: int
    req_id: str | None = None


@dataclass(frozen=True, slots=True)
class RequestGuaranteeChange:
    """R49.1.4.4: an agent asks to increase or reduce its reserved guarantees."""

    by: str
    agent: str
    increase: bool
    amount: int
    req_id: str | None = None


@dataclass(frozen=True, slots=True)
class DecideGuaranteeRequest:
    """A risk officer (or, at synchronisation, the settlement side) accepts or refuses a
    pending request; an accepted request counts in the operative limit (R49.1.4.3 e, f)."""

    by: str
    request_id: int
    accept: bool
    reason: str = ""
    req_id: str | None = None


@dataclass(frozen=True, slots=True)
class SetSyncReduction:
    """R49.1.4.2: the reduction the settlement side communicated after a synchronisation
    (R49.1.4.3 d); replaces the previous one."""

    by: str
    agent: str
    amount: int


@dataclass(frozen=True, slots=True)
class ReleaseObligations:
    """R49.1.4.2 step 3: the obligations of trades of rounds up to ``through_round`` were
    synchronised and now live in the settlement balance: release them."""

    by: str
    through_round: int


@dataclass(frozen=True, slots=True)
class SuspendAgent:
    """Suspension: the agent's orders are cancelled (R46.2.6.2) and new ones refused."""

    by: str
    agent: str
    reason: str = "suspended"
    req_id: str | None = None


@dataclass(frozen=True, slots=True)
class ReinstateAgent:
    by: str
    agent: str
    req_id: str | None = None


@dataclass(frozen=True, slots=True)
class SetRateLimits:
    """R48.c: the request limits of one user (or, with ``user`` None, the default):
    ``rules`` are (window ms, max requests) pairs."""

    by: str
    user: str | None
    rules: tuple[tuple[int, int], ...]
    warning_ratio: float = 0.8
    hibernate_on_breach: bool = False
    req_id: str | None = None


@dataclass(frozen=True, slots=True)
class SetBreachAction:
    """A trader's own setting: hibernate my orders when I breach my rate limit."""

    by: str
    hibernate_on_breach: bool
    req_id: str | None = None


@dataclass(frozen=True, slots=True)
class SetProgram:
    """R50: a unit's base program for one delivery period (``period``: a contract id, PH- or
    QH-): the program before continuous trading (the daily market's, then each intraday
    auction's PHF).  The energy checks add the unit's continuous trades to it themselves, at
    the instant each trade happens, so this never includes them (no double count).  It does
    include the auction results applied to the period before it (:class:`AdjustProgram`),
    which it absorbs (R50; the guard's ``_on_program``)."""

    by: str
    unit: str
    period: str
    energy: int


@dataclass(frozen=True, slots=True)
class AdjustProgram:
    """R50: an intraday auction's result changes a unit's base program (PHF) in a period by
    ``delta`` tenths of MWh (positive: more energy for a selling unit / buying unit), until
    the system operators' next PHF for the period, which includes it (:class:`SetProgram`)."""

    by: str
    unit: str
    period: str
    delta: int


@dataclass(frozen=True, slots=True)
class SetUnavailability:
    """R46.2.3.1: MW unavailable in a period; effective from the first round that starts at
    least five minutes after it was received (A1§6)."""

    by: str
    unit: str
    period: str
    unavailable: int


@dataclass(frozen=True, slots=True)
class SetLimitation:
    """R46.2.3.2: a system operator's limitation of a unit in a period (minimum and/or
    maximum energy, None for no limit); effective as unavailabilities are (A1§6)."""

    by: str
    unit: str
    period: str
    min_energy: int | None
    max_energy: int | None


RiskCommand = (
    LoadReferenceData | SetGuarantees | RequestGuaranteeChange | DecideGuaranteeRequest
    | SetSyncReduction | ReleaseObligations | SuspendAgent | ReinstateAgent | SetRateLimits
    | SetBreachAction | SetProgram | AdjustProgram | SetUnavailability | SetLimitation
)
