"""run.memory.release_compiler: the compiler's libraries' pages out of the tracer's RSS once the
program is loaded, those another process maps too included, and no page of its own lost."""
import ctypes
import mmap
import subprocess
import sys

import pytest

from agent.run import memory

PAGES = 256  # 1 MiB of a made-up compiler library


def rss_kb(start: int) -> tuple[int, int]:
    """(Rss, Anonymous) in kB of this process's mapping of the made-up library that begins at `start`."""
    [mapping] = [m for m in memory.compiler_mappings() if m.start == start]
    return mapping.kb["Rss:"], mapping.kb["Anonymous:"]


def address(mapping: mmap.mmap) -> int:
    view = ctypes.c_char.from_buffer(mapping)
    try:
        return ctypes.addressof(view)
    finally:
        del view


@pytest.fixture
def library(tmp_path):
    """A file named as LLVM's library is (memory.COMPILER), in the page cache, mapped and
    touched by another process as long as the test runs: its pages are mapped twice."""
    path = tmp_path / "libLLVM-99.so.1"
    path.write_bytes(bytes(range(256)) * (PAGES * mmap.PAGESIZE // 256))
    other = subprocess.Popen([sys.executable, "-c", f"""
import mmap, sys
with open({str(path)!r}, "rb") as f:
    m = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
    total = sum(m[i] for i in range(0, len(m), mmap.PAGESIZE))
    print("mapped", flush=True)
    sys.stdin.read()
"""], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout.readline() == "mapped\n"
        yield path
    finally:
        other.stdin.close()
        other.wait(timeout=10)


def touched(path, writable: bool = False) -> mmap.mmap:
    with open(path, "rb") as f:
        prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
        mapping = mmap.mmap(f.fileno(), 0, flags=mmap.MAP_PRIVATE, prot=prot)
    assert sum(mapping[i] for i in range(0, len(mapping), mmap.PAGESIZE)) >= 0  # every page read in
    return mapping


@pytest.mark.skipif(memory._MADVISE is None, reason="no madvise in this C library")
def test_a_library_another_process_maps_too_leaves_the_tracers_rss(library):
    """MADV_PAGEOUT reclaims only pages one process maps: another bcc tool on the host kept some
    70 MB of LLVM's and clang's code in the tracer's RSS.  Fails without MADV_DONTNEED."""
    mapping = touched(library)
    start = address_of_read_only(library)
    assert rss_kb(start)[0] >= PAGES * mmap.PAGESIZE // 1024 * 0.9
    assert memory.release_compiler() >= 1
    assert rss_kb(start)[0] == 0
    assert mapping[5 * mmap.PAGESIZE + 7] == 7  # read again from the file, as it was


@pytest.mark.skipif(memory._MADVISE is None, reason="no madvise in this C library")
def test_a_read_only_mapping_with_pages_of_its_own_keeps_them(library):
    """Relocated tables are written, then made read-only: their pages are the process's own
    (smaps' Anonymous), not the file's, and MADV_DONTNEED would put the file's back in their
    place.  Such a mapping is left alone."""
    mapping = touched(library, writable=True)
    mapping[0:4] = b"mine"
    start = address(mapping)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    assert libc.mprotect(start, len(mapping), mmap.PROT_READ) == 0
    assert [m.perms for m in memory.compiler_mappings() if m.start == start] == ["r--p"]
    assert rss_kb(start)[1] >= 4
    memory.release_compiler()
    assert mapping[0:4] == b"mine" and mapping[5 * mmap.PAGESIZE + 7] == 7


def address_of_read_only(path) -> int:
    """A read-only mmap's address (ctypes takes a buffer only from a writable object): that of
    the one mapping of `path` in this process."""
    with open("/proc/self/maps") as maps:
        found = [int(fields[0].split("-")[0], 16) for fields in map(str.split, maps)
                 if fields[-1] == str(path)]
    assert len(found) == 1, found
    return found[0]


def test_the_compilers_mappings_are_read_with_their_own_pages(tmp_path):
    """compiler_mappings() on a made-up smaps: only LLVM's and clang's, each with its Anonymous
    and Swap kB; one whose figures are not both there is not known (-1), never taken for 0."""
    smaps = tmp_path / "smaps"
    smaps.write_text(
        "7f0000000000-7f0000100000 r-xp 00000000 fe:00 1 /usr/lib/x86_64-linux-gnu/libLLVM-14.so.1\n"
        "Rss: 400 kB\nAnonymous: 0 kB\nSwap: 0 kB\nVmFlags: rd ex mr mw me\n"
        "7f0000100000-7f0000104000 r--p 00100000 fe:00 1 /usr/lib/x86_64-linux-gnu/libLLVM-14.so.1\n"
        "Anonymous: 8 kB\nSwap: 4 kB\n"
        "7f0000200000-7f0000300000 r-xp 00000000 fe:00 2 /usr/lib/libpython3.11.so.1.0\n"
        "Anonymous: 0 kB\nSwap: 0 kB\n"
        "7f0000300000-7f0000400000 r-xp 00000000 fe:00 3 /usr/lib/llvm-14/lib/libclang-cpp.so.14\n"
        "Anonymous: 0 kB\n")
    found = memory.compiler_mappings(str(smaps))
    assert [(m.start, m.end, m.perms, m.own_kb) for m in found] == [
        (0x7f0000000000, 0x7f0000100000, "r-xp", 0), (0x7f0000100000, 0x7f0000104000, "r--p", 12),
        (0x7f0000300000, 0x7f0000400000, "r-xp", -1)]
    assert found[0].kb == {"Rss:": 400, "Anonymous:": 0, "Swap:": 0}  # (VmFlags: not a figure)
