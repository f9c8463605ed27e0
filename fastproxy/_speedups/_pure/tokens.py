"""Token estimation: `TokenEstimator` and `estimate_tokens`. Pure-Python twin of ``_core.pyx`` (see ``__init__``)."""

from __future__ import annotations

import re

#
# A fixed-point cost model over character runs, tuned to o200k_base (docs/speedups.md
# has the derivation and the accuracy figures). Costs are in milli-tokens so that both
# implementations do exact integer arithmetic: split invariance and parity are exact.
#
# Runs follow the o200k pre-tokenizer loosely: letters (any alphabetic script, split at
# a lower->upper camelCase step), CJK/kana/hangul, digits, punctuation and symbols
# (emoji included, as in the tokenizer's regex), spaces, newlines. A run costs when it
# closes, and what follows it decides some costs (a single space before a word is free).

_UNIT = 1000
_WORD_FREE_LETTERS = 6  # letters beyond this in one word cost _W_LONG each
_W_WORD = 920
_W_LONG = 194
_W_DIGITS = 1156  # per group of up to 3 digits
_W_PUNCT_RUN = 1013
_W_PUNCT_EXTRA = 44  # per char beyond the first in a punctuation run
_W_PUNCT_GLUE = 369  # one punctuation char glued to the next word ("(self", ".get")
_W_SPACE_ALONE = 1000  # a single space before a digit or at the end
_W_SPACE_RUN = 294
_W_NEWLINE = 1226
_W_NEWLINE_AFTER_PUNCT = 570  # o200k keeps "});\n" together

# Per-character costs of non-ASCII classes (added as each character completes).
_W_LATIN_EXT = 407
_W_LETTER2 = 59  # Greek, Cyrillic, Hebrew, Arabic...
_W_LETTER3 = 1000
_W_HAN = 559
_W_KANA = 556
_W_HANGUL = 687
_W_SYMBOL = 1746
_W_EMOJI = 1338
_W_EMOJI_MOD = 1000  # ZWJ, variation selector, skin tone
_W_FLAG = 2000  # per regional indicator (a flag is two)
_W_BAD = 1000  # per byte of invalid UTF-8

# Run classes.
_R_NONE = 0
_R_WORD = 1
_R_CJK = 2
_R_DIGIT = 3
_R_PUNCT = 4
_R_SPACE = 5
_R_NL = 6
_R_END = 7

# Character classes of non-ASCII code points: (run class, per-char cost, is-lowercase).
_C_LAT = (_R_WORD, _W_LATIN_EXT, True)
_C_OTH2 = (_R_WORD, _W_LETTER2, False)
_C_OTH3 = (_R_WORD, _W_LETTER3, False)
_C_HAN = (_R_CJK, _W_HAN, False)
_C_KANA = (_R_CJK, _W_KANA, False)
_C_HANGUL = (_R_CJK, _W_HANGUL, False)
_C_SYM = (_R_PUNCT, _W_SYMBOL, False)
_C_EMOJI = (_R_PUNCT, _W_EMOJI, False)
_C_EMOD = (_R_PUNCT, _W_EMOJI_MOD, False)
_C_FLAG = (_R_PUNCT, _W_FLAG, False)
_C_BAD = (_R_PUNCT, _W_BAD, False)


def _classify(cp: int) -> tuple[int, int, bool]:
    """Class of a non-ASCII code point (mirrored by _classify in _core.pyx)."""
    if cp < 0x800:
        if 0xC0 <= cp <= 0x24F and cp != 0xD7 and cp != 0xF7:
            return _C_LAT
        if cp >= 0x370:
            return _C_OTH2
        return _C_SYM
    if cp < 0x10000:
        if 0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0xF900 <= cp <= 0xFAFF:
            return _C_HAN
        if 0x3040 <= cp <= 0x30FF or 0x31F0 <= cp <= 0x31FF:
            return _C_KANA
        if 0xAC00 <= cp <= 0xD7AF or 0x1100 <= cp <= 0x11FF or 0x3130 <= cp <= 0x318F:
            return _C_HANGUL
        if cp == 0x200D or 0xFE00 <= cp <= 0xFE0F:
            return _C_EMOD
        if (
            0x2000 <= cp <= 0x2BFF
            or 0x3000 <= cp <= 0x303F
            or 0xFE10 <= cp <= 0xFE6F
            or 0xFF00 <= cp <= 0xFFEF
            or 0xE000 <= cp <= 0xF8FF
        ):
            return _C_SYM
        if 0x1E00 <= cp <= 0x1FFF:
            return _C_LAT
        return _C_OTH3
    if 0x1F1E6 <= cp <= 0x1F1FF:
        return _C_FLAG
    if 0x1F3FB <= cp <= 0x1F3FF:
        return _C_EMOD
    if 0x20000 <= cp <= 0x3FFFF:
        return _C_HAN
    return _C_EMOJI


def _close_cost(run: int, n: int, prev: int, nxt: int) -> int:
    """Cost of a run of n characters that ends because a run of class nxt begins."""
    if run == _R_WORD:
        extra = n - _WORD_FREE_LETTERS
        return _W_WORD + extra * _W_LONG if extra > 0 else _W_WORD
    if run == _R_SPACE:
        if n > 1:
            return _W_SPACE_RUN
        # One space joins the token after it, unless that is a digit (or nothing).
        return _W_SPACE_ALONE if nxt in (_R_DIGIT, _R_END) else 0
    if run == _R_PUNCT:
        glued = n == 1 and nxt == _R_WORD and prev != _R_SPACE
        return (_W_PUNCT_GLUE if glued else _W_PUNCT_RUN) + (n - 1) * _W_PUNCT_EXTRA
    if run == _R_DIGIT:
        return (n + 2) // 3 * _W_DIGITS
    if run == _R_NL:
        return _W_NEWLINE_AFTER_PUNCT if prev == _R_PUNCT else _W_NEWLINE
    return 0


# ASCII byte -> (run class, 1 if lowercase letter, 2 if uppercase letter else 0)
def _ascii_table() -> list[tuple[int, int]]:
    table = []
    for b in range(128):
        c = chr(b)
        if "a" <= c <= "z":
            table.append((_R_WORD, 1))
        elif "A" <= c <= "Z":
            table.append((_R_WORD, 2))
        elif "0" <= c <= "9":
            table.append((_R_DIGIT, 0))
        elif c in " \t":
            table.append((_R_SPACE, 0))
        elif c in "\r\n":
            table.append((_R_NL, 0))
        else:
            table.append((_R_PUNCT, 0))
    return table


_ASCII = _ascii_table()
# Maximal runs of one ASCII byte class, or of non-ASCII bytes (decoded one by one).
_RUNS = re.compile(
    rb"[a-z]+|[A-Z]+|[0-9]+|[ \t]+|[\r\n]+|[\x80-\xff]+|[^a-zA-Z0-9 \t\r\n\x80-\xff]+"
)


class TokenEstimator:
    """Streaming token estimate of UTF-8 text; split anywhere, same result."""

    __slots__ = ("_bytes", "_cp", "_last_lower", "_n", "_need", "_prev", "_run", "_seq", "_units")

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._units = 0  # committed cost, milli-tokens
        self._run = _R_NONE  # class of the open run
        self._n = 0  # characters in the open run
        self._prev = _R_NONE  # class of the run before it
        self._last_lower = False  # last letter was lowercase (camelCase split)
        self._need = 0  # UTF-8 continuation bytes still expected
        self._seq = 0  # bytes of the pending sequence so far
        self._cp = 0  # code point being assembled
        self._bytes = 0

    @property
    def bytes_fed(self) -> int:
        return self._bytes

    @property
    def tokens(self) -> int:
        units, run, n, prev = self._units, self._run, self._n, self._prev
        if self._need:
            # A sequence cut short by the end counts as stray bytes, exactly as one
            # cut short by another byte; the state itself stays as it is.
            units, run, n, prev, _ = self._bad(self._seq, units, run, n, prev, self._last_lower)
        units += _close_cost(run, n, prev, _R_END)
        return (units + _UNIT // 2) // _UNIT

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        if type(data) is not bytes:
            data = memoryview(data).tobytes()
        if not data:
            return
        self._bytes += len(data)
        ascii_cls = _ASCII
        units = self._units
        run = self._run
        n = self._n
        prev = self._prev
        last_lower = self._last_lower
        pos = 0
        if self._need:
            # Finish the sequence split by the previous chunk, byte by byte.
            need, seq, cp = self._need, self._seq, self._cp
            while need and pos < len(data):
                b = data[pos]
                if 0x80 <= b <= 0xBF:
                    cp = (cp << 6) | (b & 0x3F)
                    need -= 1
                    seq += 1
                    pos += 1
                    if not need:
                        units, run, n, prev, last_lower = self._char(
                            _classify(cp), units, run, n, prev, last_lower
                        )
                else:
                    units, run, n, prev, last_lower = self._bad(
                        seq, units, run, n, prev, last_lower
                    )
                    need = 0
            self._need, self._seq, self._cp = need, seq, cp
        for m in _RUNS.finditer(data, pos):
            b = data[m.start()]
            k = m.end() - m.start()
            if b >= 0x80:
                units, run, n, prev, last_lower = self._high(
                    data, m.start(), m.end(), units, run, n, prev, last_lower
                )
                continue
            r, case = ascii_cls[b]
            if r == run and not (case == 2 and last_lower):
                n += k
            else:
                if run:
                    units += _close_cost(run, n, prev, r)
                    prev = run
                run = r
                n = k
            if r == _R_WORD:
                last_lower = case == 1
        self._units, self._run, self._n, self._prev = units, run, n, prev
        self._last_lower = last_lower

    def _char(
        self, cls: tuple[int, int, bool], units: int, run: int, n: int, prev: int, last_lower: bool
    ) -> tuple[int, int, int, int, bool]:
        r, cost, lower = cls
        if r == run:
            n += 1
        else:
            if run:
                units += _close_cost(run, n, prev, r)
                prev = run
            run = r
            n = 1
        if r == _R_WORD:
            last_lower = lower
        return units + cost, run, n, prev, last_lower

    def _bad(
        self, count: int, units: int, run: int, n: int, prev: int, last_lower: bool
    ) -> tuple[int, int, int, int, bool]:
        for _ in range(count):
            units, run, n, prev, last_lower = self._char(_C_BAD, units, run, n, prev, last_lower)
        return units, run, n, prev, last_lower

    def _high(
        self,
        data: bytes,
        i: int,
        end: int,
        units: int,
        run: int,
        n: int,
        prev: int,
        last_lower: bool,
    ) -> tuple[int, int, int, int, bool]:
        """Decode the non-ASCII bytes data[i:end] (a sequence may run past end)."""
        while i < end:
            b = data[i]
            if 0xC2 <= b <= 0xDF:
                need, cp = 1, b & 0x1F
            elif 0xE0 <= b <= 0xEF:
                need, cp = 2, b & 0x0F
            elif 0xF0 <= b <= 0xF4:
                need, cp = 3, b & 0x07
            else:
                units, run, n, prev, last_lower = self._char(
                    _C_BAD, units, run, n, prev, last_lower
                )
                i += 1
                continue
            seq = 1
            i += 1
            while need and i < end:
                c = data[i]
                if c > 0xBF:  # a lead byte: the sequence is cut short
                    break
                cp = (cp << 6) | (c & 0x3F)
                need -= 1
                seq += 1
                i += 1
            if not need:
                units, run, n, prev, last_lower = self._char(
                    _classify(cp), units, run, n, prev, last_lower
                )
            elif i < end or end < len(data):
                # Cut short by another lead byte or by ASCII: its bytes are invalid.
                units, run, n, prev, last_lower = self._bad(seq, units, run, n, prev, last_lower)
            else:
                # Cut by the end of this chunk: the next chunk may complete it.
                self._need, self._seq, self._cp = need, seq, cp
        return units, run, n, prev, last_lower


def estimate_tokens(text: bytes | str) -> int:
    """Estimated o200k token count of UTF-8 text (see TokenEstimator)."""
    est = TokenEstimator()
    est.feed(text.encode("utf-8") if isinstance(text, str) else text)
    return est.tokens
