"""Process-wide memory tuning for long indexing runs."""

from __future__ import annotations

import ctypes
import ctypes.util

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def keep_freed_memory(threshold: int = 1 << 30) -> bool:
    """Make glibc keep freed blocks up to `threshold` bytes for reuse instead of unmapping them.

    A model forward allocates and frees tens of MB per layer; interleaved with the SAE encoder
    and DuckDB, glibc's default dynamic thresholds return that memory to the OS and fault it
    back in on the next batch, which measurably slows the forward (docs/indexing.md, "Speed").
    The cost: the process keeps its peak heap. Used by `saedex index`, not on import. Returns
    False where there is no glibc (macOS, musl), where it does nothing.
    """
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    # some glibc versions cap the mmap threshold at 32 MB: fall back to the cap
    mapped = mallopt(_M_MMAP_THRESHOLD, threshold) or mallopt(_M_MMAP_THRESHOLD, 32 << 20)
    trimmed = mallopt(_M_TRIM_THRESHOLD, threshold)
    return bool(mapped and trimmed)
