from __future__ import annotations

import pytest

from chatstate.errors import ConfigurationError
from chatstate.flows import validators as v
from chatstate.flows.suggest import clip, did_you_mean, suggest
from chatstate.flows.validators import Validation, ValidationContext, as_validator, run_validator

WEDNESDAY = 1741773600.0  # 2025-03-12 10:00 UTC
CTX = ValidationContext(now=WEDNESDAY)


def ok(result: Validation) -> object:
    assert result.ok, result.error
    return result.value


def bad(result: Validation) -> str:
    assert not result.ok
    assert result.error
    return result.error


def test_email() -> None:
    check = v.email()
    assert ok(check(" Ana.Lopez+x@Example.COM ", CTX)) == "Ana.Lopez+x@example.com"
    for text in ["", "ana", "ana@", "@x.com", "ana@x", "a b@x.com", "ana..b@x.com", "a" * 300]:
        assert "valid email" in bad(check(text, CTX))
    assert bad(v.email(messages={"invalid": "nope"})("x", CTX)) == "nope"


def test_phone_e164_with_and_without_region() -> None:
    assert ok(v.phone()("+34 612 345 678", CTX)) == "+34612345678"
    assert ok(v.phone(region="ES")("612 34 56 78", CTX)) == "+34612345678"
    assert ok(v.phone()("+1 (650) 253-0000", CTX)) == "+16502530000"
    for text in ["612345678", "+34 12", "call me", "", "+" + "9" * 50]:
        assert "phone number" in bad(v.phone()(text, CTX))


def test_numbers_with_bounds_and_decimal_comma() -> None:
    qty = v.integer(1, 100)
    assert ok(qty("42", CTX)) == 42
    assert ok(qty(" 7 ", CTX)) == 7
    assert bad(qty("0", CTX)) == "The minimum is 1."
    assert bad(qty("101", CTX)) == "The maximum is 100."
    assert bad(qty("2.5", CTX)) == "Please enter a whole number."
    assert bad(qty("abc", CTX)) == "Please enter a whole number."
    assert bad(qty("1e9999", CTX))
    assert ok(v.number(0, 10)("2,5", CTX)) == 2.5
    assert ok(v.number()("-3.25", CTX)) == -3.25
    with pytest.raises(ConfigurationError):
        v.number(10, 1)


def test_choice_case_and_accent_insensitive_with_did_you_mean() -> None:
    pick = v.choice(["Apple", "Banana", "Café"])
    assert ok(pick("banana", CTX)) == "Banana"
    assert ok(pick("CAFE", CTX)) == "Café"
    result = pick("banan", CTX)
    error = bad(result)
    assert error.startswith("Did you mean Banana?")
    assert "Apple, Banana, Café" in error
    assert result.suggestions == ("Banana",)
    assert bad(pick("zzz", CTX)) == "Please choose one of: Apple, Banana, Café."
    assert ok(v.choice({"Small": "S", "Large": "L"})("large", CTX)) == "L"


def test_date_formats_relative_and_weekday_names_in_three_languages() -> None:
    day = v.date("UTC")
    assert ok(day("2025-03-20", CTX)) == "2025-03-20"
    assert ok(day("20/03/2025", CTX)) == "2025-03-20"
    assert ok(day("20-03-2025", CTX)) == "2025-03-20"
    assert ok(day("20.03.25", CTX)) == "2025-03-20"
    assert ok(day("20/03", CTX)) == "2025-03-20"
    assert ok(day("today", CTX)) == "2025-03-12"
    for word in ["tomorrow", "mañana", "manana", "amanhã", "Tomorrow!"]:
        assert ok(day(word, CTX)) == "2025-03-13", word
    for word in ["friday", "Viernes", "sexta", "sexta-feira", "fri"]:
        assert ok(day(word, CTX)) == "2025-03-14", word
    assert ok(day("miércoles", CTX)) == "2025-03-12"  # today's weekday means today
    assert ok(day("segunda", CTX)) == "2025-03-17"
    for text in ["31/02/2025", "someday", "2025-13-01", "", "x" * 10_000]:
        assert "could not read that date" in bad(day(text, CTX))


def test_date_is_timezone_aware() -> None:
    late = ValidationContext(now=1741820400.0)  # 2025-03-12 23:00 UTC = 03-13 in Tokyo
    assert ok(v.date("UTC")("today", late)) == "2025-03-12"
    assert ok(v.date("Asia/Tokyo")("today", late)) == "2025-03-13"
    with pytest.raises(ConfigurationError, match="IANA"):
        v.date("Mars/Olympus")


def test_date_limits() -> None:
    future = v.date("UTC", allow_past=False, max_days_ahead=30, weekdays=range(6))
    assert "in the past" in bad(future("01/03/2025", CTX))
    assert "within 30 days" in bad(future("2025-06-01", CTX))
    assert "closed on Sundays" in bad(future("sunday", CTX))
    assert ok(future("saturday", CTX)) == "2025-03-15"


def test_time() -> None:
    at = v.time()
    for text, want in [("14:30", "14:30"), ("9", "09:00"), ("9am", "09:00"), ("2:30 pm", "14:30"),
                       ("12am", "00:00"), ("14h30", "14:30"), ("14.30", "14:30"), ("14h", "14:00")]:
        assert ok(at(text, CTX)) == want, text
    for text in ["25:00", "13pm", "noonish", "12:60"]:
        assert "could not read that time" in bad(at(text, CTX))
    assert "between 09:00 and 17:00" in bad(v.time("09:00", "17:00")("8pm", CTX))


def test_length_and_regex() -> None:
    assert ok(v.length(3, 10)("  a   b  ", CTX)) == "a b"
    assert "at least 10" in bad(v.length(10)("short", CTX))
    assert "at most 3" in bad(v.length(1, 3)("long text", CTX))
    code = v.regex(r"[A-Z]\d{4}", error="Codes look like A1234.")
    assert ok(code(" A1234 ", CTX)) == "A1234"
    assert bad(code("1234", CTX)) == "Codes look like A1234."
    with pytest.raises(ConfigurationError, match="overridable"):
        v.length(messages={"unknown": "x"})


async def test_plain_functions_are_validators() -> None:
    seed_style = as_validator(lambda text: len(text) > 3 or "Too short")
    assert (await run_validator(seed_style, "abcd", CTX)).value == "abcd"
    assert (await run_validator(seed_style, "ab", CTX)).error == "Too short"

    async def with_ctx(text: str, ctx: ValidationContext) -> Validation:
        return Validation.success(ctx.data.get("prefix", "") + text)

    wrapped = as_validator(with_ctx)
    result = await run_validator(wrapped, "x", ValidationContext(data={"prefix": "p-"}))
    assert result.value == "p-x"
    both = v.all_of(v.length(3), lambda text: text.isalpha() or "Letters only")
    assert (await run_validator(both, "ab1d", CTX)).error == "Letters only"
    assert (await run_validator(both, "ab", CTX)).error is not None


def test_suggest_and_clip() -> None:
    assert suggest("ban", ["Apple", "Banana", "Bandana"]) == ["Banana", "Bandana"]
    assert did_you_mean("orang", ["Apple", "Orange"]) == "Did you mean Orange?"
    assert did_you_mean("zzzz", ["Apple"]) is None
    assert suggest("x" * 100_000, ["Apple"]) == []
    assert len(clip("y" * 100_000)) == 60
