"""Exceptions and rejection codes of the core.

A trader's mistake never raises: it becomes a rejection event carrying one of the
:class:`Code` values below and a readable reason (DESIGN rule 5).  Exceptions are for bugs
and for misuse of the API by the code that drives the core.  The whole tree::

    RondaError
    ├── EngineMisuse          the caller broke the engine's contract (time going backwards,
    │                         an unknown command type, a contract created twice)
    ├── IllegalTransition     a state machine was asked for a transition its table forbids
    └── InvalidIdentifier     a contract identifier that does not parse

Rejection codes are grouped by the stage that produces them (as exchange-core does):
validation (shape of the order), state (of the contract or the order), matching, basket,
and risk (added by ``risk/``).  Codes are stable: clients may branch on them.
"""

from __future__ import annotations

from enum import StrEnum


class RondaError(Exception):
    """Base of every exception raised by ronda's core."""


class EngineMisuse(RondaError):
    """The code driving the engine broke its contract; this is a bug, not a trader's error."""


class IllegalTransition(RondaError):
    """A state machine was asked for a transition that its table does not allow."""

    def __init__(self, machine: str, current: str, target: str) -> None:
        super().__init__(f"{machine}: illegal transition {current} -> {target}")
        self.machine = machine
        self.current = current
        self.target = target


class InvalidIdentifier(RondaError, ValueError):
    """An identifier (e.g. a contract id) that does not follow its documented format."""


class Code(StrEnum):
    """Stable rejection and cancellation codes, grouped by stage."""

    # -- validation: the order itself (R46.2.1, A1§3, A1§4, A1§5)
    PRICE_OUT_OF_RANGE = "PRICE_OUT_OF_RANGE"
    QTY_OUT_OF_RANGE = "QTY_OUT_OF_RANGE"
    ICEBERG_PEAK_OUT_OF_RANGE = "ICEBERG_PEAK_OUT_OF_RANGE"
    ICEBERG_PEAK_ABOVE_TOTAL = "ICEBERG_PEAK_ABOVE_TOTAL"
    ICEBERG_NOT_RESTING = "ICEBERG_NOT_RESTING"
    ICEBERG_INCREMENT_SIGN = "ICEBERG_INCREMENT_SIGN"
    ICEBERG_INCREMENT_WITHOUT_PEAK = "ICEBERG_INCREMENT_WITHOUT_PEAK"
    ICEBERG_PRICE_OUT_OF_RANGE = "ICEBERG_PRICE_OUT_OF_RANGE"
    GTD_EXPIRY_MISSING = "GTD_EXPIRY_MISSING"
    GTD_EXPIRY_NOT_FUTURE = "GTD_EXPIRY_NOT_FUTURE"
    GTD_EXPIRY_AFTER_CLOSE = "GTD_EXPIRY_AFTER_CLOSE"
    EXPIRY_WITHOUT_GTD = "EXPIRY_WITHOUT_GTD"
    HIBERNATED_ENTRY_NOT_RESTING = "HIBERNATED_ENTRY_NOT_RESTING"
    DUPLICATE_CLIENT_ORDER_ID = "DUPLICATE_CLIENT_ORDER_ID"
    # -- state: of the contract (R45.f) or of the order (R46.2.6, R46.2.7)
    CONTRACT_UNKNOWN = "CONTRACT_UNKNOWN"
    CONTRACT_NOT_TRADING = "CONTRACT_NOT_TRADING"
    ORDER_UNKNOWN = "ORDER_UNKNOWN"
    ORDER_NOT_ACTIVE = "ORDER_NOT_ACTIVE"
    ORDER_NOT_HIBERNATED = "ORDER_NOT_HIBERNATED"
    STALE_REVISION = "STALE_REVISION"
    CONTRACT_CLOSED = "CONTRACT_CLOSED"  # kept for compatibility of stored logs; not emitted
    MODIFY_CHANGES_FIXED_FIELD = "MODIFY_CHANGES_FIXED_FIELD"
    NOTHING_TO_DO = "NOTHING_TO_DO"
    ILLEGAL_TRANSITION = "ILLEGAL_TRANSITION"
    # -- matching: why an order left without resting (A1§3.2, A1§3.3, A1§5.3)
    IOC_REMAINDER = "IOC_REMAINDER"
    FOK_NOT_FILLABLE = "FOK_NOT_FILLABLE"
    LINKED_NOT_FILLABLE = "LINKED_NOT_FILLABLE"
    # -- basket (R46.2.10, A1§5)
    BASKET_EMPTY = "BASKET_EMPTY"
    BASKET_TOO_LARGE = "BASKET_TOO_LARGE"
    BASKET_MEMBER_INVALID = "BASKET_MEMBER_INVALID"
    LINKED_MEMBER_NOT_FOK = "LINKED_MEMBER_NOT_FOK"
    # -- lifecycle reasons for cancellations initiated by the platform
    CONTRACT_CLOSE = "CONTRACT_CLOSE"
    GTD_EXPIRED = "GTD_EXPIRED"
    OPERATOR_CANCEL = "OPERATOR_CANCEL"
    # -- risk (R46.2.2, R46.2.4, R46.2.5, R48.c, R49.1.4.3): produced by risk/
    AGENT_UNKNOWN = "AGENT_UNKNOWN"
    AGENT_NOT_CURRENT = "AGENT_NOT_CURRENT"
    AGENT_SUSPENDED = "AGENT_SUSPENDED"
    AGENT_NOT_AUTHORISED = "AGENT_NOT_AUTHORISED"
    USER_UNKNOWN = "USER_UNKNOWN"
    USER_NOT_TRADER = "USER_NOT_TRADER"
    UNIT_UNKNOWN = "UNIT_UNKNOWN"
    UNIT_NOT_CURRENT = "UNIT_NOT_CURRENT"
    UNIT_NOT_RESPONSIBLE = "UNIT_NOT_RESPONSIBLE"
    OPERATIVE_LIMIT = "OPERATIVE_LIMIT"
    ENERGY_MAX = "ENERGY_MAX"
    ENERGY_MIN = "ENERGY_MIN"
    RATE_LIMIT = "RATE_LIMIT"
    NOT_PERMITTED = "NOT_PERMITTED"
    REFERENCE_DATA_INVALID = "REFERENCE_DATA_INVALID"
    INVALID_AMOUNT = "INVALID_AMOUNT"
    REQUEST_UNKNOWN = "REQUEST_UNKNOWN"
    REQUEST_WITH_SYNC = "REQUEST_WITH_SYNC"
    REDUCTION_COMMITTED = "REDUCTION_COMMITTED"
    INVALID_RATE_LIMITS = "INVALID_RATE_LIMITS"
    PERIOD_INVALID = "PERIOD_INVALID"
    # -- auctions (R38-R44): produced by auctions/
    AUCTION_UNKNOWN = "AUCTION_UNKNOWN"
    AUCTION_INVALID = "AUCTION_INVALID"
    AUCTION_NOT_OPEN = "AUCTION_NOT_OPEN"
    AUCTION_PERIOD_NOT_IN_HORIZON = "AUCTION_PERIOD_NOT_IN_HORIZON"
    AUCTION_BID_INVALID = "AUCTION_BID_INVALID"
    AUCTION_BID_UNKNOWN = "AUCTION_BID_UNKNOWN"
