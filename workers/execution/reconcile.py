"""Recovery reconciliation: compare the book with the exchange and say what to repair.

The exchange is the truth about positions; the book (Postgres) is execq's
record. Per (account, symbol), seed 002's rules, with the 1 % conflict
threshold as the default::

    on the exchange, not in the book            -> Adopt            (orphan: event and alert)
    in both, the exchange larger than the book
      by more than tolerance_percent, or on the
      other side                                -> ExceedsBook      (critical alert; the book
                                                                      is never corrected up)
    in both, the exchange smaller, or the entry
      off by more than tolerance_percent        -> Correct          (position_conflict event)
    open in the book, flat on the exchange      -> ClosedExternally
    in both and within tolerance                -> nothing

A position larger than the book means orders the book does not know filled: an
order whose outcome is unknown, or one placed outside execq. Correcting the book
up would hide exactly what a person must look at, so it is alerted instead.

Zero-size exchange rows (Bybit returns them) count as flat. Differences are
relative to the exchange's value. An exchange entry price of None or 0 (not
reported) is not compared.

Only pass book rows the exchange answer covers: a book position whose
account (or symbol, for per-symbol fetches) was not fetched would otherwise
look closed externally. ``fetched_accounts`` enforces this per account.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import TypeVar

ZERO = Decimal(0)
HUNDRED = Decimal(100)
Key = tuple[str, str]


@dataclass(frozen=True)
class BookPosition:
    """An open position in the book. ``size`` signed (+ long, - short), base units."""

    account: str
    symbol: str
    size: Decimal
    entry_price: Decimal
    id: int | str | None = None

    @property
    def key(self) -> Key:
        return (self.account, self.symbol)


@dataclass(frozen=True)
class ExchangePosition:
    """A position as ``fetch_positions`` reports it, size signed."""

    account: str
    symbol: str
    size: Decimal
    entry_price: Decimal | None

    @property
    def key(self) -> Key:
        return (self.account, self.symbol)


@dataclass(frozen=True)
class Adopt:
    """On the exchange but not in the book: book it and alert (an orphan)."""

    exchange: ExchangePosition

    @property
    def exchange_position(self) -> ExchangePosition:
        return self.exchange


@dataclass(frozen=True)
class Correct:
    """Book and exchange disagree; ``fields`` names what differs (``side``, ``size``,
    ``entry_price``). Correcting sets the book to the exchange's values."""

    book: BookPosition
    exchange: ExchangePosition
    fields: tuple[str, ...]


@dataclass(frozen=True)
class ExceedsBook:
    """The exchange holds more than the book (or the other side): alert, never correct."""

    book: BookPosition
    exchange: ExchangePosition

    @property
    def difference(self) -> Decimal:
        """Signed size the exchange has beyond the book."""
        return self.exchange.size - self.book.size


@dataclass(frozen=True)
class ClosedExternally:
    """Open in the book, flat on the exchange: someone closed it outside execq."""

    book: BookPosition


ReconcileAction = Adopt | Correct | ExceedsBook | ClosedExternally


_Row = TypeVar("_Row", BookPosition, ExchangePosition)


def _index(rows: Iterable[_Row], what: str) -> dict[Key, _Row]:
    index: dict[Key, _Row] = {}
    for row in rows:
        if row.size == 0:
            continue
        if row.key in index:
            raise ValueError(
                f"two open {what} positions for {row.account}/{row.symbol}: "
                "hedge mode or a duplicated record, which one-way reconciliation cannot resolve"
            )
        index[row.key] = row
    return index


def _off_by_more_than(ours: Decimal, theirs: Decimal, tolerance_percent: Decimal) -> bool:
    return abs(ours - theirs) * HUNDRED > abs(theirs) * tolerance_percent


def differing_fields(
    book: BookPosition, exchange: ExchangePosition, tolerance_percent: Decimal
) -> tuple[str, ...]:
    """Which of side, size and entry price differ beyond ``tolerance_percent``."""
    fields: list[str] = []
    if (book.size > 0) != (exchange.size > 0):
        fields.append("side")
    if _off_by_more_than(book.size, exchange.size, tolerance_percent):
        fields.append("size")
    if exchange.entry_price and _off_by_more_than(
        book.entry_price, exchange.entry_price, tolerance_percent
    ):
        fields.append("entry_price")
    return tuple(fields)


def reconcile(
    book: Sequence[BookPosition],
    exchange: Sequence[ExchangePosition],
    tolerance_percent: Decimal = Decimal(1),
    *,
    fetched_accounts: Collection[str] | None = None,
) -> list[ReconcileAction]:
    """The repairs that make the book match the exchange, sorted by account and symbol.

    ``fetched_accounts``: when given, book rows of other accounts are left
    alone (their exchange answer is missing, not empty). Raises ``ValueError``
    on two open rows for one (account, symbol) on either side.
    """
    if fetched_accounts is not None:
        book = [row for row in book if row.account in fetched_accounts]
    ours = _index(book, "book")
    theirs = _index(exchange, "exchange")
    actions: list[ReconcileAction] = []
    for key in sorted(ours.keys() | theirs.keys()):
        book_row, exchange_row = ours.get(key), theirs.get(key)
        if book_row is None and exchange_row is not None:
            actions.append(Adopt(exchange_row))
        elif exchange_row is None and book_row is not None:
            actions.append(ClosedExternally(book_row))
        elif book_row is not None and exchange_row is not None:
            fields = differing_fields(book_row, exchange_row, tolerance_percent)
            exceeds = "side" in fields or (
                "size" in fields and abs(exchange_row.size) > abs(book_row.size)
            )
            if exceeds:
                actions.append(ExceedsBook(book_row, exchange_row))
            elif fields:
                actions.append(Correct(book_row, exchange_row, fields))
    return actions


def apply_actions(
    book: Sequence[BookPosition], actions: Iterable[ReconcileAction]
) -> list[BookPosition]:
    """The book after the repairs (what the store's writes must achieve), sorted by key.

    Adopted rows have no id yet; a corrected row keeps its id and its entry
    when the exchange reported none.
    """
    rows = {row.key: row for row in book if row.size != 0}
    for action in actions:
        if isinstance(action, ExceedsBook):
            continue
        if isinstance(action, ClosedExternally):
            rows.pop(action.book.key, None)
        elif isinstance(action, Correct):
            ex = action.exchange
            entry = ex.entry_price if ex.entry_price else action.book.entry_price
            rows[ex.key] = BookPosition(ex.account, ex.symbol, ex.size, entry, action.book.id)
        else:
            ex = action.exchange
            rows[ex.key] = BookPosition(ex.account, ex.symbol, ex.size, ex.entry_price or ZERO)
    return [rows[key] for key in sorted(rows)]
