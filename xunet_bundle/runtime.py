"""Process-level settings that make CPU training and inference fast by default."""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

__all__ = ["cpu_supports_bf16", "tune_glibc_malloc"]

logger = logging.getLogger(__name__)

# mallopt parameters, from glibc's malloc.h
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_MAX = -4


def tune_glibc_malloc(top_pad: int = 1 << 30, trim_threshold: int = 100_000_000_000) -> bool:
    """
    Keep large tensors on glibc's heap instead of fresh ``mmap`` regions.

    By default glibc serves every allocation above 128 KiB-32 MiB with its own ``mmap`` and returns it to the kernel
    when freed, so each large activation of every training step is page-faulted in again: on CPU this roughly
    doubles the step time (kernel time equals user time). This is the runtime equivalent of
    ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=... MALLOC_TOP_PAD_=...``; memory freed by PyTorch stays reserved
    by the process for reuse. It does nothing on other C libraries (macOS, Windows, musl).

    Args:
        top_pad: extra bytes requested from the kernel whenever the heap grows.
        trim_threshold: free memory at the top of the heap above which glibc returns it to the kernel.

    Returns:
        whether the settings were applied.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    applied = all(
        mallopt(param, value) == 1
        for param, value in (
            (_M_MMAP_MAX, 0),
            (_M_TRIM_THRESHOLD, min(trim_threshold, 2**31 - 1)),
            (_M_TOP_PAD, top_pad),
        )
    )
    logger.info("glibc malloc tuned for large tensors: %s", applied)
    return applied


def cpu_supports_bf16() -> bool:
    """
    Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX). Without it PyTorch emulates bf16 and autocast
    makes convolutions many times slower than fp32.
    """
    try:
        with open("/proc/cpuinfo") as f:
            flags = set(f.read().split())
    except OSError:
        return False
    return bool(flags & {"avx512_bf16", "amx_bf16"})
