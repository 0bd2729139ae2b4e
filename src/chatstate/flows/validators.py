"""Validators for what users type: each returns ok with a clean value, or an error text.

A validator is a callable ``(text, ctx) -> Validation`` (sync or async). Values are JSON-friendly
so they can be stored in the session: dates are ISO strings ("2025-03-14"), times "HH:MM", phones
E.164 ("+34612345678"). Every built-in takes overridable messages; placeholders such as ``{min}``,
``{max}``, ``{options}`` and ``{input}`` (the user's text, clipped) are filled in.

Plain functions in the style ``fn(text) -> True | "error text"`` are accepted everywhere a
validator is, through `as_validator`.
"""

from __future__ import annotations

import datetime as dt
import inspect
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from ..errors import ConfigurationError
from .suggest import clip, did_you_mean, find_exact, fold, suggest


@dataclass(frozen=True)
class Validation:
    """Outcome of validating one input: `ok` with `value`, or `error` (with optional suggestions
    that a step may offer as buttons)."""

    ok: bool
    value: Any = None
    error: str | None = None
    suggestions: tuple[str, ...] = ()

    @classmethod
    def success(cls, value: Any) -> Validation:
        return cls(True, value=value)

    @classmethod
    def failure(cls, error: str, suggestions: Iterable[str] = ()) -> Validation:
        return cls(False, error=error, suggestions=tuple(suggestions))


@dataclass(frozen=True)
class ValidationContext:
    """What a validator may need besides the text: the time now (for "today"), the answers
    collected so far, and the user's language."""

    now: float = 0.0
    data: Mapping[str, Any] = field(default_factory=dict)
    language: str = "en"


Validator = Callable[[str, ValidationContext], "Validation | Awaitable[Validation]"]
UserValidator = Callable[..., Any]


def _fill(template: str, text: str = "", **values: Any) -> str:
    return template.format(input=clip(text), **values)


def _coerce_result(result: Any, text: str) -> Validation:
    if isinstance(result, Validation):
        return result
    if result is True or result is None:
        return Validation.success(text)
    if isinstance(result, str):
        return Validation.failure(result)
    if result is False:
        return Validation.failure("That answer is not valid here. Please try again.")
    raise TypeError(
        f"a validator returned {type(result).__name__}; return a Validation, True or an error text"
    )


def as_validator(fn: UserValidator) -> Validator:
    """Wrap `fn(text)` or `fn(text, ctx)` returning Validation, True/None or an error string."""
    if isinstance(fn, _Base):
        return fn
    try:
        params = [
            p for p in inspect.signature(fn).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)
        ]
        takes_ctx = len(params) >= 2 or any(p.kind is p.VAR_POSITIONAL for p in params)
    except (TypeError, ValueError):  # builtins without a signature: assume text only
        takes_ctx = False

    async def run(text: str, ctx: ValidationContext) -> Validation:
        result = fn(text, ctx) if takes_ctx else fn(text)
        if inspect.isawaitable(result):
            result = await result
        return _coerce_result(result, text)

    run.__name__ = getattr(fn, "__name__", "validator")
    return run


async def run_validator(validator: Validator, text: str, ctx: ValidationContext) -> Validation:
    result = validator(text, ctx)
    if inspect.isawaitable(result):
        result = await result
    return _coerce_result(result, text)


class _Base:
    """Built-in validators are small objects so diagrams and help can describe them."""

    messages: dict[str, str]

    def __init__(self, messages: Mapping[str, str] | None = None) -> None:
        defaults = dict(type(self).DEFAULTS)
        unknown = set(messages or ()) - set(defaults)
        if unknown:
            raise ConfigurationError(
                f"{type(self).__name__} has no message(s) {sorted(unknown)}; "
                f"overridable: {sorted(defaults)}"
            )
        defaults.update(messages or {})
        self.messages = defaults

    DEFAULTS: ClassVar[Mapping[str, str]] = {}

    def describe(self) -> str:
        return type(self).__name__.lower()

    def __call__(self, text: str, ctx: ValidationContext) -> Validation:
        raise NotImplementedError


# --------------------------------------------------------------------------------- text


class Length(_Base):
    DEFAULTS: ClassVar[Mapping[str, str]] = {
        "short": "That is too short: at least {min} characters, please.",
        "long": "That is too long: at most {max} characters, please.",
    }

    def __init__(
        self, min: int = 1, max: int | None = None, messages: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(messages)
        if min < 0 or (max is not None and max < min):
            raise ConfigurationError(
                f"length bounds must satisfy 0 <= min <= max, got {min}..{max}"
            )
        self.min, self.max = min, max

    def __call__(self, text: str, ctx: ValidationContext) -> Validation:
        value = " ".join(text.split())
        if len(value) < self.min:
            return Validation.failure(_fill(self.messages["short"], text, min=self.min))
        if self.max is not None and len(value) > self.max:
            return Validation.failure(_fill(self.messages["long"], text, max=self.max))
        return Validation.success(value)

    def describe(self) -> str:
        return f"{self.min}..{self.max if self.max is not None else ''} chars"


class Regex(_Base):
    DEFAULTS: ClassVar[Mapping[str, str]] = {
        "invalid": "That does not look right. Please try again.",
    }

    def __init__(
        self, pattern: str | re.Pattern[str], messages: Mapping[str, str] | None = None, *,
        error: str | None = None,
    ) -> None:
        super().__init__({**(messages or {}), **({"invalid": error} if error else {})})
        self.pattern = re.compile(pattern) if isinstance(pattern, str) else pattern

    def __call__(self, text: str, ctx: ValidationContext) -> Validation:
        value = text.strip()
        if len(value) > 1000 or not self.pattern.fullmatch(value):
            return Validation.failure(_fill(self.messages["invalid"], text))
        return Validation.success(value)

    def describe(self) -> str:
        return f"regex {self.pattern.pattern}"


_EMAIL_RE = re.compile(
    r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.[A-Za-z]{2,63}"
)


class Email(_Base):
    DEFAULTS: ClassVar[Mapping[str, str]] = {
        "invalid": "Please enter a valid email address, like name@example.com.",
    }

    def __call__(self, text: str, ctx: ValidationContext) -> Validation:
        value = text.strip()
        local, _, domain = value.rpartition("@")
        if (
            len(value) > 254 or len(local) > 64 or ".." in value
            or local.startswith(".") or local.endswith(".") or not _EMAIL_RE.fullmatch(value)
        ):
            return Validation.failure(_fill(self.messages["invalid"], text))
        # Domains are case-insensitive; the local part is kept as typed.
        return Validation.success(f"{local}@{domain.lower()}")


class Phone(_Base):
    """A phone number checked by `phonenumbers` (libphonenumber), returned in E.164 form.

    Without `region` the number must start with + and the country code."""

    DEFAULTS: ClassVar[Mapping[str, str]] = {
        "invalid": "Please enter a valid phone number with its country code, e.g. +34 612 345 678.",
    }

    def __init__(
        self, region: str | None = None, messages: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(messages)
        self.region = region.upper() if region else None

    def __call__(self, text: str, ctx: ValidationContext) -> Validation:
        import phonenumbers

        value = text.strip()
        if not value or len(value) > 40:
            return Validation.failure(_fill(self.messages["invalid"], text))
        try:
            parsed = phonenumbers.parse(value, self.region)
        except phonenumbers.NumberParseException:
            return Validation.failure(_fill(self.messages["invalid"], text))
        if not phonenumbers.is_valid_number(parsed):
            return Validation.failure(_fill(self.messages["invalid"], text))
        return Validation.success(
            phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)
        )


# ------------------------------------------------------------------------------- numbers


_NUMBER_RE = re.compile(r"[+-]?(?:\d+(?:[.,]\d*)?|[.,]\d+)")


class Number(_Base):
    DEFAULTS: ClassVar[Mapping[str, str]] = {
        "invalid": "Please enter a number.",
        "min": "The minimum is {min}.",
        "max": "The maximum is {max}.",
    }
    integer = False

    def __init__(
        self, min: float | None = None, max: float | None = None,
        messages: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(messages)
        if min is not None and max is not None and min > max:
            raise ConfigurationError(f"number bounds must satisfy min <= max, got {min}..{max}")
        self.min, self.max = min, max

    def parse(self, text: str) -> float | int | None:
        value = text.strip().replace(" ", "").replace("_", "")
        if len(value) > 40 or not _NUMBER_RE.fullmatch(value):
            return None
        value = value.replace(",", ".")  # a decimal comma, as typed in es/pt
        if self.integer:
            number = float(value)
            return int(number) if number.is_integer() else None
        return float(value)

    def __call__(self, text: str, ctx: ValidationContext) -> Validation:
        number = self.parse(text)
        if number is None:
            return Validation.failure(_fill(self.messages["invalid"], text))
        if self.min is not None and number < self.min:
            return Validation.failure(_fill(self.messages["min"], text, min=_num(self.min)))
        if self.max is not None and number > self.max:
            return Validation.failure(_fill(self.messages["max"], text, max=_num(self.max)))
        return Validation.success(number)

    def describe(self) -> str:
        kind = "integer" if self.integer else "number"
        lo = "" if self.min is None else _num(self.min)
        hi = "" if self.max is None else _num(self.max)
        return f"{kind} {lo}..{hi}" if (lo or hi) else kind


class Integer(Number):
    DEFAULTS: ClassVar[Mapping[str, str]] = {
        **Number.DEFAULTS, "invalid": "Please enter a whole number.",
    }
    integer = True


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


# ------------------------------------------------------------------------------- choice


class Choice(_Base):
    """One of `options`, matched ignoring case and accents; near misses get a suggestion.

    `options` may be a mapping from what is shown to the value stored."""

    DEFAULTS: ClassVar[Mapping[str, str]] = {
        "invalid": "Please choose one of: {options}.",
        "suggest": "{suggestion}",
    }

    def __init__(
        self, options: Sequence[str] | Mapping[str, Any], messages: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(messages)
        self.values: dict[str, Any] = (
            dict(options) if isinstance(options, Mapping) else {str(o): o for o in options}
        )
        if not self.values:
            raise ConfigurationError("a choice needs at least one option")

    @property
    def options(self) -> list[str]:
        return list(self.values)

    def __call__(self, text: str, ctx: ValidationContext) -> Validation:
        match = find_exact(text, self.values)
        if match is not None:
            return Validation.success(self.values[match])
        listed = ", ".join(self.values)
        error = _fill(self.messages["invalid"], text, options=listed)
        hint = did_you_mean(text, self.values)
        if hint:
            error = f"{_fill(self.messages['suggest'], text, suggestion=hint)} {error}"
        return Validation.failure(error, suggest(text, self.values))

    def describe(self) -> str:
        return "one of " + ", ".join(clip(o, 20) for o in self.values)


# --------------------------------------------------------------------------- date / time

_TODAY = {"today", "hoy", "hoje"}
_TOMORROW = {"tomorrow", "manana", "amanha", "tmrw"}
_WEEKDAYS: dict[str, int] = {}
for _index, _names in enumerate(
    [
        "monday mon lunes lun segunda segunda-feira seg",
        "tuesday tue tues martes mar terca terca-feira ter",
        "wednesday wed miercoles mie quarta quarta-feira qua",
        "thursday thu thurs jueves jue quinta quinta-feira qui",
        "friday fri viernes vie sexta sexta-feira sex",
        "saturday sat sabado sab",
        "sunday sun domingo dom",
    ]
):
    for _name in _names.split():
        _WEEKDAYS[_name] = _index
_ISO_RE = re.compile(r"(\d{4})-(\d{1,2})-(\d{1,2})")
_DMY_RE = re.compile(r"(\d{1,2})[/.\-](\d{1,2})(?:[/.\-](\d{4}|\d{2}))?")
_DAY_NAMES = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]


def _zone(tz: str | dt.tzinfo) -> dt.tzinfo:
    if isinstance(tz, dt.tzinfo):
        return tz
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigurationError(
            f"unknown time zone {tz!r}; use an IANA name such as 'Europe/Madrid' or 'UTC'"
        ) from None


class Date(_Base):
    """A calendar date: ISO (2025-03-14), DD/MM/YYYY (also with '-' or '.', or DD/MM for this
    year), "today"/"tomorrow" and weekday names (next such day, today included) in English,
    Spanish and Portuguese. "Today" is taken in the validator's time zone."""

    DEFAULTS: ClassVar[Mapping[str, str]] = {
        "invalid": (
            "I could not read that date. Try YYYY-MM-DD, DD/MM/YYYY, \"today\", \"tomorrow\" "
            "or a weekday name."
        ),
        "past": "That date is in the past. Please choose today or a later date.",
        "too_far": "That is too far ahead: choose a date within {max_days} days.",
        "weekday": "We are closed on {day}s. Please choose another day.",
    }

    def __init__(
        self, tz: str | dt.tzinfo = "UTC", *, allow_past: bool = True,
        max_days_ahead: int | None = None, weekdays: Iterable[int] | None = None,
        messages: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(messages)
        self.tz = _zone(tz)
        self.allow_past = allow_past
        self.max_days_ahead = max_days_ahead
        self.weekdays = frozenset(weekdays) if weekdays is not None else None

    def today(self, ctx: ValidationContext) -> dt.date:
        return dt.datetime.fromtimestamp(ctx.now, tz=self.tz).date()

    def parse(self, text: str, today: dt.date) -> dt.date | None:
        word = fold(text).rstrip(".!")
        if len(word) > 40:
            return None
        if word in _TODAY:
            return today
        if word in _TOMORROW:
            return today + dt.timedelta(days=1)
        if word in _WEEKDAYS:
            return today + dt.timedelta(days=(_WEEKDAYS[word] - today.weekday()) % 7)
        try:
            if m := _ISO_RE.fullmatch(word):
                return dt.date(int(m[1]), int(m[2]), int(m[3]))
            if m := _DMY_RE.fullmatch(word):
                year = today.year if m[3] is None else int(m[3])
                if m[3] is not None and len(m[3]) == 2:
                    year += 2000
                return dt.date(year, int(m[2]), int(m[1]))
        except ValueError:  # 31/02/2025 and friends
            return None
        return None

    def __call__(self, text: str, ctx: ValidationContext) -> Validation:
        today = self.today(ctx)
        day = self.parse(text, today)
        if day is None:
            return Validation.failure(_fill(self.messages["invalid"], text))
        if not self.allow_past and day < today:
            return Validation.failure(_fill(self.messages["past"], text))
        if self.max_days_ahead is not None and (day - today).days > self.max_days_ahead:
            return Validation.failure(
                _fill(self.messages["too_far"], text, max_days=self.max_days_ahead)
            )
        if self.weekdays is not None and day.weekday() not in self.weekdays:
            return Validation.failure(
                _fill(self.messages["weekday"], text, day=_DAY_NAMES[day.weekday()])
            )
        return Validation.success(day.isoformat())


_TIME_RE = re.compile(r"(\d{1,2})(?:[:.h](\d{2}))?\s*(am|pm|a\.m\.|p\.m\.|h)?")


class Time(_Base):
    """A time of day: 14:30, 14.30, 14h30, 9, 9am, 2:30 pm. Returned as "HH:MM"."""

    DEFAULTS: ClassVar[Mapping[str, str]] = {
        "invalid": "I could not read that time. Try HH:MM, e.g. 14:30, or 2:30 pm.",
        "range": "Please choose a time between {start} and {end}.",
    }

    def __init__(
        self, start: str | None = None, end: str | None = None,
        messages: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(messages)
        self.start = self._parse(start) if start else None
        self.end = self._parse(end) if end else None
        if (start and self.start is None) or (end and self.end is None):
            raise ConfigurationError(f"time bounds must be 'HH:MM', got {start!r}..{end!r}")

    @staticmethod
    def _parse(text: str) -> dt.time | None:
        m = _TIME_RE.fullmatch(fold(text)) if len(text) <= 20 else None
        if not m:
            return None
        hour, minute = int(m[1]), int(m[2] or 0)
        suffix = (m[3] or "").replace(".", "")
        if suffix in ("am", "pm"):
            if not 1 <= hour <= 12:
                return None
            hour = hour % 12 + (12 if suffix == "pm" else 0)
        if hour > 23 or minute > 59:
            return None
        return dt.time(hour, minute)

    def __call__(self, text: str, ctx: ValidationContext) -> Validation:
        value = self._parse(text)
        if value is None:
            return Validation.failure(_fill(self.messages["invalid"], text))
        if (self.start and value < self.start) or (self.end and value > self.end):
            return Validation.failure(_fill(
                self.messages["range"], text,
                start=(self.start or dt.time(0, 0)).strftime("%H:%M"),
                end=(self.end or dt.time(23, 59)).strftime("%H:%M"),
            ))
        return Validation.success(value.strftime("%H:%M"))


class AllOf(_Base):
    """Runs validators in order, feeding each the text; the first error wins, the last value is
    kept."""

    def __init__(self, *validators: UserValidator) -> None:
        super().__init__(None)
        self.validators = [as_validator(v) for v in validators]

    async def run(self, text: str, ctx: ValidationContext) -> Validation:
        result = Validation.success(text)
        for validator in self.validators:
            result = await run_validator(validator, text, ctx)
            if not result.ok:
                return result
        return result

    def __call__(self, text: str, ctx: ValidationContext) -> Any:
        return self.run(text, ctx)


# Short factory names, as a bot author writes them: validators.email(), validators.integer(1, 100)
email = Email
phone = Phone
number = Number
integer = Integer
choice = Choice
date = Date
time = Time
length = Length
regex = Regex
all_of = AllOf


def describe(validator: Any) -> str:
    if isinstance(validator, _Base):
        return validator.describe()
    return str(getattr(validator, "__name__", "custom"))
