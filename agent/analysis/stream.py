"""Socket lives -> their final connection rows, as the records arrive.

A run no longer has to keep every record until its end: each batch of decoded events
is added with step(), which hands back the rows nothing that arrives later can change,
made by analysis.lives.connection_rows(), as connections() makes a whole run's (it carries
what a batch needs of the batches before: lives.Carried).  A life's row is final

  - for a life that left no TIME_WAIT, or one whose timewait socket the BPF side could not
    name (tcp_max_tw_buckets overflow, or unknown): after its grace, the time the reset it
    may have sent has to arrive (an abort goes ->CLOSE before tcp_send_reset, so that record
    follows its life in the ring buffer, microseconds later).  How long depends on the
    step's clock: GRACE_S where `now` is when the records were taken (a step keeping up: the
    reset may still be in the ring, or in the drainer's hands); RECORDS_GRACE_S where `now` is
    the time of the step's last record (a step behind, a recording), since every record the
    ring held before that one has been added by then;
  - for a life whose TIME_WAIT is followed: once the end of its timewait socket arrived,
    by the timer (EV_TW_END) or by sock_diag (--timewait diag);
  - at the end of the run only, for two kinds only the whole run can settle: a life credited
    to its listener's owner (the fd tables at the end, and the other lives of that listener,
    say whether that names one process: analysis.listeners), and
    a client's TIME_WAIT cancelled where the BPF side saw no connect() take it, until a client
    opened on its 4-tuple within timewait.REUSE_WINDOW_S of the cancel shows up (then it
    was reused; the client can still be open at the end; a server's is killed: see
    timewait.server_side).  At most PARKED_MAX of them wait:
    past that the oldest are settled with what is known so far (counted in `settled_early`,
    with the TIME_WAITs whose end never came, settled as unknown once no end can come).

What is held is bounded by what is alive in the kernel, not by the length of the run: the
timewait sockets not ended yet, a grace of arrivals, and the parked lives above.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import pandas as pd

from ..record import layout
from ..record.decode import concat, empty_events, widened
from . import reuses
from .held import Held
from .lives import Carried, connection_rows, rst_sent_after_close
from .rules import FOUR_TUPLE
from .ends import Ended, HeldEnds
from .timewait import TIME_WAIT_LEN_S

GRACE_S = 2.0  # a life's grace where the step's clock is when its records were taken
# and where it is the records' own: with GRACE_S a step behind at full churn held 2 s of its
# records' lives, some 190,000 (50 MiB, and every step looks at each; docs/overhead.md)
RECORDS_GRACE_S = 0.25
PARKED_MAX = 100_000
PART_LIVES = 20_000  # rows made this many lives at a time (steps, the end): a part costs ~2.5 kB a life while made
# provisional rows (notes, every --interval): a quarter of that, as a note's peak is a run's
# highest at 6,000 conn/s; a part costs ~26 ms more (docs/overhead.md, "The hour at 6,000 conn/s")
NOTE_PART_LIVES = PART_LIVES // 4
END_KINDS = ("tw_end",)  # (tw_open: only at the end of a run, from the maps)
ARRIVING = ("life", "reset_sent", *END_KINDS)  # what step() takes; the end of a run brings the rest
END_OF_RUN = ("open", "tw_open", "seen_at_end")  # what the end of a trace reads (finish()), after every arrival


class Stream:
    """The connection rows of a run, a batch of events at a time."""

    def __init__(self, timewait_method: str | None, pods: dict[str, str], existing: pd.DataFrame | None = None):
        """timewait_method: RunInfo.timewait_method; pods: the pods learnt so far (the tracer's
        own dict: it grows as containers are met); existing: the snapshot at the start (decode
        kind "existing")."""
        self.method = timewait_method
        self.pods = pods
        self._carried = Carried(existing if existing is not None else empty_events())
        self._lives = Held()
        self._ends = HeldEnds(timewait_method)
        self._resets = pd.DataFrame({"event_at": np.zeros(0), "skaddr": np.zeros(0, np.uint64), "arrived": np.zeros(0)})
        self.settled_early = 0  # lives settled before what they waited for (PARKED_MAX, a lost end)

    @property
    def held(self) -> int:
        """Lives waiting for their row to be final."""
        return len(self._lives)

    def step(self, events: pd.DataFrame, now: float, grace_s: float = GRACE_S) -> pd.DataFrame:
        """Add the events that arrived (BPF records decoded, sock_diag's TIME_WAIT ends), up to
        `now` (epoch seconds); return the connection rows that became final (step_parts, joined).
        grace_s: GRACE_S, or RECORDS_GRACE_S where `now` is the time of the last BPF record
        (every record before it in the ring is among those added by now)."""
        parts = list(self.step_parts(events, now, grace_s))
        return pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0]

    def step_parts(self, events: pd.DataFrame, now: float, grace_s: float = GRACE_S) -> Iterator[pd.DataFrame]:
        """step() PART_LIVES lives at a time, each part to be written before the next is made:
        a step's rows cost ~2.5 kB a life while made, and a step can make a second's lives of a
        busy host or, behind, STEP_RECORDS' worth.  The lives whose rows may depend on each
        other (on the ports of a client's unexplained cancel: _alone) go together with the
        first part, which they may make larger.  Yields one part at least."""
        self._add(events, now)
        del events  # (held now as the lives and ends it brought: the batch can go before the rows are made)
        alive = self._lives.alive
        waiting, early, how = self._waiting(now)
        final = alive & ~waiting & (self._lives.columns["arrived"] <= now - grace_s)
        self.settled_early += int((final & early).sum())
        chosen = np.flatnonzero(final)
        alone = self._alone(chosen, how)
        apart = chosen[alone]
        parts = np.array_split(apart, -(-len(apart) // PART_LIVES)) if len(apart) else [apart]
        parts[0] = np.sort(np.concatenate([chosen[~alone], parts[0]]))
        for part in parts:
            lives = self._lives.frame(part)
            yield connection_rows(lives, self._ends.of(lives), now, self.method, self.pods, self._carried, final=False)
        self._ends.keep(self._lives, chosen, how, now, grace_s)
        self._lives.drop(chosen)
        self._resets = self._resets[self._resets["arrived"].astype(float).to_numpy() > now - grace_s]

    def finish(self, events: pd.DataFrame, ended_at: float, followed: pd.DataFrame | None = None) -> pd.DataFrame:
        """The end of the run's events (the lives still open, the timewait sockets still
        followed, the sockets seen at the end); return every row left (finish_parts, joined)."""
        return pd.concat(list(self.finish_parts(events, ended_at, followed)), ignore_index=True)

    def finish_parts(self, events: pd.DataFrame, ended_at: float,
                     followed: pd.DataFrame | None = None) -> Iterator[pd.DataFrame]:
        """finish() a part at a time: a minute of a busy host's TIME_WAITs is held at the end,
        and their rows made at once would cost ~2.5 kB a life while made.  First the held lives
        whose rows nothing but their own records decides on, PART_LIVES at a time (as a step
        makes them); last the rest together, which the parts before may decide on (a listener's
        owners, carried), with the lives still open and the sockets seen at the end: the lives
        credited to a listener, those whose unexplained cancel a client may show to be a reuse,
        and those clients.

        followed: the timewait sockets the BPF side still followed, as the tracer read them
        (decode.from_followed_timewaits: a few columns only), apart from `events`: joined to
        them, a few hundred thousand would take every column of the lives' records."""
        if followed is not None:
            ended = (followed["kind"] != "tw_open").to_numpy(bool)  # (a cancel nothing explained: an end)
            events, followed = concat([events, widened(followed[ended])]), followed[~ended]
        kind = events["kind"].to_numpy(object)
        arriving = np.isin(kind, ARRIVING)
        self._add(events[arriving], ended_at)
        still_open = events[kind == "tw_open"] if followed is None else followed
        if self.method == "timers":
            self._ends.follow(still_open, ended_at)
        else:
            self._ends.open_first(still_open, ended_at)
        alive = np.flatnonzero(self._lives.alive)
        alone = alive[self._alone(alive)]
        for part in np.array_split(alone, -(-len(alone) // PART_LIVES)) if len(alone) else []:
            lives = self._lives.frame(part)
            yield connection_rows(lives, self._ends.of(lives), ended_at, self.method, self.pods, self._carried,
                                  final=False)
        lives = self._lives.frame(np.setdiff1d(alive, alone))
        ends = self._ends.of(lives)
        self._lives, self._ends = Held(), HeldEnds(self.method)
        yield connection_rows(concat([lives, events[kind == "open"]]), ends, ended_at, self.method, self.pods,
                              self._carried, final=True, seen_at_end=events[kind == "seen_at_end"])

    def _alone(self, positions: np.ndarray, how: Ended | None = None) -> np.ndarray:
        """Per held life at `positions`: can its final row be made apart from the others
        (finish_parts)?  Not for a life credited to its listener, nor for a client's TIME_WAIT
        cancelled with no connect() seen taking it, nor for a life on the same two ports as one
        of those (the client that may have taken it over: timewait.taken_by_connect).  Looked
        up for those positions only: a step's are a fraction of the lives held."""
        columns = self._lives.columns
        how = self._ends.how(self._lives, columns["due"].astype(bool)) if how is None else how
        unexplained = how.cancelled & ~columns["server"].astype(bool)
        ports = self._lives.ports()
        return ~columns["listener"][positions].astype(bool) & ~np.isin(ports[positions], ports[unexplained])

    def provisional(self, now: float, everything: bool = True) -> Iterator[pd.DataFrame]:
        """The rows of the lives held, as they would be if the run ended `now` (a TIME_WAIT
        not ended yet is open), changing nothing but what is noted: what a run killed before
        their rows were final has of them (record.rundir); in parts of at most NOTE_PART_LIVES
        lives that nothing but their own records decides on.

        Once its grace is over, a life's row changes only when its TIME_WAIT ends (and then it
        is final), but for those parked to the end of the run (a listener's child, whose owner
        the other lives of the listener may change; an unexplained cancel, which a client may
        still show to be a reuse).  everything False: only the lives whose provisional row was
        not made before or can still change; a TIME_WAIT's row, open, then stays as it was
        made, its age taken again by whoever reads it (rundir.read): with a minute of a busy
        host's TIME_WAITs held, each is made once, not every interval."""
        alive = np.flatnonzero(self._lives.alive)
        if not len(alive):
            return
        columns = self._lives.columns
        how = self._ends.how(self._lives, columns["due"].astype(bool))
        unexplained = how.cancelled & ~columns["server"].astype(bool)  # (a cancel with no connect() seen: parked)
        settled = (columns["arrived"] <= now - GRACE_S) & ~columns["listener"].astype(bool) & ~unexplained
        chosen = alive if everything else alive[~(settled & columns["noted"])[alive]]
        waiting = ~how.ended & ((columns["timer"] != 0) | (columns["due"].astype(bool) & (self.method == "diag")))
        self._lives.note(alive[settled[alive]])
        carried = Carried(self._carried.existing, {k: set(v) for k, v in self._carried.owners.items()})
        # the lives whose rows may depend on each other (a listener's children) in the first part
        first, rest = chosen[~settled[chosen]], chosen[settled[chosen]]
        parts = [first, *np.array_split(rest, -(-len(rest) // NOTE_PART_LIVES))] if len(rest) else [first]
        for part in parts:
            if len(part):
                lives = self._lives.frame(part)
                yield connection_rows(lives, concat([self._ends.of(lives), _still_open(lives[waiting[part]], now)]),
                                      now, self.method, self.pods, carried, final=False)

    def _add(self, events: pd.DataFrame, now: float) -> None:
        """Hold the lives and timewait ends that arrived at `now`; each reset that arrived set on
        the life it follows (as FLAG_RST_SENT, which connection_rows() reads)."""
        kind = events["kind"]
        self._lives.add(events, now, np.flatnonzero((kind == "life").to_numpy(bool)))
        self._ends.add(events, np.flatnonzero(kind.isin(END_KINDS).to_numpy(bool)), now)
        resets = events[["event_at", "skaddr"]].iloc[np.flatnonzero((kind == "reset_sent").to_numpy(bool))]
        if len(resets):
            self._resets = pd.concat([self._resets, resets.assign(arrived=now)], ignore_index=True)
        if len(self._resets) and len(self._lives):
            columns = self._lives.columns
            lives = pd.DataFrame({"event_at": columns["closed_at"], "skaddr": columns["skaddr"]})[self._lives.alive]
            hit = rst_sent_after_close(lives, self._resets)
            self._lives.set_flags(lives.index.to_numpy()[hit], layout.DEFINES["FLAG_RST_SENT"])

    def _waiting(self, now: float) -> tuple[np.ndarray, np.ndarray, Ended]:
        """Which held lives wait: for the end of their TIME_WAIT, or for the end of the run
        (parked); which no longer wait for what they waited for (settled early, if final); and
        how each one's timewait socket ended (HeldEnds.how)."""
        columns = self._lives.columns
        closed_at, due = columns["closed_at"], columns["due"].astype(bool)
        how = self._ends.how(self._lives, due)
        if self.method == "timers":
            no_end = (columns["timer"] != 0) & ~how.ended
        elif self.method == "diag":
            no_end = due & ~how.ended
        else:
            no_end = np.zeros(len(due), dtype=bool)
        # no timewait socket outlives its timeout and one TIME_WAIT after it (a peer's FIN
        # retransmitted into TIME_WAIT re-arms it, hence the margin): an end not seen by then
        # was lost (the record, or the timer's memory reused) and will not come
        timeout = np.nan_to_num(columns["timeout"], nan=TIME_WAIT_LEN_S)
        lost = no_end & (closed_at + timeout + 2 * TIME_WAIT_LEN_S < now)
        no_end &= ~lost
        unexplained = np.flatnonzero(self._lives.alive & how.cancelled & ~columns["server"].astype(bool))
        check = reuses.may_be_reused(self._lives, self._ends.frame, self._ends.names, self.method, unexplained, now)
        if len(check):
            taken = reuses.reused_now(self._lives, self._ends.frame, self._ends.names, self.method, check)
            unexplained = np.setdiff1d(unexplained, check[taken])
            self._ends.reindex()  # (the ends of those taken say "reused" now)
        parked = columns["listener"].astype(bool) & self._lives.alive
        parked[unexplained] = True
        over = int(parked.sum()) - PARKED_MAX
        if over > 0:  # the oldest settled now, with what is known so far
            oldest = np.flatnonzero(parked)[np.argsort(closed_at[parked], kind="stable")[:over]]
            parked[oldest] = False
            lost[oldest] = True
        return no_end | parked, lost, how


def _still_open(lives: pd.DataFrame, now: float) -> pd.DataFrame:
    """A tw_open record for the timewait socket of each of these lives, as the end of a run
    reads them (decode.from_followed_timewaits; by 4-tuple for sock_diag's): open at `now`."""
    out = empty_events().reindex(range(len(lives)))
    out["kind"], out["event_at"] = "tw_open", now
    for column in ("tw_timer", "tw_rearm_at", "tw_timeout_s", *FOUR_TUPLE):
        out[column] = lives[column].to_numpy()
    out["tw_start_at"] = np.where(lives["tw_timer"].astype(np.uint64).to_numpy() != 0, lives["tw_start_at"],
                                  lives["event_at"])  # (sock_diag's: first seen at the close)
    return out

