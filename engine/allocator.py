"""Keep the C allocator from holding on to memory a long-running engine has freed.

The end-to-end fuzz (docs/fuzzing.md) showed the engine and its worker growing by far more
than the Python heap did: tracemalloc saw about a megabyte retained over thousands of
mutated frames while RSS rose by hundreds. glibc's malloc gives every thread its own arena
(up to eight per core) and, after a large block is freed, raises its mmap threshold so the
next large blocks (a frame with a half-megabyte field, its decoded text, its stored row)
come from those arenas and stay there. Fewer arenas and a fixed mmap threshold make large
blocks go back to the system when freed. Linux/glibc only; elsewhere nothing is changed.

That alone leaves the small blocks: glibc returns memory to the system only from the top of
each heap (and only past M_TRIM_THRESHOLD), so the free pages left in the middle of a heap
by thousands of parsed, routed and discarded messages stay resident. `malloc_trim(3)` hands
those pages back (madvise) in every arena; `start_trimmer` calls it on a timer in a daemon
thread (ctypes releases the GIL for the call). docs/fuzzing.md has what it gave back in the
end-to-end fuzz.
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading

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


TRIM_INTERVAL_S = 30.0


def trim() -> bool:
    """Return free heap pages to the system now; False when not on glibc."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        malloc_trim = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return False
    malloc_trim(0)
    return True


def start_trimmer(interval: float = TRIM_INTERVAL_S,
                  env: dict[str, str] | os._Environ[str] = os.environ) -> threading.Thread | None:
    """`trim()` every `interval` seconds for the life of the process (a daemon thread);
    None when switched off (PARCOURS_BOUND_ALLOCATOR=0) or not on glibc."""
    if env.get("PARCOURS_BOUND_ALLOCATOR", "1") == "0" or not trim():
        return None
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(interval):
            trim()

    thread = threading.Thread(target=loop, name="malloc-trim", daemon=True)
    thread.start()
    return thread
