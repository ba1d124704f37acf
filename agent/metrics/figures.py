"""What tcpclose agent exports, kept up to date a batch of records at a time.

Each batch of raw records (as run.tracer.Tracer.drain returns them, never decoded: a busy host
hands over tens of thousands a second) adds to counters and histograms per workload: closes
by kind, TIME_WAITs made, TIME_WAIT ends by reason with their lifetimes, connection
durations; the TIME_WAITs alive wait for their end in metrics.pending.  The CLOSE_WAITs
open now come from the lives BPF follows (set_close_waits()).

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
import pandas as pd

from ..analysis import rules
from ..record import layout
from .pending import OTHER, Pending  # (OTHER: the workload label past max_workloads too)

# TIME_WAIT lifetime buckets: the 60 s of TCP_TIMEWAIT_LEN to the half second either side
# (a timer wheel expires a little late), and below it the FIN_WAIT2 substate (tcp_fin_timeout)
# and the TIME_WAITs killed or reused early
TIMEWAIT_BUCKETS = (0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 58.0, 59.5, 60.0, 60.5, 61.0, 62.0, 65.0, 90.0, 120.0)
DURATION_BUCKETS = (0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 60.0, 300.0, 3600.0)
RESET_WAIT_S = 1.0  # a reset record follows its life's close by microseconds; after this, none came
MAX_FOLDED_NAMES = 100_000  # the folded workloads' names kept to count them: a bound on that count too
TOP_DESTINATIONS = 10  # destinations exported by name; the rest are summed as "other"
# how a timewait's end record says it ended -> the reason exported.  The BPF side marks a
# cancel inside a connect() to the timewait's remote end as a reuse; any other cancel killed
# it (a SYN into a server-side TIME_WAIT, an RST, netns teardown), but for the rare reuse
# whose connect() moved to another CPU midway, which only `tcpclose trace`'s join finds
END_REASONS = {"expired": "expired", "reused": "reused", "cancelled": "killed"}
Owner = Callable[[int], "str | None"]  # pid -> its container, unit or process name (None: not known)


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
    held: dict = field(default_factory=dict)  # Destination (or (OTHER, OTHER)) -> client TIME_WAITs alive
    port_range: int | None = None  # ephemeral ports per destination (ip_local_port_range)
    lost: dict = field(default_factory=dict)  # what could not be seen -> n
    bpf: tuple[float, int] = (0.0, 0)  # the programs' run time (s) and runs, while kernel.bpf_stats_enabled
    pending: int = 0
    workloads_folded: int = 0
    updated_at: float = 0.0


class Figures:
    def __init__(self, max_workloads: int = 1000, follows_timewaits: bool = True, port_range: int | None = None,
                 top_destinations: int = TOP_DESTINATIONS):
        """follows_timewaits: the BPF side links each TIME_WAIT to its life (Tracer.timewait_method
        "timers"); without it no TIME_WAIT has a timer to miss (no close is counted unlinked).
        port_range: ip_local_port_range's size, for the headroom per destination."""
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
        self.pending = Pending()  # the TIME_WAITs alive: their workload, the ports they hold
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

    def _labels(self, raw: np.ndarray, owner: Owner) -> np.ndarray:
        """Each raw record's workload label, worked out once per distinct (owner known, pid,
        thread name) of the batch: `owner` names a pid's container, unit or process."""
        known = np.isin(raw["owner_src"], rules.OWNER_CODES_KNOWN)
        keys, first, codes = np.unique(raw["pid"].astype(np.int64) * 2 + known, return_index=True,
                                       return_inverse=True)
        labels = []
        for key, at in zip(keys.tolist(), first.tolist()):
            ok, pid = key & 1, key >> 1
            name = (owner(pid) or raw["comm"][at].split(b"\0", 1)[0].decode("utf-8", "replace")) if ok else ""
            labels.append(self._label(name or "unknown"))
        return np.array(labels, dtype=object)[codes.ravel()]

    def add(self, raw: np.ndarray, owner: Owner, now: float | None = None) -> None:
        """One batch of raw records (layout.EVENT_DTYPE, as Tracer.drain() returns them): the
        lives that ended and the TIME_WAITs that ended.  Nothing is decoded: a busy host hands
        over tens of thousands of records a second."""
        now = time.monotonic() if now is None else now
        self.timewait_ends.update((name, "unknown") for name, _ in self.pending.expire(now))  # ends lost
        lives = raw[raw["kind"] == layout.DEFINES["EV_LIFE"]]
        if len(lives):
            self._add_lives(lives, owner, now)
        ends = raw[raw["kind"] == layout.DEFINES["EV_TW_END"]]
        if len(ends):
            self._add_timewait_ends(ends)
        if self._unmade:
            self._settle_unmade(raw[raw["kind"] == layout.DEFINES["EV_RESET_SENT"]]["skaddr"], now)

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

    def _add_lives(self, lives: np.ndarray, owner: Owner, now: float) -> None:
        names = self._labels(lives, owner)
        kinds = rules.raw_initiators(lives)
        self.closes.update(zip(names.tolist(), kinds.tolist()))
        opened = lives["opened_ns"].astype(np.int64)
        durations = (lives["ts_ns"].astype(np.int64) - opened) / 1e9
        durations[(opened == 0) | ((lives["flags"] & layout.DEFINES["FLAG_PARTIAL"]) != 0)] = np.nan
        self._add_to_histograms(self.duration, DURATION_BUCKETS, names, durations)  # NaN: begun before the agent
        due = rules.timewait_due(kinds)
        made = due & (lives["tw_timer"] != 0)
        self.timewaits.update(names[made].tolist())
        self.pending.add(lives[made], names[made].tolist())
        if self.follows_timewaits:  # seen whole: first seen mid-life or its close skipped says nothing
            unsure = layout.DEFINES["FLAG_PARTIAL"] | layout.DEFINES["FLAG_MISSED_CLOSE"]
            unmade = due & (lives["tw_timer"] == 0) & ((lives["flags"] & unsure) == 0)
            self._unmade.update(zip(lives["skaddr"][unmade].tolist(), ((n, now) for n in names[unmade].tolist())))

    def _add_timewait_ends(self, ends: np.ndarray) -> None:
        found = self.pending.end(ends)
        seen = np.fromiter((f is not None for f in found), dtype=bool, count=len(found))
        if not seen.any():
            return
        names = np.array([f[0] for f in found if f is not None], dtype=object)
        how_names = layout.TW_END_NAMES
        reasons = [END_REASONS.get(how_names.get(how), "unknown") for how in ends["tw_end"][seen].tolist()]
        self.timewait_ends.update(zip(names.tolist(), reasons))
        lifetimes = (ends["ts_ns"][seen].astype(np.int64) - ends["tw_start_ns"][seen].astype(np.int64)) / 1e9
        self._add_to_histograms(self.timewait_lifetime, TIMEWAIT_BUCKETS, names, lifetimes)

    @staticmethod
    def _add_to_histograms(histograms: dict[str, Histogram], bounds: tuple, names: np.ndarray,
                           values: np.ndarray) -> None:
        """Each value (NaN: none) to its workload's histogram, in one pass over the batch
        however many workloads it holds."""
        ok = ~np.isnan(values)
        codes, labels = pd.factorize(names[ok])
        values = values[ok]
        width = len(bounds) + 1
        # bucket i holds bounds[i-1] < v <= bounds[i]: Prometheus' "le"
        cells = codes * width + np.searchsorted(bounds, values, side="left")
        counts = np.bincount(cells, minlength=len(labels) * width).reshape(len(labels), width)
        totals = np.bincount(codes, weights=values, minlength=len(labels))
        for name, row, total in zip(labels.tolist(), counts, totals.tolist()):
            histogram = histograms.get(name) or histograms.setdefault(name, Histogram(bounds))
            histogram.counts += row
            histogram.total += total

    def set_close_waits(self, open_lives: np.ndarray, owner: Owner, now_ns: int) -> None:
        """The CLOSE_WAITs open now per workload, and the age of the oldest, from the records of
        the lives BPF follows (Tracer.open_lives_now); now_ns: CLOCK_MONOTONIC, as their times."""
        waiting = open_lives[open_lives["last_state"] == layout.DEFINES["TCP_CLOSE_WAIT"]]
        names = self._labels(waiting, owner) if len(waiting) else np.array([], dtype=object)
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
            held=self.pending.busiest(self.top_destinations), port_range=self.port_range, bpf=self.bpf,
            timewait_lifetime={k: (h.cumulative(), h.total) for k, h in self.timewait_lifetime.items()},
            duration={k: (h.cumulative(), h.total) for k, h in self.duration.items()},
            close_waits=dict(self.close_waits), lost=dict(self.lost), pending=len(self.pending),
            workloads_folded=len(self._folded), updated_at=time.time())
