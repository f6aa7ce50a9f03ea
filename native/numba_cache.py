"""Where a PyInstaller bundle keeps its compiled numba kernels.

numba caches a ``cache=True`` kernel only when it finds the kernel's source file: in a bundle the
code object names ``native/similarity.py`` relative to the current directory, which does not
exist there, so numba skips ``NUMBA_CACHE_DIR`` and falls back to ``~/.cache/numba`` (or fails
where the service user has no writable home). ``FrozenCacheLocator`` uses ``NUMBA_CACHE_DIR``
when frozen, whatever the current directory; entries are stamped with the executable (as numba
does for frozen apps), so a new build recompiles. numba imports it by name, from
``NUMBA_CACHE_LOCATOR_CLASSES`` (``agent.bundle.direct_numba_cache`` sets both variables).
"""

from __future__ import annotations

import os
import sys
from typing import Any

from numba.core import config
from numba.core.caching import UserProvidedCacheLocator


class FrozenCacheLocator(UserProvidedCacheLocator):
    def __init__(self, py_func: Any, py_file: str) -> None:
        self._py_file = py_file
        self._lineno = py_func.__code__.co_firstlineno
        # Not numba's hash of the absolute source path: that would change with the current directory.
        folder = os.path.basename(os.path.dirname(py_file)) or "main"
        self._cache_path = os.path.join(_cache_dir(), "frozen", folder)

    @classmethod
    def from_function(cls, py_func: Any, py_file: str) -> FrozenCacheLocator | None:
        if not (getattr(sys, "frozen", False) and _cache_dir()):
            return None
        locator = cls(py_func, py_file)
        try:
            locator.ensure_cache_path()  # type: ignore[no-untyped-call]
        except OSError:
            return None
        return locator


def _cache_dir() -> str:
    return str(getattr(config, "CACHE_DIR", "") or "")  # NUMBA_CACHE_DIR, read when numba was imported
