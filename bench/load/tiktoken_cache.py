"""Fill a tiktoken cache directory offline, for peers that count tokens with tiktoken.

    python -m bench.load.tiktoken_cache /opt/tiktoken-cache
    # then start the peer with TIKTOKEN_CACHE_DIR=/opt/tiktoken-cache

tiktoken downloads its BPE files on first use, which fails on a machine without internet
(the reference project answers every request with that error). quicktok-v1, fastproxy's
``exact-tokens`` extra, ships the same ranks in a binary file: this writes them back out
in tiktoken's text form under the name tiktoken's cache looks for (SHA-1 of the URL).
tiktoken checks each cached file against the SHA-256 it expects and refuses a mismatch,
so a file written here is byte-for-byte the published one or it is not used at all.
"""

from __future__ import annotations

import base64
import hashlib
import struct
import sys
from pathlib import Path

URL = "https://openaipublic.blob.core.windows.net/encodings/{name}.tiktoken"
# quicktok's file name -> tiktoken's encoding name
ENCODINGS = {"cl100k": "cl100k_base", "o200k": "o200k_base"}


def tiktoken_text(vocab: bytes) -> bytes:
    """quicktok's ``<u32 n> (<u16 len> <token bytes> <u32 rank>) * n`` as
    ``base64(token) rank`` lines in rank order."""
    (n,), off, ranks = struct.unpack_from("<I", vocab, 0), 4, []
    for _ in range(n):
        (length,) = struct.unpack_from("<H", vocab, off)
        token = vocab[off + 2 : off + 2 + length]
        (rank,) = struct.unpack_from("<I", vocab, off + 2 + length)
        ranks.append((rank, token))
        off += 2 + length + 4
    if off != len(vocab):
        raise ValueError(f"unexpected quicktok vocab layout ({off} of {len(vocab)} bytes read)")
    ranks.sort()
    return b"".join(base64.b64encode(t) + b" %d\n" % r for r, t in ranks)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    try:
        import quicktok
    except ImportError:
        print("quicktok is not installed (pip install -e '.[exact-tokens]')", file=sys.stderr)
        return 1
    data_dir = Path(quicktok.__file__).parent / "data"
    out = Path(argv[0])
    out.mkdir(parents=True, exist_ok=True)
    for short, name in ENCODINGS.items():
        text = tiktoken_text((data_dir / f"{short}.vocab").read_bytes())
        key = hashlib.sha1(URL.format(name=name).encode()).hexdigest()
        (out / key).write_bytes(text)
        print(f"{name}: {out / key} sha256 {hashlib.sha256(text).hexdigest()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
