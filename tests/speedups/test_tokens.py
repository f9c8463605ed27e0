"""estimate_tokens and TokenEstimator, on both implementations."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import pytest
from hypothesis import given
from hypothesis import strategies as st

from .helpers import FUZZ, other_impl, split_at

CORPUS = Path(__file__).parent / "corpus"

# Text that exercises every class: scripts, emoji sequences, digits, punctuation runs.
_alphabet = st.sampled_from(
    list("abcXYZ 019\n\t\r.,:;{}\"'(/-_")
    + list("éüßñÀ")
    + list("привет")
    + list("中文字")
    + list("かなカナ")
    + list("한국어")
    + list(
        "\u201c\u201d\u2014\u2026\uff0c\u3002"
    )  # curly quotes, dash, ellipsis, CJK comma and stop
    + ["🎉", "👍🏽", "🇧🇷", "❤️", "🕵️\u200d♂️", "\U00020001", "\U0001d400"]
)
texts = st.one_of(st.lists(_alphabet, max_size=60).map("".join), st.text(max_size=40))
raw_bytes = st.one_of(
    st.binary(max_size=60),
    texts.map(lambda t: t.encode("utf-8")).map(lambda b: b[: max(0, len(b) - 1)]),
)
cuts = st.lists(st.integers(0, 400), max_size=10)


def test_small_examples(speedups_impl: ModuleType) -> None:
    est = speedups_impl.estimate_tokens
    assert est(b"") == 0
    assert est("") == 0
    assert est("hello") == 1
    assert est("hello world") == 2
    assert est(" 123") == 2  # a space before digits is a token of its own
    assert est("1234567") == 3  # digits go in groups of up to three
    assert est("\n\n") == 1
    assert est("internationalization") > est("information") >= 1
    assert est("中文") == 1
    assert est("🎉🎉🎉🎉") >= 6


def test_str_and_bytes_agree(speedups_impl: ModuleType) -> None:
    est = speedups_impl.estimate_tokens
    text = "Grüße aus München — 東京 🎉 and 42 apples."
    data = text.encode()
    assert est(text) == est(data) == est(bytearray(data)) == est(memoryview(data))
    with pytest.raises(TypeError):
        est(42)
    with pytest.raises(UnicodeEncodeError):
        est("lone \udc80 surrogate")


def test_estimator_properties_and_reset(speedups_impl: ModuleType) -> None:
    e = speedups_impl.TokenEstimator()
    assert (e.tokens, e.bytes_fed) == (0, 0)
    e.feed(b"Hello, ")
    e.feed(bytearray(b"wor"))
    # The pending partial word counts.
    assert e.tokens == speedups_impl.estimate_tokens(b"Hello, wor")
    e.feed(memoryview(b"ld!"))
    assert e.bytes_fed == 13
    assert e.tokens == speedups_impl.estimate_tokens(b"Hello, world!")
    e.feed(b"")
    assert e.bytes_fed == 13
    e.reset()
    assert (e.tokens, e.bytes_fed) == (0, 0)
    e.feed(b"again")
    assert e.tokens == 1
    with pytest.raises(TypeError):
        e.feed("text")


def test_split_inside_a_multibyte_character(speedups_impl: ModuleType) -> None:
    data = "ab中🎉é".encode()
    whole = speedups_impl.estimate_tokens(data)
    for i in range(len(data) + 1):
        for j in range(i, len(data) + 1):
            e = speedups_impl.TokenEstimator()
            for piece in (data[:i], data[i:j], data[j:]):
                e.feed(piece)
            assert e.tokens == whole, (i, j)


def test_invalid_utf8_is_counted_not_fatal(speedups_impl: ModuleType) -> None:
    est = speedups_impl.estimate_tokens
    assert est(b"\xff\xfe") >= 2  # BPE spends at least a token per stray byte
    # A sequence cut short, by the end or by another byte, counts as stray bytes.
    assert est(b"\xe4\xb8") == est(b"\xff\xfe")
    assert est(b"\xe4\xb8a") == est(b"\xff\xfea")
    assert est(b"\xe4\xb8\xe4\xb8\xad") == est(b"\xff\xfe\xe4\xb8\xad")


@FUZZ
@given(text=texts, cut=cuts)
def test_split_invariance(speedups_impl: ModuleType, text: str, cut: list[int]) -> None:
    data = text.encode("utf-8")
    e = speedups_impl.TokenEstimator()
    for piece in split_at(data, cut):
        e.feed(piece)
    assert e.tokens == speedups_impl.estimate_tokens(text)
    assert e.bytes_fed == len(data)


@FUZZ
@given(data=raw_bytes, cut=cuts)
def test_split_invariance_on_any_bytes(
    speedups_impl: ModuleType, data: bytes, cut: list[int]
) -> None:
    e = speedups_impl.TokenEstimator()
    for piece in split_at(data, cut):
        e.feed(piece)
    assert e.tokens == speedups_impl.estimate_tokens(data)


@FUZZ
@given(data=st.one_of(raw_bytes, texts.map(lambda t: t.encode("utf-8"))), cut=cuts)
def test_parity_with_other_implementation(
    speedups_impl: ModuleType, data: bytes, cut: list[int]
) -> None:
    other = other_impl(speedups_impl)
    assert speedups_impl.estimate_tokens(data) == other.estimate_tokens(data)
    a = speedups_impl.TokenEstimator()
    b = other.TokenEstimator()
    for piece in split_at(data, cut):
        a.feed(piece)
        b.feed(piece)
        assert a.tokens == b.tokens


def test_corpus_parity(speedups_impl: ModuleType) -> None:
    other = other_impl(speedups_impl)
    for path in sorted(CORPUS.iterdir()):
        data = path.read_bytes()
        assert speedups_impl.estimate_tokens(data) == other.estimate_tokens(data), path.name


# ------------------------------------------------------------------ accuracy

AGGREGATE_BOUND = 0.05  # |sum(estimate) / sum(exact) - 1| over the corpus
SAMPLE_BOUND = 0.20  # |estimate / exact - 1| for every sample


def test_accuracy_against_o200k(speedups_impl: ModuleType) -> None:
    quicktok = pytest.importorskip("quicktok", reason="quicktok-v1 (exact tokenizer) not installed")
    enc = quicktok.get_encoding("o200k_base")
    total_est = total_exact = 0
    worst = []
    paths = sorted(CORPUS.iterdir())
    assert len(paths) >= 30
    for path in paths:
        text = path.read_text(encoding="utf-8")
        exact = len(enc.encode_ordinary(text))
        est = speedups_impl.estimate_tokens(text)
        total_est += est
        total_exact += exact
        worst.append((abs(est / exact - 1), path.name, est, exact))
    worst.sort(reverse=True)
    assert abs(total_est / total_exact - 1) <= AGGREGATE_BOUND, (total_est, total_exact)
    assert worst[0][0] <= SAMPLE_BOUND, worst[:5]
