"""State machines of the core, each one table of allowed transitions (DESIGN rule 6).

* Contract states, R45.f: ``UPC`` (closed, waiting to open), ``TRADE`` (open), ``INT``
  (interrupted: by the platform, the operator, or paused for an intraday auction, R48.b,
  R46.2.7), ``FIN`` (closed and finished).  Orders are accepted only in ``TRADE``.
* Order statuses as the protocol reports them: ``ACTIVE`` (in the book), ``HIBERNATED``
  (inactive, kept, may be reactivated, R46.2.7) and ``INACTIVE`` (finished: filled,
  cancelled, expired or rejected; terminal).
"""

from __future__ import annotations

from enum import StrEnum

from engine.errors import IllegalTransition


class ContractState(StrEnum):
    UPC = "UPC"
    TRADE = "TRADE"
    INT = "INT"
    FIN = "FIN"


# R45.f: the life of a contract.  UPC -> FIN covers a contract withdrawn before opening.
CONTRACT_TRANSITIONS: dict[ContractState, frozenset[ContractState]] = {
    ContractState.UPC: frozenset({ContractState.TRADE, ContractState.FIN}),
    ContractState.TRADE: frozenset({ContractState.INT, ContractState.FIN}),
    ContractState.INT: frozenset({ContractState.TRADE, ContractState.FIN}),
    ContractState.FIN: frozenset(),
}


def check_contract_transition(current: ContractState, target: ContractState) -> None:
    """Raise :class:`IllegalTransition` unless R45.f allows ``current -> target``."""
    if target not in CONTRACT_TRANSITIONS[current]:
        raise IllegalTransition("contract", current.value, target.value)


class OrderStatus(StrEnum):
    ACTIVE = "ACTIVE"
    HIBERNATED = "HIBERNATED"
    INACTIVE = "INACTIVE"


ORDER_TRANSITIONS: dict[OrderStatus, frozenset[OrderStatus]] = {
    # ACTIVE -> ACTIVE: modification, partial fill, iceberg refill (R46.2.6, A1§3.4)
    OrderStatus.ACTIVE: frozenset(
        {OrderStatus.ACTIVE, OrderStatus.HIBERNATED, OrderStatus.INACTIVE}
    ),
    # HIBERNATED -> ACTIVE: reactivation; -> INACTIVE: cancelled, expired, rejected (R46.2.7)
    OrderStatus.HIBERNATED: frozenset({OrderStatus.ACTIVE, OrderStatus.INACTIVE}),
    OrderStatus.INACTIVE: frozenset(),
}


def check_order_transition(current: OrderStatus, target: OrderStatus) -> None:
    """Raise :class:`IllegalTransition` unless the order table allows ``current -> target``."""
    if target not in ORDER_TRANSITIONS[current]:
        raise IllegalTransition("order", current.value, target.value)
