"""Give memory freed by a large image decode back to the operating system.

Pillow decodes a big PNG into 16 MB blocks. glibc's malloc serves such blocks with mmap and
unmaps them when freed, but each free also raises its mmap threshold, so later blocks come
from the heap arenas (one per worker thread), and a freed heap is kept for reuse: after a few
8000 x 8000 uploads the server would sit on hundreds of megabytes it no longer uses.
``malloc_trim(0)`` returns those free pages; elsewhere than glibc this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from typing import Any


@functools.cache
def _libc() -> Any:
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
        libc.malloc_trim.restype = ctypes.c_int
        return libc
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim
        return None


def release_freed_memory() -> bool:
    """Return free heap pages to the OS; True when it could ask (glibc)."""
    libc = _libc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True
