"""Print the estimator's error per corpus sample against the exact tokenizers.

    .venv/bin/python -m tests.speedups.corpus_report

Needs quicktok-v1. Used to tune the constants in _pure.py/_core.pyx and to produce the
accuracy table in docs/speedups.md; not collected as a test.
"""

from __future__ import annotations

from pathlib import Path

import quicktok

from fastproxy._speedups import _pure

CORPUS = Path(__file__).parent / "corpus"


def main() -> None:
    encodings = {name: quicktok.get_encoding(name) for name in ("o200k_base", "cl100k_base")}
    totals = dict.fromkeys(encodings, 0)
    total_est = 0
    worst = dict.fromkeys(encodings, 0.0)
    print(
        f"{'sample':36s} {'bytes':>6s} {'estimate':>8s} " + " ".join(f"{n:>18s}" for n in encodings)
    )
    for path in sorted(CORPUS.iterdir()):
        text = path.read_text(encoding="utf-8")
        est = _pure.estimate_tokens(text)
        total_est += est
        cells = []
        for name, enc in encodings.items():
            exact = len(enc.encode_ordinary(text))
            totals[name] += exact
            err = est / exact - 1
            worst[name] = max(worst[name], abs(err))
            cells.append(f"{exact:>8d} {err:>+8.1%} ")
        print(f"{path.name:36s} {len(text.encode()):>6d} {est:>8d} " + " ".join(cells))
    for name in encodings:
        agg = total_est / totals[name] - 1
        print(
            f"{name}: aggregate {agg:+.2%} over {totals[name]} tokens, worst sample {worst[name]:.1%}"
        )


if __name__ == "__main__":
    main()
