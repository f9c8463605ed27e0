"""ExchangeRecord → capture (loop) → record dict (writer thread), as pure functions."""

from __future__ import annotations

import orjson
import pytest

from fastproxy._speedups import estimate_tokens
from fastproxy.core.records import ExchangeRecord
from fastproxy.dataplane.dialects.usage import BackendUsage, from_anthropic
from fastproxy.monitor.costs import PriceTable
from fastproxy.monitor.usage_projection import (
    MESSAGE_OVERHEAD,
    REPLY_PRIMING,
    ExactCounter,
    Projector,
    analyse_prompt,
    count_prompt,
    exact_encoding_name,
    session_digest,
)
from fastproxy.monitor.usage_service import UsageCapture

# A usage record's fields, in the order records are stored and served
# (docs/usage-tracking.md, "The record").
RECORD_FIELDS = [
    "id",
    "timestamp",
    "session_id",
    "turn_number",
    "frontend_type",
    "backend",
    "backend_type",
    "model_requested",
    "model_used",
    "streaming",
    "http_status_code",
    "outcome",
    "attempts",
    "tool_call_count",
    "tool_names",
    "ctp_prompt_tokens",
    "ptb_prompt_tokens",
    "btp_completion_tokens",
    "ptc_completion_tokens",
    "backend_reported_usage",
    "usage_source",
    "ttft_ms",
    "backend_ttfb_ms",
    "total_duration_ms",
    "proxy_overhead_ms",
    "stream_tps",
    "cost",
    "cost_source",
    "replacement",
    "proxy_user",
    "user_agent",
    "api",
    "key_name",
    "team",
]
SECRET_PHRASE = "purple-elephant-umbrella"
ESTIMATOR = Projector(PriceTable())  # no exact tokenizer: every count is the estimator's


def est(*texts: str) -> int:
    return sum(estimate_tokens(t) for t in texts)


def make_rec(
    body: dict | None = None,
    *,
    model: str = "claude-haiku-4-5",
    backend_type: str = "anthropic",
    path: str = "/v1/messages",
    streaming: bool = False,
) -> ExchangeRecord:
    rec = ExchangeRecord(7, 1, 100.0)
    rec.wall_started_at = 1_764_590_400.25  # 2025-12-01T12:00:00.250Z
    rec.frontend = "anthropic" if path.endswith("messages") else "openai"
    rec.path = path
    rec.backend, rec.backend_type = f"{backend_type}.1", backend_type
    rec.model_requested = rec.model_used = model
    rec.streaming = streaming
    rec.status, rec.attempts = 200, 1
    rec.upstream_sent_at, rec.backend_ttfb_at = 100.002, 100.052
    rec.first_content_at = 100.1 if streaming else 0.0
    rec.upstream_done_at, rec.ended_at = 101.0, 101.001
    if body is not None:
        rec.request_body = orjson.dumps(body)
    return rec


def project(rec: ExchangeRecord, projector: Projector = ESTIMATOR, keep: bool = True) -> dict:
    capture = UsageCapture.take(rec, keep)
    rec.request_body = None  # what the data plane does right after its exchange sinks
    return projector.record(capture)


# -- prompt formula ------------------------------------------------------------------------
def test_chat_prompt_counts_texts_and_per_message_overhead() -> None:
    body = {
        "model": "gpt-4o",
        "messages": [
            {"role": "system", "content": "You are terse."},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "hello there"},
                    {"type": "image_url", "image_url": {"url": "data:x"}},
                ],
            },
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "c1",
                        "type": "function",
                        "function": {"name": "lookup", "arguments": '{"q":"x"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "42"},
            {"role": "user", "content": "thanks", "name": "bob"},
        ],
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "lookup",
                    "description": "Look it up",
                    "parameters": {"type": "object", "properties": {"q": {"type": "string"}}},
                },
            }
        ],
    }
    facts = analyse_prompt(body)
    schema = orjson.dumps(body["tools"][0]["function"]["parameters"]).decode()
    expected = (
        est(
            "You are terse.",
            "hello there",
            "lookup",
            '{"q":"x"}',
            "42",
            "thanks",
            "bob",
            "lookup",
            "Look it up",
            schema,
        )
        + 5 * MESSAGE_OVERHEAD
        + 1
        + REPLY_PRIMING
    )
    assert count_prompt(facts, estimate_tokens, embeddings=False) == expected
    assert facts.turns == 2
    assert facts.system_text == "You are terse." and facts.user_text == "hello there"


def test_anthropic_system_blocks_tool_results_and_tools() -> None:
    body = {
        "model": "claude-haiku-4-5",
        "max_tokens": 10,
        "system": [{"type": "text", "text": "Be brief."}],
        "messages": [
            {"role": "user", "content": "weather?"},
            {
                "role": "assistant",
                "content": [
                    {"type": "tool_use", "id": "t1", "name": "wx", "input": {"city": "Oslo"}}
                ],
            },
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "rain"}],
            },
        ],
        "tools": [{"name": "wx", "description": "Weather", "input_schema": {"type": "object"}}],
    }
    facts = analyse_prompt(body)
    expected = (
        est(
            "Be brief.",
            "weather?",
            "wx",
            '{"city":"Oslo"}',
            "rain",
            "wx",
            "Weather",
            '{"type":"object"}',
        )
        + 4 * MESSAGE_OVERHEAD
        + REPLY_PRIMING
    )
    assert count_prompt(facts, estimate_tokens, embeddings=False) == expected
    # The tool-result message is the agent loop, not the user: one turn, as in Chat.
    assert facts.turns == 1 and facts.system_text == "Be brief."


def test_responses_instructions_and_items() -> None:
    body = {
        "model": "gpt-4.1",
        "instructions": "Answer in French.",
        "input": [
            {"role": "user", "content": [{"type": "input_text", "text": "Hi"}]},
            {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c", "output": "done"},
            {"type": "reasoning", "summary": []},
        ],
    }
    facts = analyse_prompt(body)
    assert count_prompt(facts, estimate_tokens, embeddings=False) == (
        est("Answer in French.", "Hi", "f", "{}", "done") + 4 * MESSAGE_OVERHEAD + REPLY_PRIMING
    )
    assert facts.turns == 1
    plain = analyse_prompt({"model": "gpt-4.1", "input": "Bonjour"})
    assert plain.turns == 1 and plain.user_text == "Bonjour"


def test_embeddings_count_inputs_and_token_arrays_without_overhead() -> None:
    facts = analyse_prompt(
        {"model": "text-embedding-3-small", "input": ["alpha beta", "gamma", [1, 2, 3]]},
        embeddings=True,
    )
    assert count_prompt(facts, estimate_tokens, embeddings=True) == est("alpha beta", "gamma") + 3
    assert facts.turns == 0


# -- session id and turn number ---------------------------------------------------------------
def test_derived_session_id_is_stable_across_turns_and_keyed_by_client() -> None:
    turn1 = {
        "model": "m",
        "messages": [
            {"role": "system", "content": "S"},
            {"role": "user", "content": "first question"},
        ],
    }
    turn3 = {
        "model": "m",
        "messages": [
            *turn1["messages"],
            {"role": "assistant", "content": "a"},
            {"role": "user", "content": "second"},
            {"role": "assistant", "content": "b"},
            {"role": "user", "content": "third"},
        ],
    }
    r1, r3 = project(make_rec(turn1)), project(make_rec(turn3))
    assert r1["session_id"] == r3["session_id"] and len(r1["session_id"]) == 16
    assert (r1["turn_number"], r3["turn_number"]) == (1, 3)
    other_key = make_rec(turn1)
    other_key.client_key_id = "abc123"
    keyed = project(other_key)["session_id"]
    assert keyed != r1["session_id"]
    assert keyed == session_digest("abc123", "S", "first question")
    explicit = make_rec(turn1)
    explicit.session_id = "my-session"
    assert project(explicit)["session_id"] == "my-session"


# -- the four token points -------------------------------------------------------------------
def test_backend_usage_sets_ptb_btp_ptc_and_source() -> None:
    rec = make_rec(
        {"model": "claude-haiku-4-5", "messages": [{"role": "user", "content": "hi"}]},
        streaming=True,
    )
    rec.usage = from_anthropic(
        {"input_tokens": 20, "cache_read_input_tokens": 100, "output_tokens": 16}
    )
    rec.btp_completion_est = rec.ptc_completion_est = 15
    r = project(rec)
    assert list(r) == RECORD_FIELDS
    assert r["ctp_prompt_tokens"] == est("hi") + MESSAGE_OVERHEAD + REPLY_PRIMING
    assert (r["ptb_prompt_tokens"], r["btp_completion_tokens"], r["ptc_completion_tokens"]) == (
        120,
        16,
        16,
    )
    assert r["usage_source"] == "backend"
    assert r["backend_reported_usage"] == {
        "prompt": 120,
        "completion": 16,
        "total": 136,
        "cached": 100,
        "cache_write": None,
        "reasoning": None,
        "cost": None,
    }
    # claude-haiku-4-5: 20 * 1 + 100 * 0.10 + 16 * 5 = 20 + 10 + 80 = 110 / 1e6
    assert r["cost"] == pytest.approx(0.00011) and r["cost_source"] == "price_table"
    assert r["timestamp"] == "2025-12-01T12:00:00.250Z"
    assert r["http_status_code"] == 200 and r["outcome"] == "ok" and r["attempts"] == 1


def test_without_backend_usage_the_estimates_are_used() -> None:
    body = {"model": "claude-haiku-4-5", "messages": [{"role": "user", "content": "hello"}]}
    rec = make_rec(body, streaming=True)
    rec.btp_completion_est = rec.ptc_completion_est = 40
    r = project(rec)
    ctp = est("hello") + MESSAGE_OVERHEAD + REPLY_PRIMING
    assert (r["ctp_prompt_tokens"], r["ptb_prompt_tokens"]) == (ctp, ctp)
    assert (r["btp_completion_tokens"], r["ptc_completion_tokens"]) == (40, 40)
    assert r["usage_source"] == "estimated" and r["backend_reported_usage"] is None
    assert r["cost"] == pytest.approx((ctp * 1.0 + 40 * 5.0) / 1e6)
    assert r["cost_source"] == "price_table"


def test_client_abort_ptc_below_btp() -> None:
    rec = make_rec(
        {"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}]},
        model="gpt-4o",
        backend_type="openai",
        path="/v1/chat/completions",
        streaming=True,
    )
    rec.outcome = "client_aborted"
    rec.btp_completion_est, rec.ptc_completion_est = 900, 300
    r = project(rec)
    assert (r["btp_completion_tokens"], r["ptc_completion_tokens"]) == (900, 300)
    # Anthropic's opening report (output_tokens: 1) is not the completion of a cut stream;
    # and a backend figure is scaled by the share that reached the client.
    rec2 = make_rec({"model": "m", "messages": []}, streaming=True)
    rec2.outcome = "truncated"
    rec2.usage = from_anthropic({"input_tokens": 10, "output_tokens": 1})
    rec2.btp_completion_est, rec2.ptc_completion_est = 30, 30
    assert project(rec2)["btp_completion_tokens"] == 30
    rec3 = make_rec({"model": "m", "messages": []}, streaming=True)
    rec3.usage = BackendUsage(prompt=10, completion=100)
    rec3.btp_completion_est, rec3.ptc_completion_est = 80, 20
    assert project(rec3)["ptc_completion_tokens"] == 25


def test_timings() -> None:
    rec = make_rec({"model": "m", "messages": []}, streaming=True)
    rec.usage = BackendUsage(prompt=10, completion=90)
    r = project(rec)
    assert r["ttft_ms"] == pytest.approx(100.0)
    assert r["backend_ttfb_ms"] == pytest.approx(50.0)
    assert r["total_duration_ms"] == pytest.approx(1001.0)
    assert r["proxy_overhead_ms"] == pytest.approx(3.0)  # 2 ms before sending + 1 ms after
    assert r["stream_tps"] == pytest.approx(90 / 0.901, rel=1e-3)
    rec = make_rec({"model": "m", "messages": []}, streaming=False)
    r = project(rec)
    assert r["ttft_ms"] is None and r["stream_tps"] is None


def test_rejected_request_has_no_backend_points_and_no_cost() -> None:
    rec = ExchangeRecord(1, 1, 50.0)
    rec.frontend, rec.path, rec.status, rec.outcome = (
        "openai",
        "/v1/chat/completions",
        401,
        "rejected",
    )
    rec.model_requested = "gpt-4o"
    rec.ended_at = 50.001
    r = project(rec)
    assert r["ptb_prompt_tokens"] is None and r["btp_completion_tokens"] is None
    assert r["cost"] is None and r["cost_source"] is None and r["backend_ttfb_ms"] is None
    assert r["attempts"] == 0 and r["http_status_code"] == 401


def test_429_is_not_priced() -> None:
    rec = make_rec(
        {"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}]},
        model="gpt-4o",
        backend_type="openai",
        path="/v1/chat/completions",
    )
    rec.status, rec.outcome = 429, "rejected"  # as the data plane records a relayed 4xx
    r = project(rec)
    assert r["ptb_prompt_tokens"] == r["ctp_prompt_tokens"]
    assert r["btp_completion_tokens"] is None and r["cost"] is None
    assert r["outcome"] == "rejected" and r["http_status_code"] == 429


def test_dropped_body_marks_the_prompt_unavailable() -> None:
    rec = make_rec({"model": "claude-haiku-4-5", "messages": [{"role": "user", "content": "hi"}]})
    rec.btp_completion_est = rec.ptc_completion_est = 5
    r = project(rec, keep=False)
    assert r["ctp_prompt_tokens"] is None and r["ptb_prompt_tokens"] is None
    assert r["turn_number"] is None and r["session_id"] is None
    assert r["usage_source"] == "estimated" and r["btp_completion_tokens"] == 5


def test_record_holds_no_text() -> None:
    body = {
        "model": "gpt-4o",
        "messages": [
            {"role": "system", "content": f"system {SECRET_PHRASE}"},
            {"role": "user", "content": f"user {SECRET_PHRASE}"},
            {
                "role": "assistant",
                "tool_calls": [
                    {
                        "type": "function",
                        "function": {"name": "f", "arguments": f'{{"a": "{SECRET_PHRASE}"}}'},
                    }
                ],
            },
        ],
    }
    rec = make_rec(body, model="gpt-4o", backend_type="openai", path="/v1/chat/completions")
    rec.client_key_id = "k" * 12
    blob = orjson.dumps(project(rec))
    assert SECRET_PHRASE.encode() not in blob and b"k" * 12 not in blob


# -- exact counting ----------------------------------------------------------------------
def test_encoding_choice() -> None:
    assert exact_encoding_name("gpt-4o-2024-08-06") == "o200k_base"
    assert exact_encoding_name("o4-mini") == "o200k_base"
    assert exact_encoding_name("gpt-4.1-nano") == "o200k_base"
    assert exact_encoding_name("chatgpt-4o-latest") == "o200k_base"
    assert exact_encoding_name("gpt-4-turbo") == "cl100k_base"
    assert exact_encoding_name("gpt-3.5-turbo") == "cl100k_base"
    assert exact_encoding_name("text-embedding-3-small") == "cl100k_base"
    assert exact_encoding_name("claude-sonnet-4-5") is None
    assert exact_encoding_name("llama-3") is None
    assert exact_encoding_name("gpt-oss-120b") is None  # estimated: its servers report usage


def test_counted_source_uses_the_exact_tokenizer() -> None:
    quicktok = pytest.importorskip("quicktok", reason="quicktok-v1 not installed")
    exact = ExactCounter.load()
    assert exact is not None
    projector = Projector(PriceTable(), exact)
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "Tokenise me, exactly."}]}
    rec = make_rec(body, model="gpt-4o", backend_type="openai", path="/v1/chat/completions")
    rec.btp_completion_est = rec.ptc_completion_est = 12
    r = project(rec, projector)
    enc = quicktok.get_encoding("o200k_base")
    expected = len(enc.encode("Tokenise me, exactly.")) + MESSAGE_OVERHEAD + REPLY_PRIMING
    assert r["usage_source"] == "counted" and r["ctp_prompt_tokens"] == expected
    # A non-OpenAI model is estimated even when the tokenizer is there.
    rec = make_rec({"model": "claude-haiku-4-5", "messages": [{"role": "user", "content": "x"}]})
    rec.btp_completion_est = 3
    assert project(rec, projector)["usage_source"] == "estimated"


def test_record_ids_are_32_hex_digits_unique_within_and_across_projectors() -> None:
    """Ids come from a generator seeded from the OS per projector (per process): two
    gateways, or one restarted, must not repeat each other's ids."""
    first, second = Projector(PriceTable({})), Projector(PriceTable({}))
    ids = [project(make_rec(), p)["id"] for p in (first, second) for _ in range(500)]
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)
    assert len(set(ids)) == 1000


def test_a_prompt_over_the_raw_count_size_is_estimated_from_its_bytes() -> None:
    """A body over RAW_COUNT_BYTES is never parsed on the writer (its text beside its
    bytes would be a second copy of the body): the prompt is estimated from the raw
    bytes, the source says so, and no turn count or session digest is made up. Just
    under the size the usual analysis runs."""
    from fastproxy.monitor.usage_projection import RAW_COUNT_BYTES

    words = RAW_COUNT_BYTES // 5 + 1000
    big = make_rec(
        {
            "model": "claude-haiku-4-5",
            "max_tokens": 8,
            "messages": [{"role": "user", "content": "word " * words}],
        }
    )
    assert len(big.request_body) > RAW_COUNT_BYTES
    r = project(big)
    assert r["usage_source"] == "estimated"
    assert r["turn_number"] is None and r["session_id"] is None
    assert 0.9 * words < r["ctp_prompt_tokens"] < 1.2 * words
    small = make_rec(
        {
            "model": "claude-haiku-4-5",
            "max_tokens": 8,
            "messages": [{"role": "user", "content": "word " * 1000}],
        }
    )
    r = project(small)
    assert r["turn_number"] == 1 and r["session_id"] is not None
