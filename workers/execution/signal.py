"""The signal contract: the order tasks' arguments, their refusals, and the order result.

One pydantic model per order task is the single source for the arguments'
validation, the tasks' documentation and the README's table::

    execute_market_order   MarketOrderArguments
    execute_limit_order    LimitOrderArguments     (adds price and time_in_force)
    either, by ``price``   OrderArguments          (a discriminated union, for a request body)

``parse_arguments`` runs the *static* checks: types, formats, lengths, control
characters, numeric ranges (an amount or price fits the ``NUMERIC(36,18)``
columns: under 10^18), ids in the int64 range, unknown or missing arguments,
``price``/``time_in_force`` on a market order. They need no service, so the
producer, the CLI, an HTTP endpoint and the task all run the same checks before
anything touches Postgres or the exchange. The checks that need the market
(canonical symbol, step, limits, price bounds) are ``workers.execution.validation``.

Every refusal is one line, ``"<field>: <why>"``, at most ``MAX_REASON_CHARS``
long, with the offending input cut short and its control characters escaped:
it goes into a ``signal_rejected`` event, a log line and the task's failure, and
none of them can be forged into two lines or broken by a NUL.

Limits that are settings (signal id length, metadata size, account names) come
in the validation context as ``SignalLimits``; without one the defaults apply
and any account name of the right shape passes.

An HTTP endpoint takes the same schema: ``OrderArguments`` as the request body's
type gives the OpenAPI schema; ``parse_arguments(body, limits=SignalLimits.of(settings))``
validates with the deployment's limits; ``rejection_from_errors(exc.errors())``
turns a framework's request-validation errors (locations starting with ``body``)
into the same one line; ``message_terms`` and ``conflict`` compare two bodies
under one idempotency key; ``OrderResult`` is the result's schema.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Context, Decimal
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    PlainSerializer,
    PlainValidator,
    Tag,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
)
from pydantic_core import PydanticCustomError

from workers.execution.client_ids import client_order_id, leg_for

#: A refusal line is at most this long: it is an event column, a log line and an error message.
MAX_REASON_CHARS = 200
#: How much of an offending input a refusal quotes.
SHOWN_INPUT_CHARS = 40
#: The ``orders``/``events`` column's width; ``EXECQ_MAX_SIGNAL_ID_LENGTH`` may not exceed it.
SIGNAL_ID_COLUMN_CHARS = 256
SYMBOL_COLUMN_CHARS = 64
PURPOSE_COLUMN_CHARS = 32
#: ``NUMERIC(36,18)``: 18 digits before the point. Amounts and prices stay below this.
DECIMAL_COLUMN_LIMIT = Decimal(10) ** 18
#: Postgres ``bigint``.
MAX_ROW_ID = 2**63 - 1
# A decimal longer than this, or smaller than 10^-30, is no amount any market trades;
# bounding them keeps step arithmetic exact and cheap.
MAX_DECIMAL_CHARS = 64
SMALLEST_ADJUSTED_EXPONENT = -30

MARKET_TASK = "execute_market_order"
LIMIT_TASK = "execute_limit_order"

ACCOUNT_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
LEG = re.compile(r"[a-z0-9]{1,12}")
PURPOSE = re.compile(r"[a-z0-9]+(?:_[a-z0-9]+)*")
# BASE/QUOTE:SETTLE, ccxt's unified form of a contract market. Names may be any
# printable characters but the separators (Binance lists non-ASCII bases).
UNIFIED_CONTRACT = re.compile(r"(?P<base>[^\s/:]+)/(?P<quote>[^\s/:]+):(?P<settle>[^\s/:]+)")
_DECIMAL_TEXT = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?", re.ASCII)
_NOT_FINITE_TEXT = re.compile(r"[+-]?(?:nan|snan|inf|infinity)", re.IGNORECASE)
# Quote currencies of linear perpetuals, for naming the symbol an exchange id stands for.
_LINEAR_QUOTES = ("USDT", "USDC")


# --- one safe line ------------------------------------------------------------------------


def escape_text(text: str) -> str:
    """``text`` with every non-printable character (newlines, NUL, line separators,
    lone surrogates) written as its Python escape: printable, one line, encodable."""
    if text.isprintable():
        return text
    return "".join(
        char if char.isprintable() else char.encode("unicode_escape").decode("ascii")
        for char in text
    )


def one_line(text: str, limit: int = MAX_REASON_CHARS) -> str:
    """``text`` escaped to one printable line of at most ``limit`` characters."""
    line = escape_text(text)
    return line if len(line) <= limit else line[: limit - 1] + "…"


def shown(value: object, limit: int = SHOWN_INPUT_CHARS) -> str:
    """An input as a refusal quotes it: short, escaped, its type when it is not text."""
    if isinstance(value, str):
        text = escape_text(value)
        return f"'{text}'" if len(text) <= limit else f"'{text[: limit - 1]}…'"
    if value is None or isinstance(value, bool | int | Decimal):
        return one_line(str(value), limit)
    return f"a {_type_name(value)}"


def event_text(value: object, limit: int) -> str | None:
    """An input as an event column stores it: escaped and cut to the column's width."""
    if value is None:
        return None
    text = escape_text(value if isinstance(value, str) else str(value))
    return text[:limit]


def _type_name(value: object) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, Mapping):
        return "JSON object"
    if isinstance(value, list | tuple):
        return "list"
    if isinstance(value, float):
        return "float"
    return type(value).__name__


# --- refusals -----------------------------------------------------------------------------


class SignalRefused(Exception):
    """A signal execq will not execute; ``str()`` is the one-line reason.

    Nothing was sent to the exchange and nothing is retried: the same input is
    refused the same way. ``event_type`` is the event recorded with it.
    """

    event_type: ClassVar[str] = "signal_rejected"

    def __init__(self, reason: str, field: str | None = None) -> None:
        reason = one_line(reason)
        super().__init__(reason)
        self.reason = reason
        self.field = field or reason.split(":", 1)[0]


class SignalRejected(SignalRefused):
    """An argument is invalid (the ``field`` named first in the reason)."""

    @classmethod
    def of(cls, field: str, message: str) -> SignalRejected:
        return cls(f"{field}: {message}", field)


class SignalConflict(SignalRefused):
    """The signal id and leg already name an order with other terms (``fields``)."""

    event_type: ClassVar[str] = "signal_conflict"

    def __init__(
        self, reason: str, field: str | None = "signal_id", fields: Sequence[str] = ()
    ) -> None:
        super().__init__(reason, field)
        self.fields = list(fields)


def _invalid(message: str) -> PydanticCustomError:
    # The message is a context value, not the template: braces in an input stay literal.
    return PydanticCustomError("invalid_signal", "{reason}", {"reason": message})


# --- limits from settings -----------------------------------------------------------------


@dataclass(frozen=True)
class SignalLimits:
    """The settings a static check needs. Defaults match ``workers.settings``.

    ``accounts`` None accepts any well-formed account name (the worker knows the
    configured ones; a client that does not may leave the check to it).
    """

    max_signal_id_length: int = 64
    max_metadata_bytes: int = 4096
    accounts: frozenset[str] | None = None

    @classmethod
    def of(cls, settings: Any) -> SignalLimits:
        """From a ``workers.settings.Settings`` (or anything with its three attributes)."""
        return cls(
            max_signal_id_length=min(settings.max_signal_id_length, SIGNAL_ID_COLUMN_CHARS),
            max_metadata_bytes=settings.max_metadata_bytes,
            accounts=frozenset(account.name for account in settings.accounts),
        )


_DEFAULT_LIMITS = SignalLimits()


def _limits(info: ValidationInfo) -> SignalLimits:
    context = info.context
    if isinstance(context, Mapping) and isinstance(context.get("limits"), SignalLimits):
        return context["limits"]
    return _DEFAULT_LIMITS


# --- decimals -----------------------------------------------------------------------------


def parse_decimal(value: object) -> Decimal:
    """A finite decimal from a decimal string, an int or a Decimal, in the column's range.

    Floats are refused: they may have lost digits on the producer's side
    already. Raises ``ValueError`` with the reason (without the field name).
    """
    if isinstance(value, bool) or not isinstance(value, str | int | Decimal):
        raise ValueError(f"must be a decimal string such as '0.3', got {shown(value)}")
    if isinstance(value, str):
        if len(value) > MAX_DECIMAL_CHARS:
            raise ValueError(f"is too long for a number ({len(value)} characters)")
        if _NOT_FINITE_TEXT.fullmatch(value):
            raise ValueError(f"must be a finite decimal, got {shown(value)}")
        if not _DECIMAL_TEXT.fullmatch(value):
            raise ValueError(f"is not a decimal number: {shown(value)}")
        number = Decimal(value)
    elif isinstance(value, int):
        if abs(value) >= DECIMAL_COLUMN_LIMIT:
            raise ValueError(f"is out of range: {shown(value)} (at most 18 integer digits)")
        number = Decimal(value)
    else:
        if not value.is_finite():
            raise ValueError(f"must be a finite decimal, got {shown(value)}")
        number = value
    if abs(number) >= DECIMAL_COLUMN_LIMIT:
        raise ValueError(f"is out of range: {shown(value)} (at most 18 integer digits)")
    if number and number.adjusted() < SMALLEST_ADJUSTED_EXPONENT:
        raise ValueError(f"is out of range: {shown(value)} (smaller than 1e-30)")
    return number


def plain_decimal(value: Decimal) -> str:
    """The one text form of a decimal in results: ``"0.3"``, ``"0"``, ``"1000"``; never an
    exponent, a trailing zero or a negative zero."""
    if not value:
        return "0"
    # A context as precise as the value itself: normalising never rounds.
    exact = Context(prec=max(len(value.as_tuple().digits), 1), Emin=-(10**9), Emax=10**9)
    return format(value.normalize(exact), "f")


def _positive_decimal(value: object) -> Decimal:
    try:
        number = parse_decimal(value)
    except ValueError as exc:
        raise _invalid(str(exc)) from None
    if number <= 0:
        raise _invalid(f"must be positive, got {plain_decimal(number)}")
    return number


# --- one validator per argument -----------------------------------------------------------


def _signal_id(value: object, info: ValidationInfo) -> str:
    maximum = _limits(info).max_signal_id_length
    if not isinstance(value, str):
        raise _invalid(f"must be a string, got {shown(value)}")
    if not value.strip():
        raise _invalid("must not be empty or blank")
    if len(value) > maximum:
        raise _invalid(f"is {len(value)} characters, more than the maximum {maximum}")
    if not value.isprintable():
        raise _invalid(f"contains a control or non-printable character: {shown(value)}")
    return value


def _account(value: object, info: ValidationInfo) -> str:
    if not isinstance(value, str):
        raise _invalid(f"must be an account name, got {shown(value)}")
    accounts = _limits(info).accounts
    if not ACCOUNT_NAME.fullmatch(value) or (accounts is not None and value not in accounts):
        known = ", ".join(sorted(accounts)) if accounts else "see EXECQ_ACCOUNTS"
        raise _invalid(f"unknown account {shown(value)} (configured: {known})")
    return value


def unified_symbol_hint(symbol: str) -> str | None:
    """The linear perpetual's unified symbol an alias most likely means, from its text
    alone: ``ETH/USDT`` and ``ETHUSDT`` -> ``ETH/USDT:USDT``; None when it cannot tell."""
    text = symbol.strip().upper()
    if "/" in text and ":" not in text:
        base, _, quote = text.partition("/")
        return f"{base}/{quote}:{quote}" if base.isalnum() and quote.isalnum() else None
    if ":" in text:
        # Only a case or whitespace slip: another settlement is another instrument.
        match = UNIFIED_CONTRACT.fullmatch(text)
        return text if match is not None and match["settle"] == match["quote"] else None
    compact = re.sub(r"[-_]", "", text.removesuffix("-SWAP").removesuffix("_PERP"))
    for quote in _LINEAR_QUOTES:
        base = compact.removesuffix(quote)
        if base != compact and base.isalnum():
            return f"{base}/{quote}:{quote}"
    return None


def _symbol(value: object) -> str:
    if not isinstance(value, str):
        raise _invalid(f"must be a ccxt unified symbol such as 'ETH/USDT:USDT', got {shown(value)}")
    if len(value) > SYMBOL_COLUMN_CHARS:
        raise _invalid(f"is {len(value)} characters, more than the maximum {SYMBOL_COLUMN_CHARS}")
    if not value.isprintable():
        raise _invalid(f"contains a control or non-printable character: {shown(value)}")
    match = UNIFIED_CONTRACT.fullmatch(value)
    if match is not None and match["settle"] == match["quote"]:
        return value
    hint = unified_symbol_hint(value)
    if match is not None and hint is None:
        raise _invalid(f"{shown(value)} is not a linear perpetual (BASE/QUOTE:QUOTE)")
    if hint is not None and hint != value:
        raise _invalid(f"{shown(value)} is not the linear perpetual's unified symbol; use {hint!r}")
    raise _invalid(f"{shown(value)} is not a ccxt unified perpetual symbol such as 'ETH/USDT:USDT'")


def _side(value: object) -> Literal["buy", "sell"]:
    if value == "buy" or value == "sell":
        return value  # type: ignore[return-value]
    raise _invalid(f"must be 'buy' or 'sell', got {shown(value)}")


def _time_in_force(value: object) -> Literal["GTC", "IOC"]:
    if value == "GTC" or value == "IOC":
        return value  # type: ignore[return-value]
    raise _invalid(f"must be 'GTC' or 'IOC', got {shown(value)}")


def _flag(value: object) -> bool:
    if isinstance(value, bool):
        return value
    raise _invalid(f"must be true or false, got {shown(value)}")


def _purpose(value: object) -> str:
    if (
        not isinstance(value, str)
        or len(value) > PURPOSE_COLUMN_CHARS
        or not PURPOSE.fullmatch(value)
    ):
        raise _invalid(
            f"must be a lowercase word such as 'open' or 'aged_close' "
            f"(a-z, 0-9, single underscores, at most {PURPOSE_COLUMN_CHARS}), got {shown(value)}"
        )
    return value


def _leg(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not LEG.fullmatch(value):
        raise _invalid(
            f"must be 1-12 lowercase letters or digits (omit it for the purpose), got {shown(value)}"
        )
    return value


def _row_id(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise _invalid(f"must be an integer id, got {shown(value)}")
    if not 1 <= value <= MAX_ROW_ID:
        raise _invalid(f"must be an id from 1 to 2^63-1, got {shown(value)}")
    return value


def _contains_nul(value: object) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, Mapping):
        return any(_contains_nul(key) or _contains_nul(item) for key, item in value.items())
    if isinstance(value, list | tuple):
        return any(_contains_nul(item) for item in value)
    return False


def _metadata(value: object, info: ValidationInfo) -> dict[str, Any] | None:
    if value is None:
        return None
    maximum = _limits(info).max_metadata_bytes
    if not isinstance(value, Mapping):
        raise _invalid(f"must be a JSON object, got {shown(value)}")
    if not all(isinstance(key, str) for key in value):
        raise _invalid("keys must be strings")
    try:
        encoded = json.dumps(
            dict(value), allow_nan=False, ensure_ascii=False, separators=(",", ":")
        )
        size = len(encoded.encode("utf-8"))
    except RecursionError:
        raise _invalid("is nested too deeply") from None
    except UnicodeEncodeError:
        raise _invalid("contains text that is not valid Unicode (a lone surrogate)") from None
    except (TypeError, ValueError) as exc:
        raise _invalid(f"is not JSON-serialisable ({one_line(str(exc), 60)})") from None
    if size > maximum:
        raise _invalid(f"is {size} bytes as JSON, more than the maximum {maximum}")
    # PostgreSQL's jsonb cannot hold NUL in any string.
    if _contains_nul(value):
        raise _invalid("contains a NUL character")
    # The stored copy is exactly what JSON gives back, detached from the caller's objects.
    return json.loads(encoded)


def _decimal_schema(example: str) -> WithJsonSchema:
    return WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "pattern": _DECIMAL_TEXT.pattern, "maxLength": 64},
                {"type": "integer"},
            ],
            "examples": [example],
        }
    )


_DECIMAL_OUT = PlainSerializer(plain_decimal, return_type=str)

SignalId = Annotated[
    str,
    PlainValidator(_signal_id),
    WithJsonSchema({"type": "string", "minLength": 1, "maxLength": SIGNAL_ID_COLUMN_CHARS}),
]
AccountName = Annotated[
    str,
    PlainValidator(_account),
    WithJsonSchema({"type": "string", "pattern": ACCOUNT_NAME.pattern}),
]
Symbol = Annotated[
    str,
    PlainValidator(_symbol),
    WithJsonSchema(
        {"type": "string", "maxLength": SYMBOL_COLUMN_CHARS, "examples": ["ETH/USDT:USDT"]}
    ),
]
Side = Annotated[
    Literal["buy", "sell"], PlainValidator(_side), WithJsonSchema({"enum": ["buy", "sell"]})
]
Amount = Annotated[Decimal, PlainValidator(_positive_decimal), _DECIMAL_OUT, _decimal_schema("0.3")]
Price = Annotated[Decimal, PlainValidator(_positive_decimal), _DECIMAL_OUT, _decimal_schema("3400")]
TimeInForce = Annotated[
    Literal["GTC", "IOC"], PlainValidator(_time_in_force), WithJsonSchema({"enum": ["GTC", "IOC"]})
]
Flag = Annotated[bool, PlainValidator(_flag), WithJsonSchema({"type": "boolean"})]
Purpose = Annotated[
    str,
    PlainValidator(_purpose),
    WithJsonSchema(
        {"type": "string", "pattern": PURPOSE.pattern, "maxLength": PURPOSE_COLUMN_CHARS}
    ),
]
Leg = Annotated[
    str | None,
    PlainValidator(_leg),
    WithJsonSchema({"anyOf": [{"type": "string", "pattern": LEG.pattern}, {"type": "null"}]}),
]
RowId = Annotated[
    int | None,
    PlainValidator(_row_id),
    WithJsonSchema(
        {"anyOf": [{"type": "integer", "minimum": 1, "maximum": MAX_ROW_ID}, {"type": "null"}]}
    ),
]
Metadata = Annotated[
    dict[str, Any] | None,
    PlainValidator(_metadata),
    WithJsonSchema({"anyOf": [{"type": "object"}, {"type": "null"}]}),
]


def _doc(type_text: str, meaning: str, **extra: Any) -> Any:
    """A field's README line: the accepted form and what it means."""
    return Field(description=meaning, json_schema_extra={"x-accepts": type_text}, **extra)


# --- the models ---------------------------------------------------------------------------


class BaseOrderArguments(BaseModel):
    """The arguments both order tasks take (``MarketOrderArguments``, ``LimitOrderArguments``)."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    order_type: ClassVar[Literal["market", "limit"]]
    task_name: ClassVar[str]

    signal_id: SignalId = _doc(
        "string, 1-64 printable characters (`EXECQ_MAX_SIGNAL_ID_LENGTH`, at most 256)",
        "The idempotency key: with `leg` it names one order. Sent again with the same "
        "order, it answers that order's result; with another order, it is refused "
        "(`signal_conflict`).",
    )
    exchange: AccountName = _doc("string", "A configured account (`EXECQ_ACCOUNTS`).")
    symbol: Symbol = _doc(
        "string, at most 64 characters",
        "The ccxt unified symbol of a linear perpetual the account trades, e.g. "
        "`ETH/USDT:USDT`. Aliases (`ETH/USDT`, `ETHUSDT`) are refused with the symbol to use.",
    )
    side: Side = _doc("`buy` or `sell`", "Order side.")
    amount: Amount = _doc(
        "decimal string (or integer), > 0, < 10^18",
        "Base-asset amount, floored to the market's step (the result reports `requested` "
        "and `amount`); within the market's minimum, maximum (for a market order, its "
        "market-order maximum) and minimum notional.",
    )
    reduce_only: Flag = _doc(
        "boolean", "Only reduce a position; passes the kill switch.", default=False
    )
    purpose: Purpose = _doc(
        "string, `[a-z0-9]+(_[a-z0-9]+)*`, at most 32",
        "What the order is for (`open`, `close`, ...); the default leg.",
        default="open",
    )
    leg: Leg = _doc(
        "string, 1-12 of `[a-z0-9]`",
        "Which order of the signal this is (default: the purpose without underscores, "
        "cut to 12). One order per (`signal_id`, `leg`).",
        default=None,
    )
    position_id: RowId = _doc(
        "integer, an existing position id", "The position the order belongs to.", default=None
    )
    aged_id: RowId = _doc(
        "integer, an existing aged-position id", "The aged episode the order closes.", default=None
    )
    metadata: Metadata = _doc(
        "JSON object, at most 4096 bytes as UTF-8 JSON (`EXECQ_MAX_METADATA_BYTES`), no NUL",
        "Stored with the order as given; not part of the idempotency comparison.",
        default=None,
    )

    @property
    def effective_leg(self) -> str:
        return leg_for(self.purpose, self.leg)

    @property
    def client_order_id(self) -> str:
        return client_order_id(self.signal_id, self.effective_leg)

    def task_kwargs(self) -> dict[str, Any]:
        """The JSON arguments that name this order (optional ones only when given)."""
        return self.model_dump(mode="json", exclude_none=True)


class MarketOrderArguments(BaseOrderArguments):
    """The arguments of ``execute_market_order``."""

    order_type: ClassVar[Literal["market", "limit"]] = "market"
    task_name: ClassVar[str] = MARKET_TASK

    @property
    def price(self) -> None:
        return None

    @property
    def time_in_force(self) -> None:
        return None


class LimitOrderArguments(BaseOrderArguments):
    """The arguments of ``execute_limit_order``: a market order's plus the price."""

    order_type: ClassVar[Literal["market", "limit"]] = "limit"
    task_name: ClassVar[str] = LIMIT_TASK

    price: Price = _doc(
        "decimal string (or integer), > 0, < 10^18",
        "Limit price, rounded to the market's tick in your favour (a buy down, a sell up); "
        "within the market's price limits.",
    )
    time_in_force: TimeInForce = _doc(
        "`GTC` or `IOC`",
        "`GTC` rests on the book and is followed to its end; `IOC` fills what it can now.",
        default="GTC",
    )


AnyOrderArguments = MarketOrderArguments | LimitOrderArguments
TASK_ARGUMENTS: dict[str, type[BaseOrderArguments]] = {
    MARKET_TASK: MarketOrderArguments,
    LIMIT_TASK: LimitOrderArguments,
}
LIMIT_ONLY = ("price", "time_in_force")


def _order_type_of(payload: Any) -> str:
    has_price = payload.get("price") is not None if isinstance(payload, Mapping) else False
    has_price = has_price or isinstance(payload, LimitOrderArguments)
    return "limit" if has_price else "market"


#: Either order, told apart by ``price``: the body of a request that may be either.
OrderArguments = Annotated[
    Annotated[MarketOrderArguments, Tag("market")] | Annotated[LimitOrderArguments, Tag("limit")],
    Discriminator(_order_type_of),
]
_EITHER = TypeAdapter(OrderArguments)


# --- parsing and its one line -------------------------------------------------------------


def parse_arguments(
    payload: object,
    model: type[BaseOrderArguments] | None = None,
    limits: SignalLimits | None = None,
) -> AnyOrderArguments:
    """The validated arguments of ``model`` (or either order, by ``price``) from ``payload``.

    Raises ``SignalRejected`` with the one-line reason of the first problem.
    """
    context = {"limits": limits or _DEFAULT_LIMITS}
    try:
        if model is None:
            return _EITHER.validate_python(payload, context=context)
        return model.model_validate(payload, context=context)
    except ValidationError as exc:
        raise rejection_from_errors(exc.errors(include_url=False, include_input=False)) from None


def arguments_for_task(
    task_name: str,
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    limits: SignalLimits | None = None,
) -> AnyOrderArguments:
    """A task message's arguments, validated: keyword arguments only."""
    if args:
        raise SignalRejected.of(
            "arguments",
            f"{len(args)} positional argument(s) given; send every argument by name (kwargs)",
        )
    return parse_arguments(dict(kwargs), TASK_ARGUMENTS[task_name], limits)


_SKIPPED_LOCATIONS = frozenset({"body", "market", "limit"})


def _field_of(location: Sequence[Any]) -> str:
    """The argument an error is about; a request body's and a union's prefixes skipped."""
    parts = [str(part) for part in location if str(part) not in _SKIPPED_LOCATIONS]
    return one_line(parts[0], SHOWN_INPUT_CHARS) if parts else "arguments"


def _message(error: Mapping[str, Any], field: str) -> str:
    kind = error.get("type")
    if kind == "invalid_signal":
        return str((error.get("ctx") or {}).get("reason", error.get("msg", "is invalid")))
    if kind == "missing":
        return "is required"
    if kind == "extra_forbidden":
        if field in LIMIT_ONLY:
            return "is only for limit orders (execute_limit_order); a market order takes none"
        return "is not an argument of this task"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return "must be a JSON object of named arguments"
    return str(error.get("msg", "is invalid"))


def rejection_from_errors(errors: Sequence[Mapping[str, Any]]) -> SignalRejected:
    """The one-line refusal for pydantic's errors (``ValidationError.errors()``, or a web
    framework's request-validation errors, whose locations start with ``body``)."""
    if not errors:
        return SignalRejected.of("arguments", "are invalid")
    first = errors[0]
    field = _field_of(first.get("loc", ()))
    message = _message(first, field)
    more = len(errors) - 1
    suffix = f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""
    reason = f"{field}: {message}"
    if len(reason) + len(suffix) > MAX_REASON_CHARS:
        reason = one_line(reason, MAX_REASON_CHARS - len(suffix))
    return SignalRejected(reason + suffix, field)


# --- idempotency --------------------------------------------------------------------------

#: What makes two orders under one (signal id, leg) the same order: what is traded.
#: ``position_id``/``aged_id`` are links the book maintains and ``metadata`` is an
#: annotation; neither is compared.
ORDER_TERMS = (
    "exchange",
    "symbol",
    "side",
    "order_type",
    "amount",
    "price",
    "time_in_force",
    "reduce_only",
    "purpose",
)


def order_terms(order: Any) -> dict[str, Any]:
    """The compared terms of an order: from arguments, an order row (``account``) or a
    validated order. Decimals as their plain text, so ``0.30`` equals ``0.3``."""
    terms: dict[str, Any] = {}
    for name in ORDER_TERMS:
        if name == "exchange" and not hasattr(order, "exchange"):
            value = order.account
        else:
            value = getattr(order, name, None)
        terms[name] = plain_decimal(value) if isinstance(value, Decimal) else value
    return terms


# Comparing a recorded message with a new one needs its terms, not today's limits.
_COMPARISON_LIMITS = SignalLimits(
    max_signal_id_length=SIGNAL_ID_COLUMN_CHARS, max_metadata_bytes=2**31
)


def message_terms(task_name: str, kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The compared terms of a task message: parsed by its task's model, or its raw
    arguments when they do not parse (a message recorded before this schema)."""
    model = TASK_ARGUMENTS.get(task_name)
    try:
        parsed = None if model is None else parse_arguments(kwargs, model, _COMPARISON_LIMITS)
    except SignalRejected:
        parsed = None
    if parsed is not None:
        return order_terms(parsed)
    return {name: kwargs.get(name) for name in ORDER_TERMS} | {"order_type": task_name}


def differing_terms(first: Mapping[str, Any], second: Mapping[str, Any]) -> list[str]:
    """The names of the terms that differ, in ``ORDER_TERMS`` order."""
    return [name for name in ORDER_TERMS if first.get(name) != second.get(name)]


def conflict(
    signal_id: str, leg: str, existing: Mapping[str, Any], asked: Mapping[str, Any]
) -> SignalConflict | None:
    """None when ``asked`` is the order ``existing`` already is; else the refusal, naming
    the differing terms (first order's value -> this one's)."""
    fields = differing_terms(existing, asked)
    if not fields:
        return None
    changes = ", ".join(
        f"{name} {shown(existing.get(name), 16)}->{shown(asked.get(name), 16)}" for name in fields
    )
    reason = f"signal_id: {shown(signal_id, 24)} leg {leg} is already another order; differs in {changes}"
    return SignalConflict(reason, "signal_id", fields)


# --- the result ---------------------------------------------------------------------------

#: Statuses that carry the last error: the order ended, or stays in doubt, without a fill.
UNFILLED_OUTCOMES = frozenset({"rejected", "canceled", "expired", "unknown"})


class OrderResult(BaseModel):
    """What an order task returns (JSON): one format whether the order just ran or had run."""

    model_config = ConfigDict(frozen=True)

    order_id: str | None = _doc("string or null", "The exchange's order id (null if never placed).")
    client_order_id: str = _doc("string", "execq's id for (`signal_id`, `leg`) on the exchange.")
    status: str = _doc(
        "string",
        "`filled`; `open` or `partially_filled` (a resting limit order); `canceled`, "
        "`expired` (with the real `filled`); `rejected`; `unknown` (the create's outcome in "
        "doubt past the visibility window: alerted, never resent, resolved by the sweeps).",
    )
    requested: str = _doc("decimal string", "The amount as asked.")
    amount: str = _doc("decimal string", "The amount placed: `requested` floored to the step.")
    filled: str = _doc("decimal string", 'The amount filled, `"0"` when none.')
    average_price: str | None = _doc("decimal string or null", "Average fill price.")
    attempts: int = _doc("integer", "Create requests actually sent to the exchange.")
    error: str | None = _doc(
        "string or null",
        "Why the order did not fill (null when it filled or rests); every attempt's error "
        "is in the events.",
    )
    error_class: str | None = _doc(
        "string or null",
        "`permanent`, `kill_switch`, `account` (the exchange refused the key), `not_found` "
        "(given up after being unknown), or the retry class whose attempts ran out; null as "
        "`error`.",
    )


def order_result(
    *,
    exchange_order_id: str | None,
    client_order_id: str,
    status: str,
    requested: Decimal | None,
    amount: Decimal,
    filled: Decimal,
    average_price: Decimal | None,
    attempts: int,
    last_error: str | None,
    last_error_class: str | None,
) -> dict[str, Any]:
    """The task result for an order in the one format (``OrderResult``'s fields)."""
    unfilled = str(status) in UNFILLED_OUTCOMES
    return {
        "order_id": exchange_order_id,
        "client_order_id": client_order_id,
        "status": str(status),
        "requested": plain_decimal(amount if requested is None else requested),
        "amount": plain_decimal(amount),
        "filled": plain_decimal(filled),
        "average_price": None if average_price is None else plain_decimal(average_price),
        "attempts": attempts,
        "error": last_error if unfilled else None,
        "error_class": last_error_class if unfilled else None,
    }


# --- documentation from the models --------------------------------------------------------


def _table_rows(model: type[BaseModel], names: Iterable[str], orders: str | None) -> list[str]:
    rows = []
    for name in names:
        info = model.model_fields[name]
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        if info.is_required():
            default = "required"
        else:
            default = "`null`" if info.default is None else f"`{json.dumps(info.default)}`"
        cells = [f"`{name}`", str(extra.get("x-accepts", ""))]
        if orders is not None:
            cells.append(orders)
        cells += [default, info.description or ""]
        rows.append("| " + " | ".join(cells) + " |")
    return rows


def arguments_table() -> str:
    """The README's table of the order tasks' arguments, from the models."""
    common = list(MarketOrderArguments.model_fields)
    limit_only = [name for name in LimitOrderArguments.model_fields if name not in common]
    lines = [
        "| argument | accepts | orders | default | meaning |",
        "|---|---|---|---|---|",
        *_table_rows(LimitOrderArguments, common[:5], "both"),
        *_table_rows(LimitOrderArguments, limit_only, "limit"),
        *_table_rows(LimitOrderArguments, common[5:], "both"),
    ]
    return "\n".join(lines)


def result_table() -> str:
    """The README's table of the order result, from ``OrderResult``."""
    lines = ["| field | type | meaning |", "|---|---|---|"]
    for name, info in OrderResult.model_fields.items():
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        lines.append(f"| `{name}` | {extra.get('x-accepts', '')} | {info.description or ''} |")
    return "\n".join(lines)


def task_docstring(model: type[BaseOrderArguments], summary: str) -> str:
    """A task's docstring: ``summary`` and its arguments, from the model."""
    lines = [summary, "", "Arguments (JSON, by name only):", ""]
    for name, info in model.model_fields.items():
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        default = "required" if info.is_required() else f"default {json.dumps(info.default)}"
        lines.append(f"{name} ({extra.get('x-accepts', '')}; {default})")
        lines.append(f"    {info.description}")
    lines += ["", "Returns the order result (``OrderResult``). Refusals raise ``SignalRefused``."]
    return "\n".join(lines)
