"""The tracer: loads the probe, drains it in batches, keeps what arrives, and finishes the run."""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from ..analysis import queues, rules
from ..analysis.stream import Stream
from ..analysis.tally import Tally
from ..errors import TracepointMissing
from ..filters import Filters
from ..safefiles import OutputDir
from ..kernel import diag, procfs, netns as namespaces
from ..record import decode, layout, rundir, rows as rowfile, transitions
from ..record.recording import Recorder
from ..record.runinfo import RunInfo
from ..record.runrows import RunRows
from . import memory
from .drainer import Drainer, joined
from .kept import Kept
from .owners import Owners

TW_SWEEP_EVERY_S = 30.0  # timewaits followed that went stale are dropped this often (Probe.sweep_timewaits)
NOTE_EVERY_S = 10.0  # with -o, run.json says this often how far the run got (--interval)
GUESSED = [layout.DEFINES[f"OWNER_{src.upper()}"] for src in rules.OWNERS_GUESSED]


class Tracer:
    """The live side of a run.  drain() hands back what arrived; finish() ends the run."""

    def __init__(self, filters: Filters, record_path: Path | None = None, timewait: str = "auto",
                 netns: Path | None = None, aggregates: bool = False, transitions_to: Path | str | None = None,
                 max_socks: int | None = None, force: bool = False, attached: Callable[[], None] | None = None,
                 keep: bool = True, out: OutputDir | None = None, interval: float = NOTE_EVERY_S, fmt: str = "csv",
                 tables: Callable | None = None, figures: bool = False):
        """timewait: how TIME_WAIT ends are measured: "timers" (BPF on the timer
        tracepoints), "diag" (sock_diag polls, this namespace only), "none", or
        "auto" (timers where the kernel allows, else diag).
        netns: the network namespace whose sockets and counters are read (sock_diag,
        TcpExt); None: tcpclose's own.  The tracepoints see every namespace.
        aggregates: count each life for its owner in BPF, with no record per life
        (RunInfo.aggregates); TIME_WAITs are then counted, not timed.
        transitions_to: write every transition there as CSV ("-": stdout), what was lost in RunInfo.transitions.
        max_socks: socket lives followed at once in BPF (None: probe.MAX_SOCKS).
        force: write --record and --transitions into another user's directory too (safefiles).
        attached: called once the probe is attached and the listeners are known, before the
        snapshot of the connections already open (seconds with 100,000 sockets).
        keep: make the connection rows for finish() (False: the caller takes each drain's
        records, as tcpclose agent does; finish() then has only the end's).
        out: -o's directory: the rows are kept there (connections.arrow), with run.json and
        `tables(out, tally, run)` (the tables so far) every `interval` seconds, for `tcpclose report DIR`
        to finish a run killed midway (record.rundir), and in the file of --format `fmt` (record.formats).
        figures: the BPF side makes each owner's figures (tcpclose agent: `probe`'s read_figures);
        only the records they need come, unless `keep`."""
        from ..kernel import preflight, probe  # bcc is imported there, when a run starts
        preflight.check_privileges()  # before any output file is made
        self.filters = filters
        if aggregates:  # nothing per life reaches user space, so there is no life to join an end to
            timewait, tw_fn, why = "none", None, "--aggregates: per-process counts only"
        elif timewait in ("none", "diag"):
            tw_fn, why = None, f"--timewait {timewait}"
        else:
            tw_fn, why = preflight.tw_timer_address()
        if tw_fn is None and timewait == "timers":
            raise TracepointMissing(f"cannot follow TIME_WAIT timers: {why}; use --timewait auto")
        method = "timers" if tw_fn is not None else "none" if timewait == "none" else "diag"
        self.timewait_method, self.timewait_method_why = method, why
        self.netns, self.netns_id = netns, namespaces.netns_id_of(netns) if netns else namespaces.netns_id()
        self._watch = diag.TimewaitWatch(netns) if method == "diag" else None
        self.hz, self._tcpext_start = procfs.hz(), procfs.all_tcp_counters()
        self._sysctls = procfs.sysctls(netns)  # the port range and TIME_WAIT sysctls
        self.owners = Owners()  # what /proc says of each owner met: its workloads_of() (tcpclose agent's labels)
        self._offset_ns = time.time_ns() - time.monotonic_ns()  # BPF's clock is CLOCK_MONOTONIC; the outputs', epoch
        # the output files first: a path that cannot be written fails before the compile
        self._recorder = Recorder(record_path, force) if record_path else None
        self._transitions = transitions.Writer(transitions_to, self._offset_ns, force) if transitions_to else None
        self._out, self._fmt = out if keep and not aggregates else None, fmt
        self._kept = (Kept.into(self._out, fmt, waiting=not figures) if self._out else Kept()) if keep else None
        self.rows_files = self._kept.files if self._kept else ()  # in -o, written as the rows come
        self._interval, self._noted_at, self._tables = interval, time.monotonic(), tables
        self.probe = probe.Probe(filters, tw_timer_fn=tw_fn, aggregates=aggregates, transitions=transitions_to is not None,
                                 max_socks=max_socks or probe.MAX_SOCKS, figures=figures, records=keep)
        memory.release_compiler()  # (its ~100 MB, resident for nothing from now on)
        self._drainer = Drainer(self.probe.poll)  # (from now on: the snapshots below take seconds)
        self.tally = {"lives": 0, "timewaits": 0}  # for the progress line
        self._programs: dict[str, dict[str, int]] = {}  # the programs' stats, as counters() last read them
        self.timewaits_swept, self.swept = 0, []  # (with figures, the agent takes the ones swept: list[np.ndarray])
        self._swept_at = time.monotonic()
        self.started_at = time.time()  # (of the period, rotate())
        self._counted_before: dict[str, int] = {}  # the BPF counters, and the timewaits swept, at its start
        holders = diag.socket_holders()  # read once for both snapshots at start
        self._seed_listeners(holders)
        if attached:
            attached()
        self._snapshot_at_start(holders)

    def _keep(self, part: np.ndarray | pd.DataFrame) -> None:
        """Keep what arrived until the next step (a recording is written as it goes)."""
        if not len(part):
            return
        if self._recorder:
            self._recorder.write(self._decoded(part) if isinstance(part, np.ndarray) else part)
        if self._kept is not None:
            self._kept.arrive(part)

    def open_lives_now(self) -> np.ndarray:
        """The records of the lives followed in BPF right now (not yet closed), their owners
        learnt (owners.workloads_of): the CLOSE_WAITs open now are among them."""
        raw = self.probe.open_lives()
        self.owners.learn(raw)
        return raw

    def _decoded(self, raw: np.ndarray) -> pd.DataFrame:
        return self.owners.named(decode.decode(raw, self._offset_ns, self.hz))

    def reading(self) -> dict:  # what _decoded() needs, for `report DIR` of records a killed run left (rundir)
        return {"offset_ns": self._offset_ns, "hz": self.hz, "owners": self.owners.known()}

    def _seed_listeners(self, holders: diag.Holders) -> None:
        """The listeners of every namespace, once the probe is attached, into the BPF side: their children start owned."""
        self.probe.seed_listeners(diag.listener_seeds(diag.snapshot_everywhere(Filters(), ("LISTEN",), holders)))

    def _snapshot_at_start(self, holders: diag.Holders) -> None:
        """What tracing cannot see: the connections that were there before it began.

        Taken once the probe is attached, so that a socket closing meanwhile shows in both
        (and is merged), not in neither; with 100,000 sockets it takes seconds, after
        `Tracing` is announced.  A connection opened while it runs is in it too, and
        analysis.lives drops it there: tracing saw it begin."""
        existing = diag.snapshot(self.filters, netns=self.netns, holders=holders)
        existing = self.owners.placed(decode.from_snapshot(existing, "existing", time.time(), self.netns_id))
        if self._recorder:
            self._recorder.write(existing)
        if self._kept is not None:
            stream = Stream(self.timewait_method, self.owners.cgroups.pods, existing)
            # (taking between parts: not for the agent, whose figures read the records drain() returns)
            self._kept.start(stream, self._decoded, self._tally(), None if self.probe.figures else self._take, self.reading)

    def _tally(self) -> Tally:
        return Tally(self.started_at, self.timewait_method in ("timers", "diag"))

    def rotate(self, out: OutputDir) -> tuple[RunRows, RunInfo]:
        """-o's rows (final in the period that ends now, with their figures) and run; from now on, the next's,
        kept in `out` (agent --out): the lives held and records waiting go to the period their rows are made in."""
        ended_at, counters = time.time(), self.counters()
        run = self._run(ended_at, counters, lives_carried=self._kept.rows)
        self.started_at, self._tcpext_start = ended_at, run.tcpext["end"]
        self._counted_before = {**counters, "timewaits_swept": self.timewaits_swept}
        self._out, self._noted_at = out, time.monotonic()
        return self._kept.rotate(out, self._fmt, self._tally(), run), run

    def drain(self) -> list[np.ndarray]:
        """Take the records that arrived (returned raw, in the parts the drainer read: joined()
        makes one array of them, for decode.decode()), and make rows of them, write -o's files,
        sweep, when it is time."""
        parts = self._take()
        if self._watch:
            self._keep(decode.from_timewait_watch(self._watch.poll(time.time()), "tw_end", 0))
        if time.monotonic() - self._swept_at >= TW_SWEEP_EVERY_S:
            self._swept_at = time.monotonic()
            swept = self.probe.sweep_timewaits(time.monotonic_ns())
            self.timewaits_swept += len(swept)
            self.swept += [swept] if self.probe.figures else []  # (the agent takes them)
        if self._transitions:  # after the lives, and a bounded share: see transitions.PER_DRAIN
            self._transitions.write(self.probe.poll_transitions(transitions.PER_DRAIN))
        if self._kept is not None and self._kept.step_due():
            self._kept.step()
        if self._out is not None and time.monotonic() - self._noted_at >= self._interval:
            self._note_run()
        return parts

    def _take(self) -> list[np.ndarray]:
        """The records that arrived, kept (and counted for the progress line): a part at a time,
        as the drainer read them, and never joined here (run.drainer says why)."""
        parts = self._drainer.take()
        for part in parts:
            self.owners.learn(part)
            self._keep(part)
            closed = part["kind"] == layout.DEFINES["EV_LIFE"]
            self.tally["lives"] += int(closed.sum())
            if self._kept is not None:  # the progress line is trace's: the agent's figures count these themselves
                self.tally["timewaits"] += int(rules.raw_timewaits_due(part).sum())
        return parts

    def _note_run(self) -> None:
        """run.json as far as the run got (RunInfo.cut_short until its end rewrites it), with the
        counters of both sides now, and the tables: what a run killed midway leaves (report DIR finishes it)."""
        self._noted_at = time.monotonic()
        if not self._kept.note(self._out, self._run(time.time(), self.counters(), cut_short=True), self._tables):
            self._interval = float("inf")  # a full disk: the rows go on (the end says what it could not write)

    def _run(self, ended_at: float, counters: dict, **more) -> RunInfo:
        """The run up to `ended_at`, with the BPF side's `counters` and the kernel's now."""
        before = self._counted_before  # (since the period began)
        return RunInfo(started_at=self.started_at, ended_at=ended_at, hz=self.hz,
                       counters={name: n - before.get(name, 0) for name, n in counters.items()},
                       timewaits_swept=self.timewaits_swept - before.get("timewaits_swept", 0),
                       timewait_method=self.timewait_method, timewait_method_why=self.timewait_method_why,
                       # the kernel's own counts, per network namespace: see analysis.reconcile
                       netns=self.netns_id, tcpext={"start": self._tcpext_start, "end": procfs.all_tcp_counters()},
                       sysctls=self._sysctls, kernel_release=os.uname().release,
                       pods=dict(self.owners.cgroups.pods), **more)  # (the Kubernetes pods of the containers met)

    @property
    def records_kept(self) -> int:
        """Rows the end of the run has still to make (the lives held, the records waiting)."""
        return self._kept.rows if self._kept else 0

    def counters(self) -> dict[str, int]:
        """The BPF side's counters now (layout.COUNTER_NAMES), with the transitions the kernel skipped."""
        programs = self._programs = self.probe.program_stats()
        return self.probe.counters() | {
            "recursion_misses": sum(p.get("recursion_misses", 0) for p in programs.values())}

    def bpf_run(self) -> tuple[float, int]:
        """The programs' run time (seconds) and runs, as the last counters() read them: the
        kernel counts them only while kernel.bpf_stats_enabled is 1, else (0.0, 0)."""
        programs = self._programs.values()
        return (sum(p.get("run_time_ns", 0) for p in programs) / 1e9, sum(p.get("run_cnt", 0) for p in programs))

    def progress(self) -> tuple[int, int, int, int]:
        """(lives closed, TIME_WAITs made, ring-buffer drops, records waiting for their rows) so far."""
        drops = self.probe.counters()["ringbuf_drops"]
        if self.probe.aggregates:  # no records arrive: ask the procs map
            counts = self.probe.process_counts()
            return sum(c["lives"] for c in counts), sum(c["timewait"] for c in counts), drops, 0
        return self.tally["lives"], self.tally["timewaits"], drops, self._kept.behind if self._kept else 0

    def finish(self, made: Callable[[int, int], None] | None = None) -> tuple[RunRows, RunInfo]:
        """Last drain, the lives still open, the counters; unloads the probe.  Returns the connection
        rows (analysis.lives) with their figures (made: Kept.finish's), and the run (with --aggregates:
        the rows of the lives still open, RunInfo.aggregates the counts of the others)."""
        self._drainer.stop()  # the ring is read here from now on, last as the run ends
        self._take()  # (no step here: the lives and timewaits still followed are read next, at once)
        if self._transitions:  # what is left of the stream, whole: the run is over
            self._transitions.write(self.probe.poll_transitions())
        ended_at = time.time()
        open_raw, followed = self.probe.open_lives(), self.probe.open_timewaits()
        # A life that closed, or a timewait that ended, while the maps were read left them and
        # handed its record to the ring: read after, it is there (an end read open too is
        # preferred by the analysis; a life read open too is the one that closed).
        late = joined(self._take())
        open_raw = open_raw[~_among(open_raw, late[late["kind"] == layout.DEFINES["EV_LIFE"]])]
        self.owners.learn(open_raw)
        still_open = self._decoded(open_raw)
        timewaits = decode.from_followed_timewaits(followed, self._offset_ns, self.hz, ended_at)
        ends = []  # what the end of the run reads, for the last rows (Kept.finish)
        if self._watch:
            ends.append(decode.from_timewait_watch(self._watch.poll(ended_at, force=True), "tw_end", 0))
            timewaits = decode.from_timewait_watch(self._watch.still_open(), "tw_open", ended_at)
        programs, counters = self.probe.program_stats(), self.counters()
        aggregates = self.probe.process_counts() if self.probe.aggregates else None
        for row in aggregates or []:  # counted in BPF per (pid, thread name): named for the process
            name = row["pid"] and self.owners.comm_of(row["pid"])
            row["comm"] = name or row["comm"]
        run = self._run(ended_at, counters, open_lives=len(still_open), open_timewaits=len(timewaits),
                        programs=programs, aggregates=aggregates)  # (what each BPF program cost, with BPF stats on)
        holders = diag.socket_holders()  # the fd tables, read once for the listeners and the sockets held
        pressed = queues.pressed(diag.listeners_everywhere(holders))  # whose queue, if the counters moved
        # the fd tables of every namespace: each CLOSE_WAIT's fd, and the holders of the lives
        # whose owner the BPF side had from a listener or not at all (analysis.lives._from_fd_tables)
        # (and the listeners, whose holders say whether "the listener's owner" names one process)
        guessed = np.isin(open_raw["owner_src"], GUESSED).any()
        held = diag.snapshot_everywhere(self.filters, (*(diag.CONNECTION_STATES if guessed else ("CLOSE_WAIT",)),
                                                       "LISTEN"), holders)
        self.probe.close()
        if self._transitions:
            self._transitions.close()
        keep = [self.filters.keeps_owner(p, c) for p, c in zip(still_open["pid"], still_open["comm"])]
        still_open = still_open[keep].assign(event_at=ended_at)
        ends += [still_open, timewaits, self.owners.placed(decode.from_snapshot(held, "seen_at_end", ended_at, self.netns_id))]
        for frame in ends if self._recorder else ():
            self._recorder.write(decode.widened(frame))
        run.listen_queues = pressed.astype(object).where(pressed.notna(), None).to_dict("records")
        if self._transitions:
            run.transitions = transitions.accounting(self._transitions.written, counters, self._transitions.path,
                                                     self._transitions.stopped)
        if self._recorder:
            self._recorder.finish(run)
            run.recording_stopped = self._recorder.stopped
        if self._kept is None:  # (keep=False: the caller took the records as they came)
            return RunRows.at_hand(rowfile.empty(), run), run
        apart = None if self._watch else timewaits  # (the BPF side's, not joined to the rest: Stream.finish_parts)
        run.rows_settled_early = self._kept.finish([f for f in ends if f is not apart], ended_at, apart, made)
        if self._out is not None:  # every row is made: none is provisional any more
            self._out.remove([rundir.PENDING, rundir.WAITING])
        return self._kept.rows_of_run(run), run


def _among(lives: np.ndarray, others: np.ndarray) -> np.ndarray:
    """Which of these life records (raw) are of a life among `others`: the same socket
    (skaddr), opened at the same moment (its address is reused within a second)."""
    closed = set(zip(others["skaddr"].tolist(), others["opened_ns"].tolist()))
    return np.fromiter(((a, o) in closed for a, o in zip(lives["skaddr"].tolist(), lives["opened_ns"].tolist())),
                       dtype=bool, count=len(lives))
