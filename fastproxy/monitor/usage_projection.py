"""The writer-thread half of usage tracking: a capture becomes the record dict.

On the event loop, ``UsageCapture.take(rec)`` (usage_service.py) copies the numbers and
names the record needs, plus a reference to the raw request body. Everything else runs
here, on the storage writer thread, in ``Projector.values(capture)``: parsing the body
again with orjson, counting the prompt, deriving the session id and turn number, the
four token points, timings and cost. The loop pays for a copy; the writer for the rest.

Never kept: message text, tool arguments, keys, client IPs. The body is read only to
count and hash; the record holds counts, names and a one-way session digest.

Token points (docs/usage-tracking.md has the rules): ctp is counted
here; ptb is the backend's prompt, else ctp (the gateway only mutates ``model``,
``session_id`` and ``stream_options``, none of them prompt text); btp is the backend's
completion, else the data plane's estimate; ptc is btp unless the client missed some.

Prompt formula: every text the model reads (message contents as strings or text parts,
system, instructions, Responses and legacy-completion input, tool results, earlier tool
calls' names and arguments, tool definitions as name + description + JSON schema) is
counted piece by piece, plus ``MESSAGE_OVERHEAD`` per message and ``REPLY_PRIMING`` once
for conversational APIs (OpenAI's published accounting: 3 per message, 1 per name, 3 to
prime the reply). Images and audio are not counted. Embeddings count each input, with
token arrays counting their length, and no overhead.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgspec
import orjson

from .._speedups import TokenEstimator, estimate_tokens, usage_row
from ..storage.usage_kinds import API_BY_PATH
from ..storage.usage_schema import RECORD_FORMAT, Prepared, record_from_values
from .costs import MEMO_MODELS, PriceTable

if TYPE_CHECKING:
    from .usage_capture import UsageCapture

log = logging.getLogger("fastproxy.usage")

MESSAGE_OVERHEAD = 3
NAME_OVERHEAD = 1
REPLY_PRIMING = 3
SESSION_HASH_CHARS = 16
_SYSTEM_ROLES = ("system", "developer")
# Content parts that carry prompt text under "text" (Chat, Anthropic, Responses).
_TEXT_KEYS = ("text", "input_text", "output_text")


COUNT_WINDOW = 1 << 20  # characters of one text counted at a time
# Texts at least this long are looked up in the projector's memo of counts before they
# are counted (hashing a shorter one saves too little), and the memo keeps this many.
SEEN_MIN_CHARS = 64
SEEN_ENTRIES = 1 << 16
RAW_COUNT_BYTES = 16 << 20  # a body larger than this is estimated from its bytes
_decode = msgspec.json.Decoder().decode


# -- prompt analysis (writer thread) ------------------------------------------------------
class PromptFacts:
    """What one request body says, for the record: counts and digests, no text kept."""

    __slots__ = ("messages", "names", "pieces", "system_text", "token_ids", "turns", "user_text")

    def __init__(self) -> None:
        self.pieces: list[str] = []  # texts to count; dropped with this object
        self.messages = 0
        self.names = 0
        self.token_ids = 0  # pre-tokenised input (embeddings, legacy completions)
        self.turns = 0
        self.system_text: str | None = None
        self.user_text: str | None = None


def analyse_prompt(body: Any, embeddings: bool = False) -> PromptFacts:
    facts = PromptFacts()
    if not isinstance(body, dict):
        return facts
    system = body.get("system")  # Anthropic: a string or text blocks
    if system is not None:
        start = len(facts.pieces)
        _content(system, facts.pieces)
        facts.messages += 1
        facts.system_text = "\n".join(facts.pieces[start:])
    instructions = body.get("instructions")  # Responses API
    if isinstance(instructions, str):
        facts.pieces.append(instructions)
        facts.messages += 1
        if facts.system_text is None:
            facts.system_text = instructions
    for msg in _list(body.get("messages")):
        _message(msg, facts)
    inp = body.get("input")
    if embeddings:
        _raw_inputs(inp, facts)
    elif isinstance(inp, str):
        _user(facts, inp)
        facts.pieces.append(inp)
        facts.messages += 1
    else:
        for item in _list(inp):
            _item(item, facts)
    prompt = body.get("prompt")  # legacy completions
    if prompt is not None:
        start = len(facts.pieces)
        _raw_inputs(prompt, facts)
        facts.messages += 1
        _user(facts, "\n".join(facts.pieces[start:]))
    for tool in _list(body.get("tools")):
        _tool(tool, facts.pieces)
    return facts


def _list(v: Any) -> list[Any]:
    return v if isinstance(v, list) else []


def _user(facts: PromptFacts, text: str) -> None:
    facts.turns += 1
    if facts.user_text is None:
        facts.user_text = text


def _content(content: Any, out: list[str]) -> None:
    """Text of a content value: a string or a list of parts/blocks, recursively."""
    if isinstance(content, str):
        out.append(content)
        return
    for part in _list(content):
        if isinstance(part, str):
            out.append(part)
        elif isinstance(part, dict):
            for key in _TEXT_KEYS:
                text = part.get(key)
                if isinstance(text, str):
                    out.append(text)
                    break
            kind = part.get("type")
            if kind == "tool_result":
                _content(part.get("content"), out)
            elif kind == "tool_use":
                _name(part.get("name"), out)
                out.append(orjson.dumps(part.get("input")).decode())


def _name(v: Any, out: list[str]) -> None:
    if isinstance(v, str):
        out.append(v)


def _message(msg: Any, facts: PromptFacts) -> None:
    if not isinstance(msg, dict):
        return
    pieces = facts.pieces
    facts.messages += 1
    role = msg.get("role")
    content = msg.get("content")
    start = len(pieces)
    _content(content, pieces)
    text = "\n".join(pieces[start:])
    if role in _SYSTEM_ROLES:
        if facts.system_text is None:
            facts.system_text = text
    elif role == "user" and not _only_tool_results(content):
        _user(facts, text)
    if isinstance(msg.get("name"), str):
        facts.names += 1
        pieces.append(msg["name"])
    for call in _list(msg.get("tool_calls")):
        fn = call.get("function") if isinstance(call, dict) else None
        if isinstance(fn, dict):
            _name(fn.get("name"), pieces)
            _name(fn.get("arguments"), pieces)
    fc = msg.get("function_call")
    if isinstance(fc, dict):
        _name(fc.get("name"), pieces)
        _name(fc.get("arguments"), pieces)


def _only_tool_results(content: Any) -> bool:
    """An Anthropic user message made only of tool results is the agent loop talking, not
    a new user turn (Chat sends those as role "tool"): turns stay comparable across APIs."""
    return (
        isinstance(content, list)
        and bool(content)
        and all(isinstance(p, dict) and p.get("type") == "tool_result" for p in content)
    )


def _item(item: Any, facts: PromptFacts) -> None:
    """One Responses API input item."""
    if not isinstance(item, dict):
        return
    kind = item.get("type")
    if kind in (None, "message"):
        _message(item, facts)
    elif kind == "function_call":
        facts.messages += 1
        _name(item.get("name"), facts.pieces)
        _name(item.get("arguments"), facts.pieces)
    elif kind == "function_call_output":
        facts.messages += 1
        _content(item.get("output"), facts.pieces)


def _raw_inputs(inp: Any, facts: PromptFacts) -> None:
    """Embeddings / legacy prompts: a string, strings, a token array or token arrays."""
    if isinstance(inp, str):
        facts.pieces.append(inp)
        return
    for x in _list(inp):
        if isinstance(x, str):
            facts.pieces.append(x)
        elif isinstance(x, int):
            facts.token_ids += 1
        elif isinstance(x, list):
            facts.token_ids += len(x)


def _tool(tool: Any, out: list[str]) -> None:
    if not isinstance(tool, dict):
        return
    fn = tool.get("function")
    spec = fn if isinstance(fn, dict) else tool  # Chat nests; Anthropic/Responses are flat
    _name(spec.get("name"), out)
    _name(spec.get("description"), out)
    schema = spec.get("parameters", spec.get("input_schema"))
    if schema is not None:
        out.append(orjson.dumps(schema).decode())


def session_digest(client_key_id: str | None, system: str | None, user: str | None) -> str | None:
    """The derived session id: stable across the turns of one conversation, because the
    first system and first user message do not change as it grows."""
    if system is None and user is None:
        return None
    parts = [client_key_id or "", system or "", user or ""]
    if len(parts[1]) + len(parts[2]) <= COUNT_WINDOW:
        return hashlib.sha256(orjson.dumps(parts)).hexdigest()[:SESSION_HASH_CHARS]
    # The same bytes as above, hashed a window at a time: a huge message is not copied
    # into one JSON text (JSON escapes each character alone, so windows join exactly).
    h = hashlib.sha256(b"[")
    for n, text in enumerate(parts):
        h.update(b',"' if n else b'"')
        for i in range(0, len(text), COUNT_WINDOW):
            h.update(orjson.dumps(text[i : i + COUNT_WINDOW])[1:-1])
        h.update(b'"')
    h.update(b"]")
    return h.hexdigest()[:SESSION_HASH_CHARS]


# -- exact counting (optional quicktok-v1) -----------------------------------------------
def exact_encoding_name(model: str | None) -> str | None:
    """The tiktoken-family encoding of an OpenAI model, or None (not OpenAI's). gpt-oss
    (o200k_harmony) is left to the estimator: its servers report usage, and loading one
    more encoding costs another second of start-up."""
    if not model:
        return None
    m = model.rsplit("/", 1)[-1].lower()
    if m.startswith(("gpt-4o", "gpt-4.1", "gpt-4.5", "gpt-5", "chatgpt-", "o1", "o3", "o4")):
        return "o200k_base"
    if m.startswith(("gpt-3", "gpt-4", "text-embedding-")):
        return "cl100k_base"
    return None


class ExactCounter:
    """quicktok encodings, all loaded up front: loading o200k holds the GIL for about a
    second, which must happen before the listeners open, never in the middle of traffic."""

    __slots__ = ("_counters", "_memo")

    ENCODINGS = ("o200k_base", "cl100k_base")

    def __init__(self, counters: dict[str, Callable[[str], int]]) -> None:
        self._counters = counters
        # Model name -> its counter (or None): the prefix tests cost 0.25-0.5 µs a
        # record, and a deployment sees a handful of names (bounded like the prices' memo).
        self._memo: dict[str | None, Callable[[str], int] | None] = {}

    @classmethod
    def load(cls) -> ExactCounter | None:
        try:
            import quicktok
        except ImportError:
            return None
        return cls({name: quicktok.get_encoding(name).count for name in cls.ENCODINGS})

    def counter_for(self, model: str | None) -> Callable[[str], int] | None:
        memo = self._memo
        try:
            return memo[model]
        except KeyError:
            pass
        name = exact_encoding_name(model)
        counter = self._counters.get(name) if name is not None else None
        if len(memo) < MEMO_MODELS:
            memo[model] = counter
        return counter


def _estimate_raw(body: bytes | bytearray) -> int:
    """Tokens of a whole body's bytes, a window at a time (no copy of the body)."""
    est = TokenEstimator()
    view = memoryview(body)
    for i in range(0, len(view), COUNT_WINDOW):
        est.feed(view[i : i + COUNT_WINDOW])
    view.release()
    return int(est.tokens)


def count_prompt(
    facts: PromptFacts,
    count: Callable[[str], int],
    embeddings: bool,
    seen: dict[tuple[Any, int, int], int] | None = None,
) -> int:
    """The prompt's tokens. With ``seen`` (`Projector`'s memo), a text of at least
    ``SEEN_MIN_CHARS`` counted before is not counted again (see `Projector`)."""
    total = facts.token_ids
    for piece in facts.pieces:
        n = len(piece)
        if n > COUNT_WINDOW:
            # A tokenizer's working memory grows with its input (encoded text, token
            # lists): a huge text is counted a window at a time, which costs at most one
            # token of error per window boundary.
            for i in range(0, n, COUNT_WINDOW):
                total += count(piece[i : i + COUNT_WINDOW])
        elif n >= SEEN_MIN_CHARS and seen is not None:
            key = (count, hash(piece), n)
            got = seen.get(key)
            if got is None:
                got = count(piece)
                if len(seen) >= SEEN_ENTRIES:
                    seen.clear()  # a new generation: cheaper than tracking use
                seen[key] = got
            total += got
        elif piece:
            total += count(piece)
    if not embeddings and facts.messages:
        total += facts.messages * MESSAGE_OVERHEAD + facts.names * NAME_OVERHEAD + REPLY_PRIMING
    return total


# -- the record (writer thread) ----------------------------------------------------------
class Projector:
    """Builds record dicts on the writer thread. Holds read-only things (prices, the
    exact tokenizer) and memos whose every entry is final, so it needs no lock.

    Counting is most of a record's cost (an exact count runs at ~180 MB/s), and most of
    what a gateway counts it has counted before: a conversation sends its system prompt
    and every earlier message again each turn, and an application sends the same system
    prompt and tool definitions with every request. So the count of each text of at
    least ``SEEN_MIN_CHARS`` is kept in ``_seen`` under (counter, ``hash(text)``,
    length): no text is kept, only the process's salted 64-bit hash of it (two different
    texts of one length share a hash with a probability of 2**-64). A text seen once
    costs its hash on top of its count (~1 µs for 2 KB, where o200k takes ~11 µs)."""

    __slots__ = ("_ids", "_seen", "exact", "prices")

    def __init__(self, prices: PriceTable, exact: ExactCounter | None = None) -> None:
        self.prices = prices
        self.exact = exact
        self._seen: dict[tuple[Any, int, int], int] = {}
        # Record ids: 128 bits from a generator seeded once from the OS, not a getrandom
        # syscall per record (os.urandom). An id must be unique, not unpredictable.
        self._ids = random.Random(os.urandom(32))

    def prepared(self, c: UsageCapture) -> Prepared:
        """The record, already as the store's row (what the writer thread submits)."""
        ms = int(c.wall_started_at * 1000)
        return self._prepared(self._project(_frame_of(c), self._take_body(c), ms))

    def prepared_frame(self, frame: tuple[Any, ...], read_body: bool = True) -> Prepared:
        """`prepared` straight from an unpacked exchange frame (the recorder's path: no
        capture object). ``read_body=False`` makes the record without prompt facts."""
        ms = int(frame[0] * 1000)
        return self._prepared(self._project(frame, frame[27] if read_body else None, ms))

    def record(self, c: UsageCapture, ms: int | None = None) -> dict[str, Any]:
        """The record dict (docs/usage-tracking.md), as /recent returns it once stored."""
        return record_from_values(
            self.values(c, int(c.wall_started_at * 1000) if ms is None else ms)
        )

    def values(self, c: UsageCapture, ms: int) -> tuple[Any, ...]:
        """The record's values in ``usage_schema.RECORD_KEYS`` order, time as epoch ms and
        backend usage as a row: the stored form, with no dict and no time text built."""
        return self._project(_frame_of(c), self._take_body(c), ms)[0]

    @staticmethod
    def _take_body(c: UsageCapture) -> bytes | bytearray | None:
        # The capture may hold the last reference to the body: handing it over lets the
        # bytes go before the texts are counted (a large body is never held as bytes,
        # text and counts at once).
        body, c.body = c.body, None
        return body

    @staticmethod
    def _prepared(
        projected: tuple[tuple[Any, ...], tuple[Any, ...], int, tuple[Any, ...]],
    ) -> Prepared:
        values, key, hour, row = projected
        return key, hour, row, orjson.dumps((RECORD_FORMAT, *values)).decode()

    def _project(
        self, frame: tuple[Any, ...], body: bytes | bytearray | None, ms: int
    ) -> tuple[tuple[Any, ...], tuple[Any, ...], int, tuple[Any, ...]]:
        """(values, dims key, hour, row) of an exchange (``EXCHANGE_FIELDS`` order) and its
        request body: the body is read here, the rest is ``_speedups.usage_row``."""
        # The endpoint's kind, from the path the data plane recorded ("" when a request
        # was refused before its path was known to be an API): one dict lookup.
        api = API_BY_PATH.get(frame[10])
        model = frame[14]
        embeddings = api == "embeddings"
        facts: PromptFacts | None = None
        ctp: int | None = None
        if body is not None and len(body) > RAW_COUNT_BYTES:
            # A huge prompt is estimated from its bytes, never parsed: parsing would hold
            # its text beside the bytes, a second copy of the body at once. The estimate
            # counts the JSON around the text too (a little high), and there is no turn
            # count or session digest for it (a session id the client sent still holds).
            ctp = _estimate_raw(body)
        elif body is not None:
            try:
                # orjson builds a long string in a scratch buffer first (twice its size
                # for a moment); msgspec does not, and is as quick for a large body.
                parsed = orjson.loads(body) if len(body) < COUNT_WINDOW else _decode(body)
            except (orjson.JSONDecodeError, msgspec.DecodeError):  # checked by the data plane
                parsed = None
            del body
            facts = analyse_prompt(parsed, embeddings)
            del parsed
        exact = self.exact.counter_for(model) if self.exact is not None else None
        if facts is not None:
            ctp = count_prompt(facts, exact or estimate_tokens, embeddings, self._seen)
        session_id = frame[7]
        turn: int | None = None
        if facts is not None:
            turn = facts.turns
            if session_id is None:
                session_id = session_digest(frame[8], facts.system_text, facts.user_text)
        return usage_row(
            frame,
            ms,
            # 128 random bits as 32 hex digits, like uuid4().hex at a fraction of its cost.
            f"{self._ids.getrandbits(128):032x}",
            api,
            ctp,
            turn,
            session_id,
            exact is not None and facts is not None and ctp is not None,
            self.prices.lookup(model),
        )


def _frame_of(c: UsageCapture) -> tuple[Any, ...]:
    """A capture's fields as an unpacked frame holds them (``EXCHANGE_FIELDS`` order),
    without the body (the projection is handed it apart)."""
    u = c.usage
    return (
        c.wall_started_at,
        c.started_at,
        c.ended_at,
        c.upstream_sent_at,
        c.backend_ttfb_at,
        c.upstream_done_at,
        c.first_content_at,
        c.session_id,
        c.client_key_id,
        c.frontend,
        c.path,
        c.backend,
        c.backend_type,
        c.model_requested,
        c.model_used,
        c.outcome,
        c.proxy_user,
        c.user_agent,
        c.streaming,
        c.status,
        c.attempts,
        c.tool_call_count,
        c.tool_names,
        None
        if u is None
        else (u.prompt, u.completion, u.total, u.cached, u.cache_write, u.reasoning, u.cost),
        c.btp_est,
        c.ptc_est,
        c.replacement,
        None,
        c.key_name,
        c.team,
    )
