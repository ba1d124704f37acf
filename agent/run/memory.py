"""The tracer's memory: the C heap's free pages handed back to the kernel."""
from __future__ import annotations

import ctypes
import ctypes.util

def _malloc_trim():
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


_TRIM = _malloc_trim()


def return_freed() -> None:
    """Hand the free pages of the C heap back to the kernel (glibc's malloc_trim).  glibc
    keeps what a step freed for later allocations, so a tracer's resident memory would show
    its biggest step since the start, not what it holds (a third more with a minute of
    TIME_WAITs held).  Nothing where the C library has no malloc_trim."""
    if _TRIM is not None:
        _TRIM(0)
