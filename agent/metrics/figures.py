"""What tcpclose agent exports, kept up to date from what the BPF side makes.

The BPF program (FIGURES) counts each owner's closes by kind, connection durations,
TIME_WAITs made and their ends by reason with their lifetimes (metrics.owners sums them per
workload), and the client TIME_WAITs alive per destination: at full churn that is ~60,000
lives a second that never reach user space.  The records that still come are the few it
needs to look at: a close due a TIME_WAIT whose timer was not seen, and the resets sent
after a close.  The CLOSE_WAITs open now come from the lives BPF follows (set_close_waits()).

The workload of an owner is its container, else its systemd unit, else its process name
(kernel.cgroups); past `max_workloads` of them, new ones are counted under "other".  The
ports the TIME_WAITs alive hold are exported for the busiest `top_destinations`, with the
headroom they leave in the ephemeral range.

A close that was due to leave a TIME_WAIT, and whose timewait timer was not seen (once the
next records show no reset sent on that socket: an orphan given up with a reset never gets a
TIME_WAIT), got none because tcp_max_tw_buckets was reached, or had one whose timer event the
BPF side missed (a program the kernel skipped, a task moved to another CPU at that moment).
The two cannot be told apart from the records: such closes are counted per workload as
"unlinked", and the kernel's own count of overflows (TcpExt TCPTimeWaitOverflow, summed over
the network namespaces) beside them.
"""
from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..analysis import rules
from ..record import layout
from ..record.decode import address_text
from . import owners as of
from .owners import OwnerTotals

OTHER = "other"  # the workload label past max_workloads, and the destinations past the busiest
# histogram buckets in seconds, from the BPF side's bounds (bpf/tcpclose.h says why these)
TIMEWAIT_BUCKETS = tuple(us / 1e6 for us in layout.LISTS["TW_BOUNDS_US"])
DURATION_BUCKETS = tuple(us / 1e6 for us in layout.LISTS["DURATION_BOUNDS_US"])
RESET_WAIT_S = 1.0  # a reset record follows its life's close by microseconds; after this, none came
MAX_FOLDED_NAMES = 100_000  # the folded workloads' names kept to count them: a bound on that count too
TOP_DESTINATIONS = 10  # destinations exported by name; the rest are summed as "other"
# how a timewait ended (tw_end[TW_x] of the figures) -> the reason exported.  The BPF side
# marks a cancel inside a connect() to the timewait's remote end as a reuse; any other
# cancel killed it (a SYN into a server-side TIME_WAIT, an RST, netns teardown), but for the
# rare reuse whose connect() moved to another CPU midway, which only `tcpclose trace`'s join
# finds.  A replaced one's end went unseen; so did a swept one's.  ([0] is never counted.)
END_REASONS = {0: "unknown", layout.DEFINES["TW_EXPIRED"]: "expired", layout.DEFINES["TW_REUSED"]: "reused",
               layout.DEFINES["TW_CANCELLED"]: "killed", layout.DEFINES["TW_REPLACED"]: "unknown"}
# the close kinds counted (A_x of bpf/tcpclose.h, as rules.INITIATORS names them)
CLOSE_KINDS = {layout.DEFINES["A_" + kind.upper()]: kind for kind in rules.INITIATORS if kind != "open"}
Namer = Callable[[np.ndarray, np.ndarray], list]  # (pids, cgroup ids) -> their container, unit or process name


@dataclass
class Histogram:
    """Counts per bucket (the last: above every bound), and the sum of the values."""
    bounds: tuple[float, ...]
    counts: np.ndarray = None
    total: float = 0.0

    def __post_init__(self):
        if self.counts is None:
            self.counts = np.zeros(len(self.bounds) + 1, dtype=np.int64)

    def cumulative(self) -> list[tuple[str, int]]:
        """[(le, count of values <= le)], +Inf last, as the exposition format has them."""
        counts = np.cumsum(self.counts).tolist()
        return [*((f"{b:g}", c) for b, c in zip(self.bounds, counts)), ("+Inf", counts[-1])]


@dataclass
class Snapshot:
    """What a scrape shows: copied from Figures after each batch, never computed by a scrape."""
    closes: dict = field(default_factory=dict)  # (workload, kind) -> n
    timewaits: dict = field(default_factory=dict)  # workload -> made
    timewait_ends: dict = field(default_factory=dict)  # (workload, reason) -> n
    timewait_lifetime: dict = field(default_factory=dict)  # workload -> (cumulative buckets, sum)
    duration: dict = field(default_factory=dict)
    close_waits: dict = field(default_factory=dict)  # workload -> (open now, oldest age s)
    unlinked: dict = field(default_factory=dict)  # workload -> closes due a TIME_WAIT whose timer was not seen
    kernel_overflows: int = 0  # TCPTimeWaitOverflow, over the network namespaces, since the agent started
    held: dict = field(default_factory=dict)  # (source, destination) (or (OTHER, OTHER)) -> client TIME_WAITs alive
    port_range: int | None = None  # ephemeral ports per destination (ip_local_port_range)
    lost: dict = field(default_factory=dict)  # what could not be seen -> n
    bpf: tuple[float, int] = (0.0, 0)  # the programs' run time (s) and runs, while kernel.bpf_stats_enabled
    pending: int = 0
    lives_followed: int = 0
    workloads_folded: int = 0
    updated_at: float = 0.0


class Figures:
    def __init__(self, max_workloads: int = 1000, follows_timewaits: bool = True, port_range: int | None = None,
                 top_destinations: int = TOP_DESTINATIONS, namer: Namer | None = None):
        """follows_timewaits: the BPF side links each TIME_WAIT to its life (Tracer.timewait_method
        "timers"); without it no TIME_WAIT has a timer to miss (no close is counted unlinked).
        port_range: ip_local_port_range's size, for the headroom per destination.
        namer: the container, unit or process name of owners (run.owners.Owners.workloads_of)."""
        self.max_workloads = max_workloads
        self.follows_timewaits = follows_timewaits
        self.port_range = port_range
        self.top_destinations = top_destinations
        self._workloads: set[str] = set()
        self._folded: set[str] = set()
        self.closes: Counter = Counter()
        self.timewaits: Counter = Counter()
        self.timewait_ends: Counter = Counter()
        self.timewait_lifetime: dict[str, Histogram] = {}
        self.duration: dict[str, Histogram] = {}
        self.close_waits: dict[str, tuple[int, float]] = {}
        self.lost: dict[str, int] = {}
        self.bpf: tuple[float, int] = (0.0, 0)
        self.unlinked: Counter = Counter()
        self.kernel_overflows = 0
        self._overflows_seen: dict[str, int] | None = None  # network namespace -> its TCPTimeWaitOverflow last read
        self._namer = namer or (lambda pids, cgroup_ids: [None] * len(pids))
        self.owners = OwnerTotals(self._owner_labels)
        self.held: dict = {}  # (source, destination) -> client TIME_WAITs alive
        self.pending = 0  # TIME_WAITs followed in BPF, not ended yet
        self.lives_followed = 0  # socket lives followed in BPF, their ->CLOSE not seen yet
        self._swept_held: Counter = Counter()  # destination key -> TIME_WAITs of it swept (never ended)
        # socket address -> (workload, when): closes due a TIME_WAIT that got no timer, until
        # RESET_WAIT_S shows no reset followed them
        self._unmade: dict[int, tuple[str, float]] = {}

    def _label(self, name: str) -> str:
        """A workload's label, or OTHER past max_workloads (counted in workloads_folded)."""
        if name in self._workloads:
            return name
        if len(self._workloads) < self.max_workloads:
            self._workloads.add(name)
            return name
        if len(self._folded) < MAX_FOLDED_NAMES:
            self._folded.add(name)
        return OTHER

    def _owner_labels(self, owners: np.ndarray) -> list[str]:
        """The workload label of owners (pid, cgroup_id, comm; pid 0: never learnt)."""
        known = owners["pid"] != 0
        names = iter(self._namer(owners["pid"][known], owners["cgroup_id"][known]) if known.any() else ())
        return [self._label(((next(names) or comm.split(b"\0", 1)[0].decode("utf-8", "replace")) if pid else "")
                            or "unknown") for pid, comm in zip(owners["pid"].tolist(), owners["comm"].tolist())]

    def _labels(self, raw: np.ndarray) -> np.ndarray:
        """Each raw record's workload label, as _owner_labels() names the owners of the figures."""
        owners = np.zeros(len(raw), [("pid", "<u4"), ("cgroup_id", "<u8"), ("comm", "S16")])
        owners["pid"] = np.where(np.isin(raw["owner_src"], rules.OWNER_CODES_KNOWN), raw["pid"], 0)
        owners["cgroup_id"], owners["comm"] = raw["cgroup_id"], raw["comm"]
        return np.array(self._owner_labels(owners), dtype=object)

    def add(self, raw: np.ndarray, now: float | None = None) -> None:
        """One batch of raw records (layout.EVENT_DTYPE, as Tracer.drain()'s parts joined): of
        the lives, only the closes due a TIME_WAIT whose timer was not seen are looked at (the
        BPF side counted the rest); the resets sent say which of them got none for that reason."""
        now = time.monotonic() if now is None else now
        lives = raw[raw["kind"] == layout.DEFINES["EV_LIFE"]]
        if len(lives) and self.follows_timewaits:  # seen whole: first seen mid-life or its close skipped says nothing
            unsure = layout.DEFINES["FLAG_PARTIAL"] | layout.DEFINES["FLAG_MISSED_CLOSE"]
            due = rules.raw_timewaits_due(lives)
            unmade = lives[due & (lives["tw_timer"] == 0) & ((lives["flags"] & unsure) == 0)]
            names = self._labels(unmade) if len(unmade) else []
            self._unmade.update(zip(unmade["skaddr"].tolist(), ((n, now) for n in list(names))))
        if self._unmade:
            self._settle_unmade(raw[raw["kind"] == layout.DEFINES["EV_RESET_SENT"]]["skaddr"], now)

    def add_owner_figures(self, keys: np.ndarray, values: np.ndarray, now: float | None = None) -> list[int]:
        """A read of the BPF side's figures map (Probe.read_figures: cumulative, per owner and
        CPU) made the counters and histograms per workload; returns the owners to delete from
        the map (metrics.owners)."""
        totals, gone = self.owners.totals(keys, values, now)
        closes, timewaits, ends = Counter(), Counter(), Counter()
        lifetimes, durations = {}, {}
        for name, counts in totals.items():
            for code, kind in CLOSE_KINDS.items():
                if counts[of.N.start + code]:
                    closes[name, kind] += int(counts[of.N.start + code])
            if counts[of.TW_FOLLOWED.start]:
                timewaits[name] += int(counts[of.TW_FOLLOWED.start])
            for code, n in enumerate(counts[of.TW_END].tolist()):
                if n:
                    ends[name, END_REASONS[code]] += n
            if counts[of.TW_LIFE].any():
                lifetimes[name] = Histogram(TIMEWAIT_BUCKETS, counts[of.TW_LIFE].astype(np.int64),
                                            int(counts[of.TW_LIFE_US.start]) / 1e6)
            if counts[of.DURATION].any():
                durations[name] = Histogram(DURATION_BUCKETS, counts[of.DURATION].astype(np.int64),
                                            int(counts[of.DURATION_US.start]) / 1e6)
        self.closes, self.timewaits, self.timewait_ends = closes, timewaits, ends
        self.timewait_lifetime, self.duration = lifetimes, durations
        return gone

    def note_swept(self, states: np.ndarray) -> None:
        """Timewaits the BPF side followed and swept as stale (Probe.sweep_timewaits): their
        end went unseen (unknown, for their owner), and their port is free."""
        self.owners.note_unseen_ends(states["owner"])
        self._swept_held.update(k for k in states["held"].tolist() if k)

    def set_held(self, keys: np.ndarray, values: np.ndarray, followed: int) -> None:
        """The client TIME_WAITs alive per destination (Probe.read_held), less those swept,
        and how many TIME_WAITs are followed now (`followed`)."""
        counts = values["n"].sum(axis=1) - np.array([self._swept_held.get(k, 0) for k in keys.tolist()], dtype=np.int64)
        maker = np.argmax(values["family"] != 0, axis=1) if len(values) else np.zeros(0, int)
        dest = values[np.arange(len(values)), maker]
        held: Counter = Counter()
        for at in np.flatnonzero(counts > 0).tolist():
            family, local, remote = int(dest["family"][at]), dest["saddr"][at].view("<u8"), dest["daddr"][at].view("<u8")
            raddr = address_text(family, *remote.tolist())
            port = int(dest["dport"][at])
            held[address_text(family, *local.tolist()), f"[{raddr}]:{port}" if ":" in raddr else f"{raddr}:{port}"] += \
                int(counts[at])
        out = dict(held.most_common(self.top_destinations))
        rest = sum(held.values()) - sum(out.values())
        if rest:
            out[(OTHER, OTHER)] = rest
        self.held, self.pending = out, max(0, followed)

    def _settle_unmade(self, resets: np.ndarray, now: float) -> None:
        """Closes due a TIME_WAIT with no timer seen: a reset sent after the close explains
        it; none within RESET_WAIT_S, it is counted as unlinked."""
        for skaddr in resets.tolist():
            self._unmade.pop(skaddr, None)
        settled = []
        for skaddr, (name, at) in self._unmade.items():  # in the order they came
            if now - at < RESET_WAIT_S:
                break
            settled.append(skaddr)
            self.unlinked[name] += 1
        for skaddr in settled:
            del self._unmade[skaddr]

    def note_kernel_counters(self, by_netns: dict[str, dict]) -> None:
        """The TcpExt counters of every network namespace (procfs.all_tcp_counters): their
        TIME_WAIT overflows since the first reading (a namespace made later counts from 0;
        one removed takes nothing back)."""
        now = {ns: entry["counters"].get("TCPTimeWaitOverflow", 0) for ns, entry in by_netns.items()}
        if self._overflows_seen is not None:
            self.kernel_overflows += sum(max(0, n - self._overflows_seen.get(ns, 0)) for ns, n in now.items())
        self._overflows_seen = now

    def set_close_waits(self, open_lives: np.ndarray, now_ns: int) -> None:
        """The CLOSE_WAITs open now per workload, and the age of the oldest, from the records of
        the lives BPF follows (Tracer.open_lives_now); now_ns: CLOCK_MONOTONIC, as their times."""
        waiting = open_lives[open_lives["last_state"] == layout.DEFINES["TCP_CLOSE_WAIT"]]
        names = self._labels(waiting)
        since = waiting["close_wait_ns"].astype(np.int64)
        ages = np.where(since > 0, (now_ns - since) / 1e9, np.nan)
        out = {}
        for name in set(names.tolist()):
            mine = ages[names == name]
            out[name] = (int(len(mine)), float(np.nanmax(mine)) if np.isfinite(mine).any() else 0.0)
        self.close_waits = out

    def snapshot(self) -> Snapshot:
        return Snapshot(
            closes=dict(self.closes), timewaits=dict(self.timewaits), timewait_ends=dict(self.timewait_ends),
            # for every workload that closes first (0 where none)
            unlinked={name: self.unlinked[name] for name in {*self.timewaits, *self.unlinked}},
            kernel_overflows=self.kernel_overflows,
            held=dict(self.held), port_range=self.port_range, bpf=self.bpf,
            timewait_lifetime={k: (h.cumulative(), h.total) for k, h in self.timewait_lifetime.items()},
            duration={k: (h.cumulative(), h.total) for k, h in self.duration.items()},
            close_waits=dict(self.close_waits), lost=dict(self.lost), pending=self.pending,
            lives_followed=self.lives_followed,
            workloads_folded=len(self._folded), updated_at=time.time())
