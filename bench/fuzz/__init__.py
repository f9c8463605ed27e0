"""Long fuzz runs of tests/reliability/test_fuzz_*: ``python -m bench.fuzz --help``."""
