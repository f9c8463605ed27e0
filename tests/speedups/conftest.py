"""``speedups_impl``: every _speedups test runs on the compiled core and on the pure twin.

The modules are imported directly (not through ``fastproxy._speedups``) so that both are
exercised in one run whatever FASTPROXY_NO_EXTENSIONS says. When ``_core`` is not built
the "cython" parameter is skipped with the reason, unless FASTPROXY_REQUIRE_EXTENSIONS=1
(CI), where a missing build must fail loudly instead of quietly testing half the code.
"""

from __future__ import annotations

from types import ModuleType

import pytest

from .helpers import IMPLS, impl_module


@pytest.fixture(params=IMPLS, scope="session")
def speedups_impl(request: pytest.FixtureRequest) -> ModuleType:
    return impl_module(request.param)
