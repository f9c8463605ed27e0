"""Build the optional compiled parts: the Cython core ``fastproxy._speedups._core`` and
the request path's own modules (``COMPILED_MODULES``), compiled from their ``.py``.

Everything else is declared in pyproject.toml. The extension is optional: when no
compiler is present (or FASTPROXY_NO_EXTENSIONS=1 is set at build time) the package
installs without it and ``fastproxy._speedups`` falls back to its pure-Python twin.

Environment knobs (read at build time):
  FASTPROXY_NO_EXTENSIONS=1   skip the extension entirely
  FASTPROXY_CYTHON_ANNOTATE=1 write the HTML annotation next to the .pyx
  FASTPROXY_CYTHON_TRACE=1    build with line tracing (for coverage/profiling; slower)
  FASTPROXY_REQUIRE_EXTENSIONS=1  fail the build instead of falling back (used by CI)
  FASTPROXY_COMPILE_PLANE=0   build _speedups._core only, the request path stays source

The request path's modules are plain Python, and the same file runs either way: Cython
compiles each into an extension module beside it, and ``fastproxy/_compiled.py`` makes
sure a compiled copy runs only while its source is unchanged (the SHA-256 of each
compiled source goes into ``fastproxy/_compiled.json``) and never with
FASTPROXY_NO_EXTENSIONS=1. docs/speedups.md says why these modules and not others.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

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


# The request path: what runs per request and per upstream chunk. Modules with coroutines
# or rare paths only (discovery, admin, fetch) gain nothing and stay interpreted.
COMPILED_MODULES = (
    "fastproxy.core.flow",
    "fastproxy.core.records",
    "fastproxy.dataplane.cycle",
    "fastproxy.dataplane.protocol",
    "fastproxy.dataplane.request",
    "fastproxy.dataplane.responses",
    "fastproxy.dataplane.wire",
    "fastproxy.httpclient.pool",
    "fastproxy.httpclient.request",
    "fastproxy.httpclient.response",
)
MANIFEST = Path("fastproxy/_compiled.json")


def _module_extensions(macros: list[tuple[str, str | None]]) -> list[Extension]:
    """One extension per request-path module, and the manifest of what they were
    compiled from (written before build_py copies the package, so wheels carry it)."""
    if os.environ.get("FASTPROXY_COMPILE_PLANE", "1").lower() in {"0", "false", "no"}:
        # An empty hash: the sources run, even where an earlier build left extensions.
        manifest = dict.fromkeys(COMPILED_MODULES, "")
        MANIFEST.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
        return []
    exts, manifest = [], {}
    for name in COMPILED_MODULES:
        src = Path(*name.split(".")).with_suffix(".py")
        manifest[name] = hashlib.sha256(src.read_bytes()).hexdigest()
        exts.append(Extension(name, [str(src)], define_macros=macros, extra_compile_args=["-O2"]))
    MANIFEST.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return exts


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
    core = cythonize(
        [ext],
        compiler_directives=directives,
        annotate=_flag("FASTPROXY_CYTHON_ANNOTATE"),
    )
    # The request path is ordinary Python: compiled with Python's semantics (annotations
    # are not C types, bounds and wrap-around checked as the interpreter would).
    plane_directives = {"language_level": "3", "annotation_typing": False, "binding": True}
    if _flag("FASTPROXY_CYTHON_TRACE"):
        plane_directives["linetrace"] = True
        plane_directives["profile"] = True
    plane = _module_extensions(macros)
    if plane:
        sys.stderr.write(f"fastproxy: compiling {len(plane)} request-path modules (Cython)\n")
        plane = cythonize(
            plane,
            compiler_directives=plane_directives,
            annotate=_flag("FASTPROXY_CYTHON_ANNOTATE"),
        )
    return core + plane


setup(ext_modules=_extensions(), cmdclass={"build_ext": OptionalBuildExt})
