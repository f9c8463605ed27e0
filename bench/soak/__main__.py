"""``python -m bench.soak``: see the package docstring."""

import sys

from .runner import main

sys.exit(main())
