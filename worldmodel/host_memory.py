"""Keep freed host memory in the process, so that CPU training and imagination stop page-faulting.

glibc's malloc serves a large block (from 128 KiB, a threshold it raises up to 32 MiB as blocks
are freed) with a fresh ``mmap`` and hands it back to the kernel on ``free``; it also trims freed
memory off the top of its heap. A tensor op on a CPU allocates its output every call, so the
same few MiB of activations are mapped, faulted in page by page (each 4 KiB page zero-filled by
the kernel) and unmapped again, hundreds of times a second. Raising both thresholds keeps the
freed blocks for the next allocation of the same size. Measured on a 2-core AMD EPYC (AVX2),
one thread (docs/benchmarks.md): tiny iVideoGPT frame decoding at batch 8 ~1.2x faster (3,700
page faults per frame -> 0), a DrQ-v2 update at batch 256 1.45x (64x64) to 2x (84x84) faster;
peak resident memory +10-14%.
Allocators that cache freed memory, such as jemalloc and tcmalloc (PyTorch's CPU performance
guide suggests preloading one), avoid the same faults; this needs no other library.

The cost: memory freed by the process stays counted in its resident size (near its peak) instead
of going back to the kernel.
"""
from __future__ import annotations

import ctypes
import logging
import os

log = logging.getLogger(__name__)

# mallopt parameter ids (glibc's malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

# Blocks below this come from the heap and are reused after free. It must exceed the largest
# activation allocated every step: a DrQ-v2 update at batch 256 allocates 40-65 MiB tensors (its
# float observation batches at 64 and 84 px), and 32 MiB, glibc's own ceiling, left that update
# as slow as the default.
MMAP_THRESHOLD_BYTES = 256 * 2**20
# Freed memory at the top of the heap beyond this goes back to the kernel (glibc keeps the
# trim threshold at twice the mmap threshold when it adjusts them itself).
TRIM_THRESHOLD_BYTES = 2 * MMAP_THRESHOLD_BYTES


def _user_settings() -> list[str]:
    """The malloc settings the user made in the environment: then theirs stand."""
    names = [name for name in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_") if name in os.environ]
    if "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", ""):
        names.append("GLIBC_TUNABLES")
    return names


def keep_freed_host_memory() -> bool:
    """Make glibc's malloc keep freed blocks up to ``MMAP_THRESHOLD_BYTES`` for reuse (see the
    module docstring). Process-wide and idempotent. Returns whether the thresholds were set:
    False off glibc (the thresholds are glibc's) and when the user set
    ``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_`` or ``glibc.malloc`` tunables."""
    user = _user_settings()
    if user:
        log.info("malloc thresholds left as %s set them", " and ".join(user))
        return False
    libc = _glibc()
    if libc is None:
        return False
    ok = libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1
    ok = libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) == 1 and ok
    if not ok:
        log.warning("glibc refused the malloc thresholds (mallopt); freed memory goes back to the kernel as usual")
    return ok


def malloc_setting(keep_freed: bool) -> str:
    """Apply ``keep_freed_memory=keep_freed`` and name the setting the process now runs with, for a
    benchmark's output: ``keep-freed``, ``default``, or the environment variables that decided it."""
    user = _user_settings()
    if not keep_freed:
        return f"as {' and '.join(user)} set it" if user else "default"
    if keep_freed_host_memory():
        return "keep-freed"
    return f"as {' and '.join(user)} set it" if user else "default (not glibc, or mallopt refused)"


def _glibc() -> ctypes.CDLL | None:
    """The process's C library when it is glibc, else None."""
    try:
        libc = ctypes.CDLL(None)  # the symbols the process has loaded, the C library's among them
        libc.gnu_get_libc_version  # only glibc has it
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    except (OSError, AttributeError, TypeError):  # TypeError: Windows has no CDLL(None)
        return None
    return libc
