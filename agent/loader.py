"""Loads the BPF program and reads what it hands over.  The only module that imports bcc."""
from __future__ import annotations

import ctypes
import mmap
import os
from pathlib import Path

from . import layout
from .errors import BccMissing, HeadersMissing, NotRoot, TracepointMissing
from .filters import Filters
from .ringbuf import RingReader

TRACEFS_ROOTS = (Path("/sys/kernel/tracing"), Path("/sys/kernel/debug/tracing"))
TRACEPOINTS = ("sock/inet_sock_set_state", "tcp/tcp_send_reset", "tcp/tcp_receive_reset")
MODULES_DIR = Path("/lib/modules")

MAX_SOCKS = 131072  # live sockets followed at once (~128 B each: 16 MiB)
MAX_LISTENERS = 4096
RINGBUF_PAGES = 4096  # 16 MiB: ~120 000 records, seconds of full churn between two reads


def check_privileges() -> None:
    if os.geteuid() != 0:
        raise NotRoot("tracing needs root (CAP_BPF and CAP_PERFMON): run it with sudo")


def check_tracepoints() -> None:
    roots = [root for root in TRACEFS_ROOTS if (root / "events").is_dir()]
    if not roots:
        raise TracepointMissing(
            "tracefs is not mounted: run 'sudo mount -t tracefs nodev /sys/kernel/tracing' (or 'sudo make setup')"
        )
    for tp in TRACEPOINTS:
        if not (roots[0] / "events" / tp).is_dir():
            raise TracepointMissing(
                f"this kernel has no tracepoint {tp.replace('/', ':')}: tcpclose needs Linux 4.16 or later "
                "(use the VM in vagrant/)"
            )


def check_headers() -> None:
    release = os.uname().release
    build = MODULES_DIR / release / "build"
    if not build.exists():
        raise HeadersMissing(
            f"no kernel headers at {build}: install linux-headers-{release}, "
            "or run 'sudo make setup' to link the nearest distribution headers"
        )


def compile_flags(filters: Filters) -> list[str]:
    return [
        f"-I{layout.BPF_DIR}",
        f"-DMAX_SOCKS={MAX_SOCKS}",
        f"-DMAX_LISTENERS={MAX_LISTENERS}",
        f"-DRINGBUF_PAGES={RINGBUF_PAGES}",
        *filters.cflags(),
    ]


class Probe:
    """The loaded program: poll() returns the raw records handed over since the last call."""

    def __init__(self, filters: Filters):
        check_privileges()
        check_tracepoints()
        check_headers()
        try:
            from bcc import BPF
        except ImportError as exc:
            raise BccMissing(
                f"bcc is not importable ({exc}): install python3-bpfcc ('sudo make setup') and run "
                "tcpclose from .venv, which is made with --system-site-packages"
            ) from None
        try:
            self._bpf = BPF(text=layout.PROGRAM.read_bytes(), cflags=compile_flags(filters))
        except Exception as exc:  # bcc raises a bare Exception for both failures
            if "Failed to compile" in str(exc):
                raise HeadersMissing(
                    f"the BPF program did not compile (clang's errors are above): check the kernel "
                    f"headers in /lib/modules/{os.uname().release}/build ('sudo make setup')"
                ) from None
            raise TracepointMissing(
                f"the kernel refused the BPF program ({exc}): tcpclose needs Linux 5.8 or later "
                "with BPF ring buffers (use the VM in vagrant/)"
            ) from None
        port_map = self._bpf[b"port_filter"]
        for port, bits in filters.port_filter().items():
            port_map[ctypes.c_int(port)] = ctypes.c_uint8(bits)
        # read the ring buffer's memory directly (agent/ringbuf.py), not through bcc's per-record callback
        fd = self._bpf[b"events"].map_fd
        page = mmap.PAGESIZE
        size = RINGBUF_PAGES * page
        self._maps = [
            mmap.mmap(fd, page, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=0),
            mmap.mmap(fd, page + 2 * size, mmap.MAP_SHARED, mmap.PROT_READ, offset=page),
        ]
        self._reader = RingReader(*self._maps, data_size=size, page_size=page)

    def poll(self):
        """Every record submitted since the last call, as a struct tcpclose_event array."""
        return self._reader.read()

    def open_lives(self) -> bytes:
        """The records of the lives still in the socks map (not yet ->CLOSE)."""
        return b"".join(bytes(value) for value in self._bpf[b"socks"].values())

    def counters(self) -> dict[str, int]:
        table = self._bpf[b"counters"]
        return {
            name: int(sum(table[ctypes.c_int(idx)])) for idx, name in layout.COUNTER_NAMES.items()
        }

    def recursion_misses(self) -> int:
        """Runs of our programs the kernel skipped because one was already active on that CPU.

        Read from the programs' fdinfo (Linux 5.12+; 0 where the kernel does not say).
        """
        total = 0
        for fn in self._bpf.funcs.values():
            try:
                info = Path(f"/proc/self/fdinfo/{fn.fd}").read_text()
            except OSError:
                continue
            for line in info.splitlines():
                if line.startswith("recursion_misses:"):
                    total += int(line.split()[1])
        return total

    def close(self) -> None:
        self._bpf.cleanup()
        for m in self._maps:
            m.close()

