"""What health probing costs the relay: see bench/health/__main__.py and docs/health.md."""
