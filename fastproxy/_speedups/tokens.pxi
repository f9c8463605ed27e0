# Included by _core.pyx (one extension module, uvloop-style includes): tokens.
# --------------------------------------------------------------------------- tokens
# The cost model and its constants are documented in _pure.py, which is the reference;
# the values below must stay equal to it (tests compare every result exactly).

cdef enum:
    _UNIT = 1000
    _WORD_FREE_LETTERS = 6
    _W_WORD = 920
    _W_LONG = 194
    _W_DIGITS = 1156
    _W_PUNCT_RUN = 1013
    _W_PUNCT_EXTRA = 44
    _W_PUNCT_GLUE = 369
    _W_SPACE_ALONE = 1000
    _W_SPACE_RUN = 294
    _W_NEWLINE = 1226
    _W_NEWLINE_AFTER_PUNCT = 570
    _W_LATIN_EXT = 407
    _W_LETTER2 = 59
    _W_LETTER3 = 1000
    _W_HAN = 559
    _W_KANA = 556
    _W_HANGUL = 687
    _W_SYMBOL = 1746
    _W_EMOJI = 1338
    _W_EMOJI_MOD = 1000
    _W_FLAG = 2000
    _W_BAD = 1000

    _R_NONE = 0
    _R_WORD = 1
    _R_CJK = 2
    _R_DIGIT = 3
    _R_PUNCT = 4
    _R_SPACE = 5
    _R_NL = 6
    _R_END = 7

    # ASCII byte classes: run class in the low 3 bits, letter case above.
    _LOWER = 8
    _UPPER = 16

# Filled at import from the same rules as _pure._ascii_table.
cdef unsigned char _ACLS[128]


cdef void _init_ascii_table() noexcept:
    cdef int b
    for b in range(128):
        if 97 <= b <= 122:
            _ACLS[b] = _R_WORD | _LOWER
        elif 65 <= b <= 90:
            _ACLS[b] = _R_WORD | _UPPER
        elif 48 <= b <= 57:
            _ACLS[b] = _R_DIGIT
        elif b == 32 or b == 9:
            _ACLS[b] = _R_SPACE
        elif b == 10 or b == 13:
            _ACLS[b] = _R_NL
        else:
            _ACLS[b] = _R_PUNCT


_init_ascii_table()


cdef inline long long _close_cost(int run, Py_ssize_t n, int prev, int nxt) noexcept nogil:
    if run == _R_WORD:
        if n > _WORD_FREE_LETTERS:
            return _W_WORD + (n - _WORD_FREE_LETTERS) * <long long>_W_LONG
        return _W_WORD
    if run == _R_SPACE:
        if n > 1:
            return _W_SPACE_RUN
        return _W_SPACE_ALONE if (nxt == _R_DIGIT or nxt == _R_END) else 0
    if run == _R_PUNCT:
        if n == 1 and nxt == _R_WORD and prev != _R_SPACE:
            return _W_PUNCT_GLUE
        return _W_PUNCT_RUN + (n - 1) * <long long>_W_PUNCT_EXTRA
    if run == _R_DIGIT:
        return (n + 2) // 3 * <long long>_W_DIGITS
    if run == _R_NL:
        return _W_NEWLINE_AFTER_PUNCT if prev == _R_PUNCT else _W_NEWLINE
    return 0


cdef inline void _classify(unsigned int cp, int* run, int* cost, bint* lower) noexcept nogil:
    lower[0] = False
    if cp < 0x800:
        if 0xC0 <= cp <= 0x24F and cp != 0xD7 and cp != 0xF7:
            run[0] = _R_WORD; cost[0] = _W_LATIN_EXT; lower[0] = True
        elif cp >= 0x370:
            run[0] = _R_WORD; cost[0] = _W_LETTER2
        else:
            run[0] = _R_PUNCT; cost[0] = _W_SYMBOL
    elif cp < 0x10000:
        if 0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0xF900 <= cp <= 0xFAFF:
            run[0] = _R_CJK; cost[0] = _W_HAN
        elif 0x3040 <= cp <= 0x30FF or 0x31F0 <= cp <= 0x31FF:
            run[0] = _R_CJK; cost[0] = _W_KANA
        elif 0xAC00 <= cp <= 0xD7AF or 0x1100 <= cp <= 0x11FF or 0x3130 <= cp <= 0x318F:
            run[0] = _R_CJK; cost[0] = _W_HANGUL
        elif cp == 0x200D or 0xFE00 <= cp <= 0xFE0F:
            run[0] = _R_PUNCT; cost[0] = _W_EMOJI_MOD
        elif (0x2000 <= cp <= 0x2BFF or 0x3000 <= cp <= 0x303F or 0xFE10 <= cp <= 0xFE6F
                or 0xFF00 <= cp <= 0xFFEF or 0xE000 <= cp <= 0xF8FF):
            run[0] = _R_PUNCT; cost[0] = _W_SYMBOL
        elif 0x1E00 <= cp <= 0x1FFF:
            run[0] = _R_WORD; cost[0] = _W_LATIN_EXT; lower[0] = True
        else:
            run[0] = _R_WORD; cost[0] = _W_LETTER3
    elif 0x1F1E6 <= cp <= 0x1F1FF:
        run[0] = _R_PUNCT; cost[0] = _W_FLAG
    elif 0x1F3FB <= cp <= 0x1F3FF:
        run[0] = _R_PUNCT; cost[0] = _W_EMOJI_MOD
    elif 0x20000 <= cp <= 0x3FFFF:
        run[0] = _R_CJK; cost[0] = _W_HAN
    else:
        run[0] = _R_PUNCT; cost[0] = _W_EMOJI


cdef inline void _tok_char(_TokState* s, int r, int cost, bint lower) noexcept nogil:
    """One non-ASCII (or invalid) character: the slow path, a few per multibyte char."""
    if r == s.run:
        s.n += 1
    else:
        if s.run:
            s.units += _close_cost(s.run, s.n, s.prev, r)
            s.prev = s.run
        s.run = r
        s.n = 1
    if r == _R_WORD:
        s.last_lower = lower
    s.units += cost


cdef void _tok_feed(_TokState* st, const unsigned char* p, Py_ssize_t length) noexcept nogil:
    # The hot fields live in plain locals so the compiler keeps them in registers; the
    # struct is synchronised only around the slow (non-ASCII) paths and at the end.
    cdef long long units = st.units
    cdef Py_ssize_t n = st.n
    cdef int run = st.run
    cdef int prev = st.prev
    cdef bint last_lower = st.last_lower
    cdef int need = st.need
    cdef Py_ssize_t i = 0
    cdef Py_ssize_t j
    cdef unsigned char b, c
    cdef int r, cost, k
    cdef bint lower
    while i < length:
        b = p[i]
        if b < 0x80 and not need:
            c = _ACLS[b]
            r = c & 7
            i += 1
            if r == run and not ((c & _UPPER) and last_lower):
                n += 1
            else:
                if run:
                    units += _close_cost(run, n, prev, r)
                    prev = run
                run = r
                n = 1
            if r == _R_SPACE and n == 1 and i < length and <unsigned char>(p[i] - 97) < 26:
                # " word": the lone space joins the word (costs nothing) and the word
                # starts here; same result as two trips round the loop, fewer branches.
                prev = _R_SPACE
                run = _R_WORD
                n = 1
                i += 1
                c = _R_WORD | _LOWER
                r = _R_WORD
            if r == _R_WORD:
                last_lower = (c & _LOWER) != 0
                while last_lower:
                    # The rest of a lowercase word in one tight loop: most of prose.
                    j = i
                    while j < length and <unsigned char>(p[j] - 97) < 26:
                        j += 1
                    n += j - i
                    i = j
                    if i + 1 >= length or p[i] != 32 or <unsigned char>(p[i + 1] - 97) >= 26:
                        break
                    # "word word": close this word, the lone space before the next one
                    # is free; exactly what the general path would add, in one step.
                    units += _close_cost(_R_WORD, n, prev, _R_SPACE)
                    prev = _R_SPACE
                    n = 1
                    i += 2
            continue
        st.units = units
        st.n = n
        st.run = run
        st.prev = prev
        st.last_lower = last_lower
        if st.need:
            if 0x80 <= b <= 0xBF:
                st.cp = (st.cp << 6) | (b & 0x3F)
                st.need -= 1
                st.seq += 1
                i += 1
                if st.need == 0:
                    _classify(st.cp, &r, &cost, &lower)
                    _tok_char(st, r, cost, lower)
            else:
                # Cut short: its bytes are invalid; b is read again as a fresh byte.
                for k in range(st.seq):
                    _tok_char(st, _R_PUNCT, _W_BAD, False)
                st.need = 0
        else:
            i += 1
            if 0xC2 <= b <= 0xDF:
                st.need = 1
                st.cp = b & 0x1F
                st.seq = 1
            elif 0xE0 <= b <= 0xEF:
                st.need = 2
                st.cp = b & 0x0F
                st.seq = 1
            elif 0xF0 <= b <= 0xF4:
                st.need = 3
                st.cp = b & 0x07
                st.seq = 1
            else:
                _tok_char(st, _R_PUNCT, _W_BAD, False)
        units = st.units
        n = st.n
        run = st.run
        prev = st.prev
        last_lower = st.last_lower
        need = st.need
    st.units = units
    st.n = n
    st.run = run
    st.prev = prev
    st.last_lower = last_lower


cdef inline long long _tok_tokens(const _TokState* st) noexcept nogil:
    cdef _TokState s = st[0]
    cdef int k
    if s.need:
        # A sequence cut short by the end counts as stray bytes (on a copy).
        for k in range(s.seq):
            _tok_char(&s, _R_PUNCT, _W_BAD, False)
    return (s.units + _close_cost(s.run, s.n, s.prev, _R_END) + _UNIT // 2) // _UNIT


cdef class TokenEstimator:
    """Streaming token estimate of UTF-8 text; split anywhere, same result."""

    def __cinit__(self):
        self.reset()

    def reset(self):
        memset(&self._s, 0, sizeof(_TokState))
        self._bytes = 0

    @property
    def bytes_fed(self):
        return self._bytes

    @property
    def tokens(self):
        return _tok_tokens(&self._s)

    def feed(self, data):
        cdef Py_buffer view
        if PyBytes_CheckExact(data):
            self.feed_buffer(<const unsigned char*>PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data))
            return
        _get_buffer(data, &view)
        try:
            self.feed_buffer(<const unsigned char*>view.buf, view.len)
        finally:
            PyBuffer_Release(&view)

    cdef void feed_buffer(self, const unsigned char* p, Py_ssize_t n) noexcept nogil:
        self._bytes += n
        _tok_feed(&self._s, p, n)

    cdef long long count(self) noexcept nogil:
        return _tok_tokens(&self._s)


def estimate_tokens(text):
    """Estimated o200k token count of UTF-8 text (see TokenEstimator)."""
    cdef _TokState s
    cdef Py_buffer view
    memset(&s, 0, sizeof(_TokState))
    if isinstance(text, str):
        text = PyUnicode_AsUTF8String(text)
    if PyBytes_CheckExact(text):
        _tok_feed(&s, <const unsigned char*>PyBytes_AS_STRING(text), PyBytes_GET_SIZE(text))
    else:
        _get_buffer(text, &view)
        try:
            _tok_feed(&s, <const unsigned char*>view.buf, view.len)
        finally:
            PyBuffer_Release(&view)
    return _tok_tokens(&s)
