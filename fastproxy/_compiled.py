"""Which data-plane modules run compiled, and the guard that keeps that choice safe.

The request path (the client protocol, the request cycle, the upstream connection and
their small helpers) is plain Python that setup.py also compiles with Cython, module by
module, into extension modules beside the sources: one source for both builds. Python
would import such an extension in preference to its ``.py``, so two mistakes would go
unseen without this guard:

- a source edited after the build (an editable install, a developer's tree) would run
  as its stale compiled copy;
- ``FASTPROXY_NO_EXTENSIONS=1`` would still run the compiled copies.

setup.py writes ``_compiled.json``: the SHA-256 of each source it compiled (an empty
one for a build told not to compile them: FASTPROXY_COMPILE_PLANE=0). `install`
(called once, when the ``fastproxy`` package is imported) puts a finder first on
``sys.meta_path`` that loads the ``.py`` of a listed module when extensions are switched
off, or when the source no longer has the hash it was compiled from; otherwise it
defers to Python's own finders, which load the extension. Hashing ~15 small files costs
a few milliseconds, once per process.
"""

from __future__ import annotations

import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

MANIFEST = "_compiled.json"
_ROOT = Path(__file__).resolve().parent


def extensions_disabled() -> bool:
    return os.environ.get("FASTPROXY_NO_EXTENSIONS", "").lower() in {"1", "true", "yes"}


def source_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class SourceGuard(importlib.abc.MetaPathFinder):
    """Loads the source of a compiled module that must not run compiled."""

    def __init__(self, root: Path, manifest: dict[str, str], pure: bool) -> None:
        self.root = root
        self.manifest = manifest  # module name -> SHA-256 of the source compiled
        self.pure = pure
        self.compiled: list[str] = []  # modules left to their extension
        self.stale: list[str] = []

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        digest = self.manifest.get(fullname)
        if digest is None:
            return None
        src = self.root.joinpath(*fullname.split(".")[1:]).with_suffix(".py")
        if digest and not self.pure:
            try:
                fresh = source_hash(src) == digest
            except OSError:
                return None
            if fresh:
                self.compiled.append(fullname)
                return None
            self.stale.append(fullname)
            logging.getLogger("fastproxy").warning(
                "%s changed since it was compiled: running its source (rebuild: "
                "pip install -e . or python setup.py build_ext --inplace)",
                fullname,
            )
        return importlib.util.spec_from_file_location(fullname, src)


def install() -> SourceGuard | None:
    """Put the guard in front of the import system, once; None when nothing was
    compiled (the pure-Python build, or a tree never built)."""
    for finder in sys.meta_path:
        if isinstance(finder, SourceGuard):
            return finder
    try:
        manifest = json.loads((_ROOT / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or not manifest:
        return None
    guard = SourceGuard(_ROOT, manifest, extensions_disabled())
    sys.meta_path.insert(0, guard)
    return guard


def compiled_modules() -> list[str]:
    """The fastproxy modules running from their compiled extension in this process."""
    return sorted(
        name
        for name, mod in sys.modules.items()
        if name.startswith("fastproxy.")
        and (getattr(mod, "__file__", None) or "").endswith(
            tuple(importlib.machinery.EXTENSION_SUFFIXES)
        )
    )
