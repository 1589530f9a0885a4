"""Giving back the resident pages of a weight memory-mapped from its checkpoint.

transformers maps a safetensors checkpoint into memory privately: a weight's pages are read
from the file when first touched and then count in the process's resident size. The SVF
forward never reads a wrapped layer's weight (it computes x Vhᵀ (S ⊙ z) Uᵀ), so once the SVD
(or the cache key's hash) has read it, :func:`release_pages` tells the kernel to drop those
pages (``madvise(MADV_DONTNEED)``). The tensor stays valid and unchanged: a later read (the
base forward of ``disable_adapter``, ``unload``, a merge, a state dict) pages it back in from
the checkpoint on disk, bit for bit. No copy of the weight is kept in memory.

It is done only where it is safe: Linux, a CPU tensor inside a *file* mapping, and every page
of it either not resident or a clean page of that file (``/proc/self/pagemap``). A page that
was written (copy-on-write: a weight changed in place after loading) or swapped is the only
copy of its values, so a tensor with one is left alone, as is any weight not mapped from a
file (loaded with a dtype conversion, on a GPU, built in memory): it then stays resident.
"""

from __future__ import annotations

import bisect
import ctypes
import mmap
import os
import struct
import sys
from functools import lru_cache

import torch

_MADV_DONTNEED = 4
_PRESENT, _SWAPPED, _FILE_OR_SHARED = 1 << 63, 1 << 62, 1 << 61


@lru_cache(maxsize=1)
def _madvise():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.madvise
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


def _file_mappings() -> list[tuple[int, int, str]]:
    """(start, end, path) of every file mapping of this process, sorted by start."""
    out = []
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                parts = line.split(maxsplit=5)
                if len(parts) == 6 and parts[5].startswith("/"):
                    lo, hi = (int(x, 16) for x in parts[0].split("-"))
                    out.append((lo, hi, parts[5].rstrip("\n")))
    except OSError:
        return []
    return sorted(out)


def _clean_file_pages(start: int, npages: int, page: int) -> bool:
    """True when each of the pages is absent or a file page (never anonymous or swapped)."""
    try:
        fd = os.open("/proc/self/pagemap", os.O_RDONLY)
    except OSError:
        return False
    try:
        data = os.pread(fd, 8 * npages, (start // page) * 8)
    except OSError:
        return False
    finally:
        os.close(fd)
    if len(data) != 8 * npages:
        return False
    for (entry,) in struct.iter_unpack("<Q", data):
        if entry & _SWAPPED or (entry & _PRESENT and not entry & _FILE_OR_SHARED):
            return False
    return True


def release_pages(t: torch.Tensor) -> int:
    """Drop the resident pages wholly inside ``t``'s memory when it is a clean, file-mapped
    CPU tensor (see the module docstring); returns the bytes given back (0 when not done).

    ``t`` keeps its values: they are read again from the file on the next access."""
    fn = _madvise()
    if fn is None or t.device.type != "cpu" or t.numel() == 0 or not t.is_contiguous():
        return 0
    page = mmap.PAGESIZE
    lo_addr = t.data_ptr()
    hi_addr = lo_addr + t.numel() * t.element_size()
    start, end = -(-lo_addr // page) * page, hi_addr // page * page  # whole pages only
    if end <= start:
        return 0
    maps = _file_mappings()
    i = bisect.bisect_right(maps, (lo_addr, float("inf"), "")) - 1
    if i < 0 or not (maps[i][0] <= lo_addr and hi_addr <= maps[i][1]):
        return 0  # not (wholly) inside one file mapping: anonymous memory, never dropped
    if not _clean_file_pages(start, (end - start) // page, page):
        return 0
    if fn(start, end - start, _MADV_DONTNEED) != 0:
        return 0
    return end - start


@lru_cache(maxsize=1)
def _malloc_trim():
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None  # not glibc
    fn.argtypes = [ctypes.c_size_t]
    fn.restype = ctypes.c_int
    return fn


def trim_heap() -> None:
    """Return the C heap's free memory to the system (glibc ``malloc_trim``; elsewhere a
    no-op). Wrapping a model frees one layer's float32 factors and SVD workspace after
    another; glibc keeps such freed blocks in its heap, so without this the process stays
    as large as if they were all still held."""
    fn = _malloc_trim()
    if fn is not None:
        fn(0)
