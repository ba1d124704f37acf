"""Compiles and attaches the BPF program, and reads what it hands over.  With mapbatch,
the only module that imports bcc: everything else runs without it."""
from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import mmap
import os
from pathlib import Path

import numpy as np

from ..errors import BccMissing, HeadersMissing, TracepointMissing
from ..filters import Filters
from ..record import layout
from . import mapbatch, preflight
from .ringbuf import RingReader

MAX_SOCKS = 131072  # live sockets followed at once (~200 B each: 26 MiB); --max-sockets
MAX_SOCK_SLOT_BITS = 16  # at most 65 536 of them in the direct-mapped array (sock_slots, 160 B each: 10 MiB)
# Timewait sockets followed at once: up to 2^TW_SLOT_BITS in the direct-mapped tw_slots
# array (40 B each: 10 MiB), the rest in the tws map (~56 B each: 14 MiB), which alone holds
# 2x the default tcp_max_tw_buckets: slots are picked by address, so some go unused.
TW_SLOT_BITS = 18
MAX_TWS = 262144
# A timewait timer is armed for 60 s at most (TCP_TIMEWAIT_LEN: a tcp_fin_timeout beyond
# that is spent on the full socket, before the timewait socket exists).  A timewait followed
# (in a slot or in tws) armed, re-armed or cancelled longer ago than twice that will never
# see its timer again: its end went unseen (a skipped program run), so it is swept.
TW_STALE_AFTER_NS = 120 * 10**9
MAX_LISTENERS = 4096
MAX_PROCS = 16384  # --aggregates: owners counted (~88 B each: 1.4 MiB)
# tcpclose agent: owners with figures (416 B a CPU each: 13 MiB on 2 CPUs; those of processes
# gone are deleted, metrics.owners), and destinations with client TIME_WAITs (48 B a CPU)
MAX_FIGURES = MAX_HELD = 16384
RINGBUF_PAGES = 4096  # 16 MiB: ~100,000 records, two seconds of full churn for a drainer held up (run.drainer);
# mapped twice in a row (kernel.ringbuf), it counts twice in the tracer's RSS, but 8 MiB dropped 43,903 records
# in ten minutes of full churn where 16 MiB dropped none (docs/overhead.md)
TRANSITION_PAGES = 8192  # --transitions: 32 MiB, ~350 000 transitions, over a second of full churn


def socket_room(max_socks: int) -> list[str]:
    """The -D sizes that share max_socks between the program's two places for lives: half
    of them (a power of two, at most 2^MAX_SOCK_SLOT_BITS) in the sock_slots array, the
    rest in the socks LRU map (see the comment above sock_slots in the program)."""
    bits = min(MAX_SOCK_SLOT_BITS, (max_socks // 2).bit_length() - 1)
    return [f"-DSOCK_SLOT_BITS={bits}", f"-DMAX_SOCKS={max_socks - (1 << bits)}"]


def compile_flags(filters: Filters, tw_timer_fn: int | None = None, aggregates: bool = False,
                  transitions: bool = False, max_socks: int = MAX_SOCKS, figures: bool = False,
                  records: bool = True) -> list[str]:
    flags = [
        f"-I{layout.BPF_DIR}",
        *socket_room(max_socks),
        f"-DTW_SLOT_BITS={TW_SLOT_BITS}",
        f"-DMAX_TWS={MAX_TWS}",
        f"-DMAX_LISTENERS={MAX_LISTENERS}",
        f"-DRINGBUF_PAGES={RINGBUF_PAGES}",
        *filters.cflags(),
    ]
    if tw_timer_fn is not None:
        flags.append(f"-DTW_TIMER_FN={tw_timer_fn:#x}ULL")
    if aggregates:
        flags += ["-DAGGREGATES", f"-DMAX_PROCS={MAX_PROCS}"]
    if transitions:
        flags += ["-DTRANSITIONS", f"-DTRANSITION_PAGES={TRANSITION_PAGES}"]
    if figures:
        flags += ["-DFIGURES", f"-DMAX_FIGURES={MAX_FIGURES}", f"-DMAX_HELD={MAX_HELD}", *(["-DRECORDS"] if records else [])]
    return flags


def stale_timewaits(states: np.ndarray, now_ns: int, stale_after_ns: int) -> np.ndarray:
    """Which timewaits followed (struct tw_state) were last armed, re-armed or cancelled more than
    stale_after_ns before now_ns (both CLOCK_MONOTONIC, as bpf_ktime_get_ns)."""
    last = np.maximum.reduce([states["start_ns"], states["rearm_ns"], states["cancel_ns"]])
    return last.astype(np.int64) < now_ns - stale_after_ns


def program_stats(bpf) -> dict[str, dict[str, int]]:
    """Per program loaded in a bcc BPF object, from its fdinfo: recursion_misses (runs the
    kernel skipped because one of ours was already active on that CPU; Linux 5.12+), and
    run_time_ns and run_cnt, which the kernel counts only while BPF stats are enabled (see
    the bench's enable_bpf_stats), else 0."""
    out = {}
    for name, fn in bpf.funcs.items():
        try:
            info = Path(f"/proc/self/fdinfo/{fn.fd}").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
        out[name.decode()] = {key: int(fields[key]) for key in ("run_time_ns", "run_cnt", "recursion_misses")
                              if key in fields and fields[key].strip().isdigit()}
    return out


def _bcc_BPF():
    try:
        from bcc import BPF
    except ImportError as exc:
        raise BccMissing(
            f"bcc is not importable ({exc}): install python3-bpfcc ('sudo make setup') and run "
            "tcpclose from .venv, which is made with --system-site-packages"
        ) from None
    return BPF


class Program:
    """A BPF program given as C text, loaded and attached by bcc as it is (no flags, no
    maps read): the bench's empty program, the floor its measurements stand on."""

    def __init__(self, text: str):
        self._bpf = _bcc_BPF()(text=text)

    def program_stats(self) -> dict[str, dict[str, int]]:
        return program_stats(self._bpf)

    def close(self) -> None:
        self._bpf.cleanup()


class Probe:
    """The loaded program: poll() returns the raw records handed over since the last call.

    tw_timer_fn: tw_timer_handler's address, to follow timewait sockets through
    their timers; None leaves the timer tracepoints alone.  transitions: hand
    over every transition too (poll_transitions()).  figures: make each owner's figures
    in BPF (read_figures(), read_held()), handing over only the records user space
    still needs, or every one with `records`.
    """

    def __init__(self, filters: Filters, tw_timer_fn: int | None = None, aggregates: bool = False,
                 transitions: bool = False, max_socks: int = MAX_SOCKS, figures: bool = False, records: bool = True):
        preflight.check_privileges()
        preflight.check_tracepoints()
        preflight.check_headers()
        BPF = _bcc_BPF()
        try:
            self._bpf = BPF(text=layout.PROGRAM.read_bytes(),
                            cflags=compile_flags(filters, tw_timer_fn, aggregates, transitions, max_socks,
                                                 figures, records))
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
        if filters.comm is not None:  # before the programs see a life end
            comms = self._bpf[b"comm_filter"]
            name = comms.Leaf()
            name.comm = filters.comm.encode()[: layout.DEFINES["COMM_LEN"] - 1]
            comms[comms.Key(0)] = name
        self._maps: list[mmap.mmap] = []
        self._reader = self._ring(b"events", RINGBUF_PAGES, layout.EVENT_DTYPE)
        self._transitions = self._ring(b"transitions", TRANSITION_PAGES, layout.TRANSITION_DTYPE) if transitions else None
        self.follows_timewait = tw_timer_fn is not None
        self.aggregates = aggregates
        self.figures = figures

    def _ring(self, name: bytes, pages: int, sample: np.dtype) -> RingReader:
        """Read a ring buffer's memory directly (agent/ringbuf.py), not through bcc's per-record callback."""
        fd = self._bpf[name].map_fd
        page = mmap.PAGESIZE
        size = pages * page
        maps = [
            mmap.mmap(fd, page, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=0),
            mmap.mmap(fd, page + 2 * size, mmap.MAP_SHARED, mmap.PROT_READ, offset=page),
        ]
        self._maps += maps
        return RingReader(*maps, data_size=size, page_size=page, sample=sample)

    def poll(self):
        """Every record submitted since the last call, as a struct tcpclose_event array."""
        return self._reader.read()

    def poll_transitions(self, limit: int | None = None):
        """--transitions: the transitions submitted since the last call, the oldest `limit` of
        them at most (struct tcpclose_transition)."""
        return self._transitions.read(limit) if self._transitions else np.zeros(0, layout.TRANSITION_DTYPE)

    def open_lives(self) -> np.ndarray:
        """The records of the lives still followed (not yet ->CLOSE): the taken sock_slots
        (skaddr not 0) and the socks map's entries."""
        slots = mapbatch.read_map(self._bpf[b"sock_slots"])[1].view(layout.EVENT_DTYPE)
        mapped = mapbatch.read_map(self._bpf[b"socks"])[1].view(layout.EVENT_DTYPE)
        return np.concatenate([slots[slots["skaddr"] != 0], mapped])

    def process_counts(self) -> list[dict]:
        """--aggregates: the procs map, one dict per owner: pid (None: never learnt), comm,
        and the A_x counts by their lower-case names (lives, active, ..., timewait)."""
        if not self.aggregates:
            return []
        names = {v: k[2:].lower() for k, v in layout.DEFINES.items() if k.startswith("A_")}
        return [{"pid": key.pid or None, "comm": key.comm.decode(errors="replace"),
                 **{name: int(value.n[i]) for i, name in names.items()}}
                for key, value in self._bpf[b"procs"].items()]

    def read_figures(self) -> tuple[np.ndarray, np.ndarray]:
        """figures: every owner's key and its figures, one per CPU (layout.FIGURES_DTYPE,
        shape (owners, CPUs))."""
        keys, values = mapbatch.read_map(self._bpf[b"figures"])
        return keys, values.view(layout.FIGURES_DTYPE)  # (a per-CPU map: numpy makes the CPUs an axis)

    def read_held(self) -> tuple[np.ndarray, np.ndarray]:
        """figures: every destination's key and its client TIME_WAITs, one entry per CPU
        (layout.HELD_DTYPE, shape (destinations, CPUs))."""
        keys, values = mapbatch.read_map(self._bpf[b"held"])
        return keys, values.view(layout.HELD_DTYPE)

    def forget_figures(self, keys) -> None:
        """Delete these owners' entries from figures (their process is gone: metrics.owners)."""
        table = self._bpf[b"figures"]
        for key in keys:
            with contextlib.suppress(KeyError):
                del table[table.Key(key)]

    def seed_listeners(self, listeners) -> None:
        """Enter listeners that existed before tracing, so that their new children start with
        their owner: (family "ipv4"/"ipv6", local address, port, pid, comm, cgroup_id, members,
        shared) each (kernel.diag.listener_seeds)."""
        table = self._bpf[b"listeners"]
        for family, laddr, port, pid, comm, cgroup_id, members, shared in listeners:
            key = table.Key()
            key.family = 10 if family == "ipv6" else 2
            key.port = port
            packed = ipaddress.ip_address(laddr).packed
            ctypes.memmove(key.addr, packed, len(packed))
            leaf = table.Leaf()
            leaf.skaddr, leaf.pid, leaf.tid, leaf.cgroup_id = 0, pid, pid, cgroup_id
            leaf.comm = comm.encode()[: layout.DEFINES["COMM_LEN"] - 1]
            leaf.members, leaf.shared = members, int(shared)
            table[key] = leaf

    def _timewaits(self) -> tuple[np.ndarray, np.ndarray]:
        """Every timewait socket followed (struct tw_state each: the taken tw_slots, then the
        tws map's entries), and where each is: its slot's index, or -1 for the tws map."""
        slots = mapbatch.read_map(self._bpf[b"tw_slots"])[1]
        taken = np.flatnonzero(slots["timer"])
        mapped = mapbatch.read_map(self._bpf[b"tws"])[1]
        return np.concatenate([slots[taken], mapped]), np.concatenate([taken, np.full(len(mapped), -1)])

    def sweep_timewaits(self, now_ns: int, stale_after_ns: int = TW_STALE_AFTER_NS) -> np.ndarray:
        """Stop following the timewaits whose timer must have fired long ago (see
        TW_STALE_AFTER_NS): free their slot or delete their tws entry; return them (struct
        tw_state each: with figures, their owner and destination keys).  Each is read again
        just before, so that one whose end came meanwhile, or a new timewait that took its
        place, is kept."""
        if not self.follows_timewait:
            return np.zeros(0, [("owner", "<u8"), ("held", "<u8")])
        states, places = self._timewaits()
        stale = stale_timewaits(states, now_ns, stale_after_ns)
        slots, tws = self._bpf[b"tw_slots"], self._bpf[b"tws"]
        swept = []
        for at, timer, place in zip(np.flatnonzero(stale).tolist(), states["timer"][stale].tolist(),
                                    places[stale].tolist()):
            table, key = (slots, slots.Key(place)) if place >= 0 else (tws, tws.Key(timer))
            state = table.get(key)
            if state is None or state.timer != timer or not stale_timewaits(
                    np.frombuffer(bytes(state), states.dtype), now_ns, stale_after_ns)[0]:
                continue
            if place >= 0:
                table[key] = table.Leaf()  # timer 0: the slot is free
            else:
                try:
                    del table[key]
                except KeyError:  # its end came meanwhile
                    continue
            swept.append(at)
        return states[swept]

    def open_timewaits(self) -> np.ndarray:
        """The timewait sockets still followed (struct tw_state entries: decode.from_followed_timewaits
        reads them), those in tw_slots then those in tws."""
        if not self.follows_timewait:  # (no tw_slots or tws map was made)
            return np.zeros(0)
        return self._timewaits()[0]

    def counters(self) -> dict[str, int]:
        table = self._bpf[b"counters"]
        return {
            name: int(sum(table[ctypes.c_int(idx)])) for idx, name in layout.COUNTER_NAMES.items()
        }

    def program_stats(self) -> dict[str, dict[str, int]]:
        return program_stats(self._bpf)

    def close(self) -> None:
        self._bpf.cleanup()
        for m in self._maps:
            m.close()

