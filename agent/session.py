"""A tracing run: load the probe, poll it in batches, decode, record, and account at the end."""
from __future__ import annotations

import os
import signal
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from . import aggregate, kernel, layout, records, sockets, spool, transitions
from .errors import Abandoned, TracepointMissing
from .filters import Filters
from .progress import Progress

POLL_INTERVAL_S = 0.1
TW_SWEEP_EVERY_S = 30.0  # timewaits followed that went stale are dropped this often (Probe.sweep_timewaits)
# What analysing a run costs at its end, per row to analyse (a BPF record in the spool,
# or a row already decoded: the timewaits and lives still open, the snapshots): the
# decoded events, the connections and the figures made from them.  Measured on the
# development VM (Intel host) at 46 000 connections/s: a peak of 5.4 GiB for 8.1 M rows
# (60 s), 11.0 GiB for 17.0 M (120 s), 0.70 kB a row either way; 0.9 kB leaves a margin.
ANALYSIS_BYTES_PER_RECORD = 900
ANALYSIS_SHARE_OF_MEMORY = 0.8  # of MemAvailable, for a run analysed whole
SPOOL_BATCH = 1_000_000  # records decoded at a time when the run is only counted
# From this many records, the end of a run is announced: its analysis and files take
# about 33 us a record on the development VM's AMD host (10.2 s for 308 334) and 13 us
# on its Intel host (108 s for 8.1 M), some 3 to 7 s here.
LONG_END_RECORDS = 200_000


def announce_long_end(records: int, announce: Callable[[str], None] | None) -> None:
    """Tell the user, from LONG_END_RECORDS records on, that the files will take a while."""
    if announce and records >= LONG_END_RECORDS:
        announce(f"analysing {records:,} records and writing the files; this takes a while "
                 "(Ctrl-C twice abandons it)")


class Tracer:
    """The live side of a run.  drain() hands back what arrived; finish() ends the run."""

    def __init__(self, filters: Filters, record_path: Path | None = None, timewait: str = "auto",
                 netns: Path | None = None, aggregates: bool = False, transitions_to: Path | str | None = None,
                 max_socks: int | None = None):
        """timewait: how TIME_WAIT ends are measured: "timers" (BPF on the timer
        tracepoints), "diag" (sock_diag polls, this namespace only), "none", or
        "auto" (timers where the kernel allows, else diag).
        netns: the network namespace whose sockets and counters are read (sock_diag,
        TcpExt); None: tcpclose's own.  The tracepoints see every namespace.
        aggregates: count each life for its owner in BPF, with no record per life
        (run["aggregates"]); TIME_WAITs are then counted, not timed.
        transitions_to: write every transition there as CSV ("-": stdout), with
        what was lost in run["transitions"].
        max_socks: socket lives followed at once in BPF (None: loader.MAX_SOCKS)."""
        from . import loader  # the bcc import happens there, not at module import

        loader.check_privileges()  # before any output file is made
        self.filters = filters
        if aggregates:  # nothing per life reaches user space, so there is no life to join an end to
            timewait, tw_fn, why = "none", None, "--aggregates: per-process counts only"
        elif timewait in ("none", "diag"):
            tw_fn, why = None, f"--timewait {timewait}"
        else:
            tw_fn, why = loader.tw_timer_address()
        if tw_fn is None and timewait == "timers":
            raise TracepointMissing(f"cannot follow TIME_WAIT timers: {why}; use --timewait auto")
        method = "timers" if tw_fn is not None else "none" if timewait == "none" else "diag"
        self.timewait = {"timewait_method": method, "timewait_method_why": why}
        self.netns = netns
        self.netns_id = kernel.netns_id_of(netns) if netns else kernel.netns_id()
        self._watch = sockets.TimewaitWatch(netns) if method == "diag" else None
        self.hz = kernel.hz()
        self._tcpext_start = kernel.all_timewait_counters()
        # the port range and TIME_WAIT sysctls, for port pressure and the findings
        self._sysctls = kernel.sysctls(netns)
        self._netns_of: dict[int, str | None] = {}
        # bpf_ktime_get_ns() reads CLOCK_MONOTONIC; the outputs use epoch seconds
        self._offset_ns = time.time_ns() - time.monotonic_ns()
        # the output files first: a path that cannot be written fails before the compile
        self._recorder = records.Recorder(record_path) if record_path else None
        self._transitions = transitions.Writer(transitions_to, self._offset_ns) if transitions_to else None
        self._spool = spool.Spool(layout.EVENT_DTYPE)  # the BPF records until the end, on disk
        self._probe = loader.Probe(filters, tw_timer_fn=tw_fn, aggregates=aggregates,
                                   transitions=transitions_to is not None, max_socks=max_socks or loader.MAX_SOCKS)
        # what arrived, in order: BPF records as spans of the spool (raw, on disk), frames
        # made from sock_diag as they are
        self._parts: list[range | pd.DataFrame] = []
        self.tally = {"lives": 0, "timewaits": 0}  # for the progress line
        self.timewaits_swept = 0
        self._swept_at = time.monotonic()
        self.started_at = time.time()
        self._snapshot_at_start()

    def _keep(self, part: np.ndarray | pd.DataFrame) -> None:
        """Keep what arrived.  BPF records go to the spool raw, and finish() decodes them
        all at once: the tracer's memory stays flat however long it runs, and nothing is
        decoded while the traced workload runs.  A recording is written as it goes, so
        with one the batch is also decoded now for the recording."""
        if not len(part):
            return
        if self._recorder:
            self._recorder.write(self._decoded(part) if isinstance(part, np.ndarray) else part)
        self._parts.append(self._spool.append(part) if isinstance(part, np.ndarray) else part)

    def _decoded(self, raw: np.ndarray) -> pd.DataFrame:
        frame = records.decode(raw, self._offset_ns, self.hz)
        frame["netns"] = frame["pid"].map(self._netns_of).to_numpy(object)
        return frame

    def _events(self) -> pd.DataFrame:
        """Every part kept, decoded, in arrival order; the spool is emptied."""
        frames = spool.in_order(self._parts, self._spool.read(), self._decoded)
        self._parts = []
        self._spool.close()
        return records.concat(frames)

    def _snapshot_at_start(self) -> None:
        """What tracing cannot see: the sockets that were there before it began.

        Taken once the probe is attached, so that a socket closing meanwhile shows
        in both (and is merged), not in neither.  Listeners go into the BPF side,
        so that their new children start with their owner."""
        listening = sockets.snapshot(Filters(), ("LISTEN",), self.netns)
        self._probe.seed_listeners((int(r.lport), int(r.pid), r.comm, int(r.cgroup_id))
                                   for r in listening.itertuples() if not pd.isna(r.pid))
        existing = sockets.snapshot(self.filters, netns=self.netns)
        self._keep(records.from_snapshot(existing, "existing", time.time(), self.netns_id))

    def _learn_owners_netns(self, raw: np.ndarray) -> None:
        """Learn the network namespace of each new owner from its /proc entry, while it is alive.

        One readlink per new pid; a process gone before this drain stays unknown."""
        owned = raw["pid"][raw["owner_src"] != layout.DEFINES["OWNER_NONE"]]
        for pid in set(np.unique(owned).tolist()) - self._netns_of.keys():
            self._netns_of[pid] = kernel.netns_id(pid)

    def drain(self) -> np.ndarray:
        """Take the records that arrived (returned raw: records.decode() reads them)."""
        raw = self._probe.poll()
        if len(raw):
            self._learn_owners_netns(raw)
            self._keep(raw)
            closed = raw["kind"] == layout.DEFINES["EV_LIFE"]
            self.tally["lives"] += int(closed.sum())
            # a FIN_WAIT2->CLOSE or CLOSING->CLOSE hands over to a timewait socket
            handed = np.isin(raw["last_state"], [layout.DEFINES["TCP_FIN_WAIT2"], layout.DEFINES["TCP_CLOSING"]])
            self.tally["timewaits"] += int((closed & handed).sum())
        if self._watch:
            self._keep(records.from_timewait_watch(self._watch.poll(time.time()), "tw_end", 0))
        if time.monotonic() - self._swept_at >= TW_SWEEP_EVERY_S:
            self._swept_at = time.monotonic()
            self.timewaits_swept += self._probe.sweep_timewaits(time.monotonic_ns())
        if self._transitions:  # after the lives, and a bounded share: see transitions.PER_DRAIN
            self._transitions.write(self._probe.poll_transitions(transitions.PER_DRAIN))
        return raw

    @property
    def records_kept(self) -> int:
        """BPF records waiting in the spool for the end of the run."""
        return self._spool.count

    def progress(self) -> tuple[int, int, int]:
        """(socket lives closed, TIME_WAITs made, ring-buffer drops) so far, for the progress line."""
        counters = self._probe.counters()
        if self._probe.aggregates:  # no records arrive: ask the procs map
            counts = self._probe.process_counts()
            return sum(c["lives"] for c in counts), sum(c["timewait"] for c in counts), counters["ringbuf_drops"]
        return self.tally["lives"], self.tally["timewaits"], counters["ringbuf_drops"]

    def finish(self) -> tuple[pd.DataFrame, dict]:
        """Last drain, the lives still open, the counters; unloads the probe.  Returns the
        events and the run; a run too big to analyse in memory comes back counted per
        process instead (run["aggregates"] and run["analysis_skipped"]: see _analysable)."""
        self.drain()
        if self._transitions:  # what is left of the stream, whole: the run is over
            self._transitions.write(self._probe.poll_transitions())
        ended_at = time.time()
        open_raw = self._probe.open_lives()
        self._learn_owners_netns(open_raw)
        still_open = self._decoded(open_raw)
        timewaits = records.decode(self._probe.open_timewaits(), self._offset_ns, self.hz)
        if self._watch:
            self._keep(records.from_timewait_watch(self._watch.poll(ended_at, force=True), "tw_end", 0))
            timewaits = records.from_timewait_watch(self._watch.still_open(), "tw_open", ended_at)
        programs = self._probe.program_stats()
        counters = self._probe.counters() | {
            "recursion_misses": sum(p.get("recursion_misses", 0) for p in programs.values())}
        aggregates = self._probe.process_counts() if self._probe.aggregates else None
        tcpext_end = kernel.all_timewait_counters()
        close_waits = sockets.snapshot(self.filters, ("CLOSE_WAIT",), self.netns)
        self._probe.close()
        if self._transitions:
            self._transitions.close()
        open_count = len(still_open)
        keep = [self.filters.keeps_owner(p, c) for p, c in zip(still_open["pid"], still_open["comm"])]
        still_open = still_open[keep].assign(event_at=ended_at)
        timewaits.loc[timewaits["kind"] == "tw_open", "event_at"] = ended_at
        for frame in (still_open, timewaits,
                      records.from_snapshot(close_waits, "seen_at_end", ended_at, self.netns_id)):
            self._keep(frame)
        run = {
            "started_at": self.started_at, "ended_at": ended_at, "counters": counters, "open_lives": open_count,
            "open_timewaits": len(timewaits), "timewaits_swept": self.timewaits_swept, "hz": self.hz, **self.timewait,
            "programs": programs,  # what each BPF program cost, when BPF stats were on
            # the kernel's own counts, per network namespace: see summary.reconcile
            "netns": self.netns_id,
            "tcpext": {"start": self._tcpext_start, "end": tcpext_end},
            "sysctls": self._sysctls, "kernel_release": os.uname().release,
            **({"aggregates": aggregates} if aggregates is not None else {}),
            **({"transitions": transitions.accounting(self._transitions.written, counters, self._transitions.path)}
               if self._transitions else {}),
        }
        if self._recorder:
            self._recorder.finish(run)
        return self._analysable(run), run

    def _analysable(self, run: dict) -> pd.DataFrame:
        """The events of the run, decoded whole.  Unless that would not fit in memory (a long
        run at a high churn): then the ended lives are counted per owner from the spool, a
        batch at a time (run["aggregates"], as --aggregates makes them, with
        run["analysis_skipped"] saying why), and the events are the rest: the lives still
        open, the sockets of the snapshots, the TIME_WAIT ends of sock_diag."""
        rows = self._spool.count + sum(len(part) for part in self._parts if isinstance(part, pd.DataFrame))
        need, available = rows * ANALYSIS_BYTES_PER_RECORD, kernel.mem_available()
        if available is None or need < available * ANALYSIS_SHARE_OF_MEMORY:
            return self._events()
        run["aggregates"] = aggregate.counts_of_lives(self._decoded(b) for b in self._spool.batches(SPOOL_BATCH))
        run["analysis_skipped"] = {"records": rows, "needed_bytes": need, "available_bytes": available}
        frames = [part for part in self._parts if isinstance(part, pd.DataFrame)]
        self._parts = []
        self._spool.close()
        return records.concat(frames)


class Stop:
    """Set by a signal handler, read by the polling loop.

    Not a threading.Event: Event.set() takes a non-reentrant lock, and a signal
    handler runs in the main thread, which may hold that very lock inside
    Event.wait(): a deadlock, seen once at Ctrl-C.  A plain attribute and short
    sleeps cannot block.

    After tracing (finishing()), the files are still to be written, which takes a
    minute for a minute of full churn: a signal then is answered with a warning,
    and only the one after it abandons the files (errors.Abandoned)."""

    def __init__(self, warn: Callable[[str], None] | None = None):
        self._set = False
        self._finishing = False
        self._warned = False
        self._warn = warn or (lambda text: print(text, file=sys.stderr, flush=True))

    def finishing(self) -> None:
        """Tracing is over; what follows writes the files."""
        self._finishing = True

    def signalled(self) -> None:
        """Ctrl-C or SIGTERM: end tracing; once it has ended, warn, then abandon."""
        if not self._set and not self._finishing:
            self._set = True
        elif not self._warned:
            self._warned = True
            self._warn("tcpclose: still analysing the run and writing its files; "
                       "Ctrl-C again abandons them")
        else:
            raise Abandoned

    def is_set(self) -> bool:
        return self._set

    def wait(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self._set and time.monotonic() < deadline:
            time.sleep(min(0.02, max(deadline - time.monotonic(), 0)))


@contextmanager
def stop_on_signals():
    """A Stop set by Ctrl-C or SIGTERM, so that a run ends cleanly and still writes
    everything: keep the files' writing inside it too (see Stop)."""
    stop = Stop()
    previous = {sig: signal.signal(sig, lambda *_: stop.signalled()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run(tracer: Tracer, stop: Stop, duration: float | None = None, until: Callable[[], bool] | None = None,
        progress: Progress | None = None, announce: Callable[[str], None] | None = None) -> tuple[pd.DataFrame, dict]:
    """Poll until stopped, the duration is over, or until() says so.  announce: told
    when the end of a big run will take a while."""
    deadline = None if duration is None else time.monotonic() + duration
    try:
        while not stop.is_set():
            if deadline is not None and time.monotonic() >= deadline:
                break
            if until is not None and until():
                break
            tracer.drain()
            if progress:
                progress.update(tracer.progress)
            stop.wait(POLL_INTERVAL_S)
        stop.finishing()
        if progress:  # the totals, before the probe is unloaded
            tracer.drain()
            progress.update(tracer.progress, force=True)
            progress.close()
        announce_long_end(tracer.records_kept, announce)
        return tracer.finish()
    finally:
        if progress:
            progress.close()
