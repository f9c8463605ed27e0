"""Build the optional Cython core ``fastproxy._speedups._core``.

Everything else is declared in pyproject.toml. The extension is optional: when no
compiler is present (or FASTPROXY_NO_EXTENSIONS=1 is set at build time) the package
installs without it and ``fastproxy._speedups`` falls back to its pure-Python twin.

Environment knobs (read at build time):
  FASTPROXY_NO_EXTENSIONS=1   skip the extension entirely
  FASTPROXY_CYTHON_ANNOTATE=1 write the HTML annotation next to the .pyx
  FASTPROXY_CYTHON_TRACE=1    build with line tracing (for coverage/profiling; slower)
  FASTPROXY_REQUIRE_EXTENSIONS=1  fail the build instead of falling back (used by CI)
"""

from __future__ import annotations

import os
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


def _flag(name: str) -> bool:
    return os.environ.get(name, "").lower() in {"1", "true", "yes"}


class OptionalBuildExt(build_ext):
    """Fall back to the pure twin when the C build fails, unless told not to."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # compiler missing, Cython missing, ...
            self._fallback(exc)

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:
            self._fallback(exc)

    def _fallback(self, exc: BaseException) -> None:
        if _flag("FASTPROXY_REQUIRE_EXTENSIONS"):
            raise exc
        sys.stderr.write(
            f"WARNING: fastproxy._speedups._core was not built ({exc}); "
            "the pure-Python implementation will be used.\n"
        )


def _extensions() -> list[Extension]:
    if _flag("FASTPROXY_NO_EXTENSIONS"):
        sys.stderr.write("fastproxy: building without extensions (pure Python)\n")
        return []
    try:
        from Cython.Build import cythonize
    except ImportError:
        if _flag("FASTPROXY_REQUIRE_EXTENSIONS"):
            raise
        sys.stderr.write("fastproxy: Cython not available; pure Python only\n")
        return []
    macros: list[tuple[str, str | None]] = []
    directives = {
        "language_level": "3",
        "boundscheck": False,
        "wraparound": False,
        "cdivision": True,
        "initializedcheck": False,
    }
    if _flag("FASTPROXY_CYTHON_TRACE"):
        directives["linetrace"] = True
        macros += [("CYTHON_TRACE", "1"), ("CYTHON_TRACE_NOGIL", "1")]
    ext = Extension(
        "fastproxy._speedups._core",
        ["fastproxy/_speedups/_core.pyx"],
        define_macros=macros,
        extra_compile_args=["-O3"],
    )
    sys.stderr.write("fastproxy: building accelerated _speedups._core (Cython)\n")
    return cythonize(
        [ext],
        compiler_directives=directives,
        annotate=_flag("FASTPROXY_CYTHON_ANNOTATE"),
    )


setup(ext_modules=_extensions(), cmdclass={"build_ext": OptionalBuildExt})
