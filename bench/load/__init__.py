"""Load benchmark: the mock LLM behind nothing (direct), nginx and fastproxy, side by side.

``python -m bench.load --help``; method and latest figures in docs/BENCHMARKS.md.
"""
