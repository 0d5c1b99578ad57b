"""Keep the C allocator from holding on to memory a long-running engine has freed.

The end-to-end fuzz (docs/fuzzing.md) showed the engine and its worker growing by far more
than the Python heap did: tracemalloc saw about a megabyte retained over thousands of
mutated frames while RSS rose by hundreds. glibc's malloc gives every thread its own arena
(up to eight per core) and, after a large block is freed, raises its mmap threshold so the
next large blocks (a frame with a half-megabyte field, its decoded text, its stored row)
come from those arenas and stay there. Fewer arenas and a fixed mmap threshold make large
blocks go back to the system when freed. Linux/glibc only; elsewhere nothing is changed.
"""

from __future__ import annotations

import ctypes
import os
import sys

# mallopt(3) parameter numbers, glibc <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8

ARENA_MAX = 2
MMAP_THRESHOLD = 128 * 1024  # glibc's initial value, kept fixed instead of growing


def bound_allocator(env: dict[str, str] | os._Environ[str] = os.environ) -> bool:
    """Apply the settings above; False when not on glibc or switched off with
    PARCOURS_BOUND_ALLOCATOR=0. Call it before threads start."""
    if env.get("PARCOURS_BOUND_ALLOCATOR", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    results = [mallopt(_M_ARENA_MAX, ARENA_MAX), mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD),
               mallopt(_M_TRIM_THRESHOLD, MMAP_THRESHOLD)]
    return all(r == 1 for r in results)
