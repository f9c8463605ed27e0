"""``python -m fastproxy.mockllm``."""

from .cli import main

raise SystemExit(main())
