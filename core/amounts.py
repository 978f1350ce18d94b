"""Units and exact amounts: integers in the ledger, Decimal at the edges, floats never stored."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from decimal import ROUND_CEILING, Decimal, InvalidOperation
from enum import Enum

from .errors import InvalidRequest
from .validation import MAX_AMOUNT, shown

MICROCENTS_PER_USD = 10**8


class Unit(str, Enum):
    USD_MICROCENTS = "USD_MICROCENTS"
    TOKENS = "TOKENS"
    CREDITS = "CREDITS"
    RISK_POINTS = "RISK_POINTS"

    def __str__(self) -> str:
        return self.value


Units = tuple[tuple[Unit, int], ...]
"""Integer amounts per unit, in `Unit` declaration order: the canonical form the guard hands
a store (and fingerprints), and what adapters hand the guard."""


@dataclass(frozen=True, slots=True)
class Amount:
    """A non-negative integer quantity of one unit, e.g. `Amount(Unit.TOKENS, 1000)`."""

    unit: Unit
    amount: int

    def __post_init__(self) -> None:
        if type(self.amount) is int and 0 <= self.amount <= MAX_AMOUNT and type(
                self.unit) is Unit:
            return  # the usual case, checked in one step
        if not isinstance(self.unit, Unit):
            try:
                object.__setattr__(self, "unit", Unit(self.unit))
            except ValueError:
                names = ", ".join(u.value for u in Unit)
                raise InvalidRequest(f"Amount.unit: {shown(self.unit)} is not one of "
                                     f"{names}") from None
        amount = self.amount
        if isinstance(amount, bool) or not isinstance(amount, int):
            raise InvalidRequest(f"Amount.amount: expected a whole number of {self.unit.value}, "
                                 f"got {shown(amount)} (use usd() for dollars)")
        if not 0 <= amount <= MAX_AMOUNT:
            raise InvalidRequest(f"Amount.amount: {shown(amount)} is outside 0..{MAX_AMOUNT}")

    @classmethod
    def trusted(cls, unit: Unit, amount: int) -> Amount:
        """Build from values a store already validated, skipping the checks (hot path)."""
        made = object.__new__(cls)
        object.__setattr__(made, "unit", unit)
        object.__setattr__(made, "amount", amount)
        return made

    def __repr__(self) -> str:
        return f"Amount({self.unit.value}, {self.amount})"

    def __str__(self) -> str:
        return format_amount(self.unit, self.amount)


def trusted_amounts(units: Units) -> tuple[Amount, ...]:
    """`Amount`s of integer units that were checked already (see `Amount.trusted`)."""
    return tuple([Amount.trusted(unit, amount) for unit, amount in units])


def to_decimal(value: object, field: str) -> Decimal:
    """Read a number exactly; a float is read by its shortest repr, so 0.05 means 0.05."""
    if isinstance(value, bool):
        raise InvalidRequest(f"{field}: expected a number, got {shown(value)}")
    try:
        if isinstance(value, float):
            number = Decimal(repr(value))
        elif isinstance(value, (int, str, Decimal)):
            number = Decimal(value)
        else:
            raise InvalidRequest(f"{field}: expected a number, got {shown(value)}")
    except InvalidOperation:
        raise InvalidRequest(f"{field}: {shown(value)} is not a number") from None
    if not number.is_finite() or number < 0:
        raise InvalidRequest(f"{field}: {shown(value)} must be a finite number >= 0")
    return number


MAX_USD = Decimal(MAX_AMOUNT) / MICROCENTS_PER_USD
MICROCENT = Decimal("1e-8")


def usd_to_microcents(value: object, field: str = "usd") -> int:
    """Dollars to USD_MICROCENTS, rounding up so that an estimate never shrinks. The size
    is checked before any arithmetic (`1e999999` would overflow the Decimal context), and
    the rounding is done on the exact value (a product would round to 28 digits first)."""
    dollars = to_decimal(value, field)
    if dollars > MAX_USD:
        raise InvalidRequest(f"{field}: {shown(value)} dollars is more than the ledger can "
                             f"hold (at most {MAX_USD})")
    microcents = int(dollars.quantize(MICROCENT, ROUND_CEILING).scaleb(8))
    if microcents > MAX_AMOUNT:  # rounded up past the largest amount
        raise InvalidRequest(f"{field}: {shown(value)} dollars is more than the ledger can "
                             f"hold (at most {MAX_USD})")
    return microcents


def usd(dollars: int | float | str | Decimal) -> Amount:
    """`usd(0.05)` is `Amount(USD_MICROCENTS, 5_000_000)`; fractions of a microcent round up."""
    return Amount(Unit.USD_MICROCENTS, usd_to_microcents(dollars))


def tokens(count: int) -> Amount:
    """`count` tokens, checked: a whole number within the ledger's bounds."""
    return Amount(Unit.TOKENS, count)


def credits(count: int) -> Amount:
    """`count` credits (your own unit of account), checked like tokens."""
    return Amount(Unit.CREDITS, count)


def microcents_to_usd(microcents: int) -> Decimal:
    """Dollars, exactly, from the ledger's integer microcents (1 USD = 10^8)."""
    return Decimal(microcents) / MICROCENTS_PER_USD


def format_amount(unit: Unit, amount: int) -> str:
    """Human text for a ledger amount: `$0.12`, `1,000 tokens`."""
    if unit is Unit.USD_MICROCENTS:
        dollars = microcents_to_usd(amount)
        cents = dollars == dollars.quantize(Decimal("0.01"))
        text = f"{dollars:,.2f}" if cents else f"{dollars:,f}"  # `f`: never an exponent
        return f"-${text[1:]}" if text.startswith("-") else f"${text}"
    return f"{amount:,} {unit.value.lower().replace('_', ' ')}"


AmountsLike = Amount | Iterable[Amount]


def amounts_by_unit(value: AmountsLike, field: str) -> dict[Unit, int]:
    """One amount per unit, from an Amount or several; a unit given twice is refused."""
    items: list[Amount] | tuple[Amount, ...]
    if isinstance(value, Amount):
        items = (value,)
    elif isinstance(value, (list, tuple)):
        items = value
    else:
        raise InvalidRequest(f"{field}: expected an Amount or a list of Amounts "
                             f"(al.usd(0.05), al.tokens(1000), ...), got {shown(value)}")
    if not items:
        raise InvalidRequest(f"{field}: give at least one Amount")
    result: dict[Unit, int] = {}
    for item in items:
        if not isinstance(item, Amount):
            raise InvalidRequest(f"{field}: expected Amount values (usd(), tokens(), ...), "
                                 f"got {shown(item)}")
        if item.unit in result:
            raise InvalidRequest(f"{field}: {item.unit.value} is given twice")
        result[item.unit] = item.amount
    return result
