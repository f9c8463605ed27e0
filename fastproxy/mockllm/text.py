"""Deterministic content for the mock: completion words, prompt counts, embeddings, tool arguments.

Everything here is a pure function of its inputs, so two identical requests produce identical
bytes (apart from ids and timestamps) and a test can predict what a client should receive.
Nothing here touches I/O or the event loop.
"""

from __future__ import annotations

import array
import base64
import math
import zlib
from collections.abc import Iterator
from functools import lru_cache
from typing import Any

# A fixed English vocabulary. 128 entries so a word is picked with a 7-bit mask, and plain ASCII
# so that one word is one token for every tokenizer a gateway might use to count.
VOCABULARY: tuple[str, ...] = (
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "lazy",
    "dog",
    "a",
    "small",
    "river",
    "runs",
    "through",
    "green",
    "valley",
    "under",
    "bright",
    "morning",
    "sky",
    "while",
    "birds",
    "sing",
    "softly",
    "in",
    "tall",
    "trees",
    "near",
    "old",
    "stone",
    "bridge",
    "people",
    "walk",
    "slowly",
    "along",
    "narrow",
    "path",
    "towards",
    "quiet",
    "village",
    "where",
    "bakers",
    "prepare",
    "fresh",
    "bread",
    "and",
    "warm",
    "coffee",
    "for",
    "every",
    "visitor",
    "who",
    "arrives",
    "early",
    "with",
    "stories",
    "from",
    "distant",
    "cities",
    "children",
    "play",
    "games",
    "on",
    "wide",
    "meadow",
    "beside",
    "calm",
    "lake",
    "as",
    "clouds",
    "drift",
    "gently",
    "across",
    "blue",
    "horizon",
    "light",
    "wind",
    "carries",
    "scent",
    "of",
    "flowers",
    "summer",
    "rain",
    "falls",
    "evening",
    "lamps",
    "glow",
    "windows",
    "friends",
    "share",
    "simple",
    "meal",
    "talk",
    "about",
    "plans",
    "journeys",
    "books",
    "music",
    "memories",
    "time",
    "passes",
    "stars",
    "appear",
    "above",
    "hills",
    "night",
    "brings",
    "rest",
    "dreams",
    "new",
    "day",
    "begins",
    "again",
    "same",
    "road",
    "leads",
    "home",
    "after",
    "long",
    "work",
    "is",
    "done",
    "everyone",
    "sleeps",
    "well",
    "until",
    "sunrise",
    "returns",
    "once",
)
_MASK = len(VOCABULARY) - 1
assert len(VOCABULARY) & _MASK == 0, "vocabulary size must be a power of two"

# Byte counts a request's text is divided by, and the per-message overhead, to make a prompt
# token count that is realistic (about 4 bytes per token, as OpenAI documents) and exact to test.
BYTES_PER_TOKEN = 4
TOKENS_PER_MESSAGE = 4


def _seed(model: str, count: int) -> int:
    return (zlib.crc32(model.encode()) ^ (count * 2654435761)) & 0xFFFFFFFF or 1


def content_tokens(model: str, count: int, event_bytes: int = 0) -> Iterator[str]:
    """Yield ``count`` tokens (one per stream content event), seeded by model and count.

    A lazy generator, so a million-token stream never exists in memory as a whole. With
    ``event_bytes`` each token is padded with letters of its own word to about that many bytes,
    which gives large streams without changing the event count.
    """
    state = _seed(model, count)
    last = count - 1
    for i in range(count):
        # xorshift32: fast, stateless across calls, identical on every platform.
        state ^= (state << 13) & 0xFFFFFFFF
        state ^= state >> 17
        state ^= (state << 5) & 0xFFFFFFFF
        word = VOCABULARY[state & _MASK]
        if i == 0:
            tok = word.capitalize()
        elif i == last:
            tok = " " + word + "."
        else:
            tok = " " + word
        if event_bytes > len(tok):
            reps = event_bytes // len(word) + 1
            tok = tok + (word * reps)[: event_bytes - len(tok)]
        yield tok


@lru_cache(maxsize=512)
def content_text(model: str, count: int, event_bytes: int = 0) -> str:
    """The whole completion as one string (cached: benchmarks repeat the same request)."""
    return "".join(content_tokens(model, count, event_bytes))


def _text_bytes(value: Any) -> int:
    """UTF-8 bytes of the human text inside a message content value (str or block list)."""
    if isinstance(value, str):
        return len(value.encode())
    total = 0
    if isinstance(value, list):
        for part in value:
            if isinstance(part, str):
                total += len(part.encode())
            elif isinstance(part, dict):
                for key in ("text", "content", "output", "arguments"):
                    if key in part:
                        total += _text_bytes(part[key])
    return total


def prompt_tokens(messages: Any, *extra_text: Any) -> int:
    """(UTF-8 bytes of all message/system/input text // 4) + 4 per message, at least 1.

    ``messages`` is a list of message dicts (any dialect) or a plain string (one message);
    ``extra_text`` are system prompts or instructions, counted as text without the overhead.
    """
    nbytes = sum(_text_bytes(x) for x in extra_text if x)
    count = 0
    if isinstance(messages, str):
        nbytes += len(messages.encode())
        count = 1
    elif isinstance(messages, list):
        for msg in messages:
            if isinstance(msg, dict):
                count += 1
                nbytes += _text_bytes(msg.get("content"))
                nbytes += _text_bytes(msg.get("output"))
                nbytes += _text_bytes(msg.get("arguments"))
                for call in msg.get("tool_calls") or ():
                    if isinstance(call, dict) and isinstance(call.get("function"), dict):
                        nbytes += _text_bytes(call["function"].get("arguments"))
    return max(1, nbytes // BYTES_PER_TOKEN + TOKENS_PER_MESSAGE * count)


def embedding_input_tokens(value: Any) -> int:
    """Embedding usage: bytes // 4 per text input (at least 1 each); token arrays count as is."""
    if isinstance(value, str):
        return max(1, len(value.encode()) // BYTES_PER_TOKEN)
    if isinstance(value, list):
        if value and all(isinstance(v, int) for v in value):
            return len(value)
        return sum(embedding_input_tokens(v) for v in value) or 1
    return 1


def embedding_inputs(value: Any) -> list[str]:
    """Normalise an embeddings ``input`` to one key string per vector."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        if value and all(isinstance(v, int) for v in value):
            return [repr(value)]
        return [v if isinstance(v, str) else repr(v) for v in value]
    return [repr(value)]


@lru_cache(maxsize=1024)
def embedding_vector(text: str, dims: int) -> tuple[float, ...]:
    """A unit-length vector seeded by the text: equal inputs embed equally, as with real APIs."""
    state = zlib.crc32(text.encode()) or 1
    out = []
    for _ in range(dims):
        # 32-bit LCG (Numerical Recipes constants); plenty for a test vector.
        state = (state * 1664525 + 1013904223) & 0xFFFFFFFF
        out.append(state / 2147483648.0 - 1.0)
    norm = math.sqrt(sum(x * x for x in out)) or 1.0
    return tuple(round(x / norm, 6) for x in out)


def embedding_base64(vector: tuple[float, ...]) -> str:
    """The ``encoding_format: base64`` form: little-endian float32, as the OpenAI SDK expects."""
    arr = array.array("f", vector)
    if array.array("H", [1]).tobytes() != b"\x01\x00":
        arr.byteswap()
    return base64.b64encode(arr.tobytes()).decode()


def sample_arguments(schema: Any, depth: int = 0) -> Any:
    """A deterministic value that satisfies a (simple) JSON schema, for mock tool calls."""
    if not isinstance(schema, dict) or depth > 4:
        return "mock"
    if schema.get("enum"):
        return schema["enum"][0]
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "string")
    if kind == "object" or "properties" in schema:
        props = schema.get("properties") or {}
        return {name: sample_arguments(sub, depth + 1) for name, sub in list(props.items())[:20]}
    if kind == "array":
        return [sample_arguments(schema.get("items"), depth + 1)]
    if kind == "integer":
        return 1
    if kind == "number":
        return 1.5
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    return "mock"


def argument_fragments(arguments: str, size: int = 8) -> list[str]:
    """Split a tool call's JSON arguments into the pieces a streamed response carries."""
    if not arguments:
        return [""]
    return [arguments[i : i + size] for i in range(0, len(arguments), size)]
