"""The timewait ends a stream holds (analysis.stream) until the rows of the lives that made
those TIME_WAITs are made, and how each held life's TIME_WAIT ended so far.

With the BPF side following the timers (method "timers"), a life names its timewait socket
and an end is found by that name (timewait.end_of); sock_diag's sightings (method "diag")
are matched by 4-tuple.  A step looks them up several times for every life held (a minute
of a busy host's TIME_WAITs), so what the lookups read is made once when the ends change:
the names' index and, per end, whether it says how its socket ended and whether that was a
cancel nothing explained.  Only the columns the rows are made from are kept (COLUMNS; the
4-tuple not where ends are found by name): an end record's others say nothing, and each
filter of them copied every one.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pandas as pd

from ..record.decode import concat, empty_events, widened
from .held import Held
from .reuses import tuples
from .rules import FOUR_TUPLE
from .timewait import TIMEWAIT_COLUMNS, diag_ends, end_of, indexed, timewait_name

COLUMNS = [*TIMEWAIT_COLUMNS, "arrived"]  # what is kept of an end (arrived: when it came, the stream's clock)
NAMED_COLUMNS = [c for c in COLUMNS if c not in FOUR_TUPLE]  # (the timers': an end is found by its name)


class Ended(NamedTuple):
    """Per held life: did an end of its timewait socket arrive, was it a cancel nothing
    explained ("cancelled": parked until a client shows it a reuse), and (timers) the position
    of that end among those held, -1 where none."""
    ended: np.ndarray
    cancelled: np.ndarray
    found: np.ndarray | None


class HeldEnds:
    """The ends held, in `frame`; add() as they arrive, keep() once a step's rows are made."""

    def __init__(self, method: str | None):
        """method: RunInfo.timewait_method."""
        self.method = method
        self.columns = NAMED_COLUMNS if method == "timers" else COLUMNS
        self.frame = self._narrow(empty_events(), 0.0)  # the ends held (the reuses mark theirs here: reindex() after)
        self.reindex()
        self.followed = self.frame  # the timewait sockets still open at the end (follow()), by timer
        self.followed_names = self.names

    def reindex(self) -> None:
        """What the lookups read, made again from `frame` (changed)."""
        self.names = indexed(timewait_name(self.frame))
        how = self.frame["tw_end"]  # (compared as it is: Arrow's text mostly, converted it costs more)
        self._ended = np.append(how.notna().to_numpy(bool), False)  # (position -1, none: the last)
        self._cancelled = np.append((how == "cancelled").to_numpy(bool), False)

    def add(self, events: pd.DataFrame, rows: np.ndarray, now: float) -> None:
        """The ends at `rows` of these events (decoded), arrived at `now`: their columns taken
        first, and those rows of them."""
        if len(rows):
            self.frame = concat([self.frame, events[self.columns[:-1]].iloc[rows].assign(arrived=now)])
            self.reindex()

    def open_first(self, still_open: pd.DataFrame, now: float) -> None:
        """sock_diag's timewait sockets still open at the end of the run, before the ends: one
        read after them is the last of its 4-tuple."""
        if len(still_open):
            self.frame = concat([self._narrow(still_open, now), self.frame])
            self.reindex()

    def follow(self, still_open: pd.DataFrame, now: float) -> None:
        """The timewait sockets the BPF side still followed at the end of the run: each found
        by its name for its life's part (of()), where no end of it arrived."""
        self.followed, self.followed_names = still_open.assign(arrived=now), indexed(timewait_name(still_open))

    def how(self, lives: Held, due: np.ndarray) -> Ended:
        """How each held life's timewait socket ended so far (due: a TIME_WAIT was due, for
        sock_diag's, matched by 4-tuple, which takes the lives decoded whole: its slow fallback)."""
        columns, n = lives.columns, len(due)
        if self.method == "timers":
            found = end_of(columns, self.names)
            return Ended(self._ended[found], self._cancelled[found], found)
        if self.method == "diag" and due.any():
            how = diag_ends(lives.frame(np.arange(n)), self.frame, due, columns["closed_at"])["tw_end"].to_numpy(object)
            return Ended(pd.notna(how), how == "cancelled", None)
        return Ended(np.zeros(n, dtype=bool), np.zeros(n, dtype=bool), None)

    def of(self, lives: pd.DataFrame) -> pd.DataFrame:
        """The ends held of these lives' timewait sockets: the last of each name, which is the
        one the rows take (sock_diag's, matched by 4-tuple: all of them).  Not the others: a
        minute of a busy host's ends would be copied at every step."""
        if self.method != "timers":
            return self.frame
        names = timewait_name(lives)
        found = end_of(names, self.names)
        ends = self.frame.iloc[np.unique(found[found >= 0])]
        if not len(self.followed):
            return ends
        # no end arrived: still open at the end of the run, if the BPF side still followed it
        opened = end_of({name: values[found < 0] for name, values in names.items()}, self.followed_names)
        return concat([self._narrow(self.followed.iloc[np.unique(opened[opened >= 0])]), ends])

    def _narrow(self, ends: pd.DataFrame, now: float | None = None) -> pd.DataFrame:
        """Ends (decoded, or as the end of a run reads them) in `columns`, arrived at `now`
        (None: as they say)."""
        ends = widened(ends)
        return (ends if now is None else ends.assign(arrived=now))[self.columns]

    def keep(self, lives: Held, final: np.ndarray, ended: Ended, now: float, grace_s: float) -> None:
        """Hold the ends still wanted: not those of the lives at `final`, whose rows are made
        (ended: their how(), this step's), nor those older than grace_s whose life is not held
        (it ended before tracing)."""
        if not len(self.frame):
            return
        if self.method == "timers":
            used = np.zeros(len(self.frame) + 1, dtype=bool)
            used[ended.found[final]] = True
            wanted = np.zeros(len(self.frame) + 1, dtype=bool)
            wanted[ended.found[lives.alive]] = True  # (-1, none: the last, cut off)
            used, wanted = used[:-1], wanted[:-1]
        else:  # a 4-tuple's next life may be held: its ends are kept while one is
            used = np.zeros(len(self.frame), dtype=bool)
            wanted = tuples(self.frame).isin(tuples(lives.frame(np.flatnonzero(lives.alive))))
        recent = self.frame["arrived"].to_numpy(float) > now - grace_s
        self.frame = self.frame[~used & (wanted | recent)].reset_index(drop=True)
        self.reindex()
