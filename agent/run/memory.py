"""The tracer's memory: the C heap's free pages handed back to the kernel, and the BPF
compiler's once the program is loaded."""
from __future__ import annotations

import ctypes
import ctypes.util
import re
from typing import NamedTuple

def _libc_function(name: str):
    try:
        return getattr(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True), name)
    except (OSError, AttributeError):  # not glibc
        return None


_TRIM = _libc_function("malloc_trim")
_MALLOPT = _libc_function("mallopt")
M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter (malloc.h)
MAPPED_FROM = 256 * 1024  # blocks of this size and more get mappings of their own (big_blocks_mapped)
_MADVISE = _libc_function("madvise")
if _MADVISE is not None:
    _MADVISE.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
MADV_PAGEOUT = 21  # Linux 5.4: reclaim these pages now (a clean file page is dropped, read again if touched)
MADV_DONTNEED = 4  # unmap them from this process (a file's page stays in the page cache)
# bcc compiles the program in this process with clang and LLVM: their libraries, about 85 MB
# of code and data read from disk, stay resident after the compile, though nothing runs them
# again (bcc's tables are read through ctypes here, never through LLVM-made code)
COMPILER = re.compile(r"/lib(LLVM|clang)[^/]*\.so[^/]*$")


def arrow_on_the_c_heap() -> None:
    """pyarrow's buffers (pandas' text columns, the rows files) allocated with malloc rather
    than with pyarrow's default, mimalloc: mimalloc keeps the segments a step freed for later,
    where return_freed cannot hand them back, and a run's memory then shows its biggest step.
    (Not slower: the rows of a replayed stream cost a little less on malloc, docs/overhead.md.)"""
    import pyarrow  # (loaded by pandas anyway)

    pyarrow.set_memory_pool(pyarrow.system_memory_pool())


def big_blocks_mapped() -> None:
    """malloc gives every block of MAPPED_FROM bytes or more (a step's columns) a mapping of its
    own, which goes back to the kernel when freed.  glibc does so from 128 KiB at first, but
    each such block freed raises that threshold to its size (up to 32 MiB): after a few steps a
    step's arrays are carved out of the heap, where a small block allocated after them keeps
    their pages resident until the step ends and return_freed runs: the tracer's peak is then
    its steps' garbage on top of what it holds.  Setting the threshold turns that rise off.
    The price: a mapping is faulted in afresh where the heap would have reused its pages, so a
    row costs a little more (both measured in docs/overhead.md, "The heap between steps").
    Nothing where the C library has no mallopt."""
    if _MALLOPT is not None:
        _MALLOPT(M_MMAP_THRESHOLD, MAPPED_FROM)


def return_freed() -> None:
    """Hand the free pages of the C heap back to the kernel (glibc's malloc_trim).  glibc
    keeps what a step freed for later allocations, so a tracer's resident memory would show
    its biggest step since the start, not what it holds (a third more with a minute of
    TIME_WAITs held).  Nothing where the C library has no malloc_trim."""
    if _TRIM is not None:
        _TRIM(0)


def release_compiler() -> int:
    """Once the BPF program is loaded: the compiler's libraries' pages and the heap it freed
    handed back to the kernel (each compile took some 150 MB, two thirds of which stayed
    resident).  Should anything touch those pages again, the kernel reads them back from the
    file.  Returns the mappings released (0: no madvise, or a kernel before 5.4, which
    refuses MADV_PAGEOUT: nothing changes).

    MADV_PAGEOUT reclaims only the pages no other process maps.  Where another process has
    the same libraries loaded (any bcc tool, another tcpclose, the bench's own empty program),
    some 70 MB of their code stayed in this one's RSS (docs/overhead.md, "Another bcc tool's
    libraries in the tracer's RSS").  A mapping that cannot be written and holds no page of
    its own (no copy made on a write: smaps' Anonymous 0 kB) is nothing but the file's pages:
    MADV_DONTNEED takes them out of this process's page tables, the page cache keeps them for
    the others, and a touch reads them back as the first time.  A mapping with pages of its
    own (the relocated tables, made read-only after they were written) is left: those would
    be lost."""
    return_freed()
    if _MADVISE is None:
        return 0
    released = 0
    for mapping in compiler_mappings():
        size = mapping.end - mapping.start
        released += _MADVISE(mapping.start, size, MADV_PAGEOUT) == 0
        if "w" not in mapping.perms and mapping.own_kb == 0:
            _MADVISE(mapping.start, size, MADV_DONTNEED)
    return released


class Mapping(NamedTuple):
    """One mapping of a process, as /proc/PID/smaps gives it."""
    start: int
    end: int
    perms: str  # "r-xp", ...
    kb: dict[str, int]  # its figures in kB: "Size:", "Rss:", "Anonymous:", "Swap:", ...

    @property
    def own_kb(self) -> int:
        """kB of pages of its own: copied on a write (Anonymous), maybe swapped out since; -1: not known."""
        if "Anonymous:" not in self.kb or "Swap:" not in self.kb:
            return -1
        return self.kb["Anonymous:"] + self.kb["Swap:"]


def compiler_mappings(smaps: str = "/proc/self/smaps") -> list[Mapping]:
    """The compiler's libraries' mappings (COMPILER), of this process or another's smaps."""
    found: list[Mapping] = []
    current = None
    with open(smaps) as lines:
        for line in lines:
            fields = line.split()
            if not fields:
                continue
            if fields[0].endswith(":"):  # (a figure of the mapping above; VmFlags' are not a number)
                if current is not None and len(fields) >= 2 and fields[1].isdigit():
                    current.kb[fields[0]] = int(fields[1])
                continue
            current = None  # (a mapping's first line: its addresses, permissions, ..., its file)
            if len(fields) >= 6 and COMPILER.search(fields[5]):
                start, end = (int(x, 16) for x in fields[0].split("-"))
                current = Mapping(start, end, fields[1], {})
                found.append(current)
    return found
