"""The one read the metrics endpoint makes of Postgres: what is in flight or stuck now.

Prometheus scrapes every worker every few seconds, so this is one statement
over the partial index of unfinished orders and the few aged episodes that
wait for a person, and it carries its own statement timeout: a slow database
must not hold a scrape.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import Engine, and_, case, func, literal, or_, select, text, union_all

from workers.execution.order_state import IN_FLIGHT
from workers.store.models import AgedPosition, Order, Position

# Aged episodes that stay in these conditions until a person or a later close acts.
AGED_CLOSE_FAILING = "close_failing"
AGED_UNCLOSABLE = "unclosable"


@dataclass(frozen=True)
class OrdersInStatus:
    count: int
    oldest_age_s: float


@dataclass(frozen=True)
class StoredState:
    """Unfinished orders by status, and open positions whose aged close needs a person.

    ``orders`` has every status of ``IN_FLIGHT``, with count 0 and age 0 when none is
    in it, so a dashboard sees a drop to zero rather than a vanished series.
    """

    orders: dict[str, OrdersInStatus] = field(default_factory=dict)
    aged_close_failing: int = 0
    aged_unclosable: int = 0


def _state_statement(failures_before_alert: int):  # noqa: ANN202 - a SQLAlchemy compound select
    age_of_oldest = func.extract("epoch", func.now() - func.min(Order.created_at))
    orders = (
        select(
            literal("order").label("source"),
            Order.status.label("key"),
            func.count().label("count"),
            age_of_oldest.label("oldest_age_s"),
        )
        .where(Order.status.in_([status.value for status in IN_FLIGHT]))
        .group_by(Order.status)
    )
    condition = case(
        (AgedPosition.status == "unclosable", literal(AGED_UNCLOSABLE)),
        else_=literal(AGED_CLOSE_FAILING),
    )
    aged = (
        select(
            literal("aged"),
            condition,
            func.count(),
            func.extract("epoch", func.now() - func.min(AgedPosition.updated_at)),
        )
        .join(Position, Position.id == AgedPosition.position_id)
        .where(
            # A position closed by hand (or found flat) no longer needs anyone.
            Position.status == "open",
            or_(
                AgedPosition.status == "unclosable",
                and_(
                    AgedPosition.status.in_(("active", "closing")),
                    AgedPosition.consecutive_failures >= failures_before_alert,
                ),
            ),
        )
        .group_by(condition)
    )
    return union_all(orders, aged)


def read_stored_state(
    engine: Engine, failures_before_alert: int, statement_timeout_ms: int = 2000
) -> StoredState:
    """Counts of unfinished orders and of aged episodes that need a person, in one statement.

    An aged episode counts as *close failing* once its consecutive close failures
    reach ``failures_before_alert`` (the count that raises the ``aged_close_failing``
    alert), and stops counting when a close succeeds or its position is no longer
    open. Raises SQLAlchemy's errors when Postgres cannot answer within
    ``statement_timeout_ms`` (or the engine's connect timeout).
    """
    orders = {status.value: OrdersInStatus(0, 0.0) for status in IN_FLIGHT}
    aged: dict[str, int] = {}
    with engine.connect() as connection:
        # SET LOCAL lasts for this transaction only, which ends with the block.
        connection.execute(text(f"SET LOCAL statement_timeout = {int(statement_timeout_ms)}"))
        for source, key, count, oldest_age_s in connection.execute(
            _state_statement(failures_before_alert)
        ):
            if source == "order":
                orders[key] = OrdersInStatus(int(count), max(0.0, float(oldest_age_s)))
            else:
                aged[key] = int(count)
    return StoredState(
        orders=orders,
        aged_close_failing=aged.get(AGED_CLOSE_FAILING, 0),
        aged_unclosable=aged.get(AGED_UNCLOSABLE, 0),
    )
