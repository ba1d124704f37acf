"""Counts of moments in time, kept per quantum (a short stretch of time) as a run's rows
arrive: what the timeline and the ephemeral ports' figures are made of, in memory bounded by
the run's length over the quantum, not by its rows.

How many sockets are alive at a moment t is the number begun at or before t less the number
ended at or before t.  Begins and ends are counted in the quantum that closes at or after
them (index ceil((t - start) / q)), so that "at or before the end of quantum k" is exact;
openings and closings, counted per bin, go to the quantum they fall in (floor).

The quantum grows with the run (QUANTA_S): the timeline's bin (analysis.churn.timeline_step)
is always a whole number of quanta, so the timeline made from them is the one made from
every row; a longer quantum is made from the shorter one exactly (a moment's ceil-quantum
of q' is the ceil of its q-quantum scaled, when q' is a multiple of q).  Figures read at
other moments (a destination's busiest moment, the last 10 s) are to the quantum.
"""
from __future__ import annotations

import math

import numpy as np

# (the run's length up to which a quantum is used, the quantum): the timeline's bin
# (churn.TIMELINE_STEPS_S: 600 bins at most) is a multiple of each quantum up to there
QUANTA_S = ((300.0, 0.1), (3000.0, 1.0), (18000.0, 10.0), (math.inf, 60.0))
FLOOR, CEIL = "floor", "ceil"


def quantum_for(traced_s: float) -> float:
    return next(q for upto, q in QUANTA_S if traced_s <= upto)


class Quanta:
    """Counts per quantum of named series, each FLOOR or CEIL."""

    def __init__(self, series: dict[str, str], started_at: float, quantum: float):
        self.started_at, self.quantum = started_at, quantum
        self._how = dict(series)
        self._counts = {name: np.zeros(0, dtype=np.int64) for name in series}

    def add(self, name: str, times: np.ndarray) -> None:
        """Count each moment (NaN and infinite ones are not counted).  One before the start
        counts at the start in a CEIL series (a socket alive when tracing began), and not at
        all in a FLOOR one (no bin holds it)."""
        times = np.asarray(times, dtype=float)
        times = times[np.isfinite(times)]
        at = (times - self.started_at) / self.quantum
        if self._how[name] == CEIL:
            index = np.maximum(np.ceil(at - 1e-9), 0).astype(np.int64)
        else:
            index = np.floor(at[at >= 0] + 1e-9).astype(np.int64)
        if not len(index):
            return
        counts = np.bincount(index)
        kept = self._counts[name]
        if len(counts) > len(kept):
            kept = self._counts[name] = np.pad(kept, (0, len(counts) - len(kept)))
        kept[:len(counts)] += counts

    def coarsen(self, quantum: float) -> None:
        """The same counts in quanta of `quantum`, a whole multiple of the present one."""
        factor = int(round(quantum / self.quantum))
        if factor <= 1:
            return
        for name, kept in self._counts.items():
            index = np.arange(len(kept))
            new = -(-index // factor) if self._how[name] == CEIL else index // factor
            self._counts[name] = np.bincount(new, weights=kept, minlength=0).astype(np.int64) if len(kept) else kept
        self.quantum = quantum

    def counts(self, name: str, length: int) -> np.ndarray:
        """The first `length` quanta of a series (zeros past what was counted); the rest summed
        into the last one."""
        kept = self._counts[name]
        out = np.zeros(length, dtype=np.int64)
        out[:min(length, len(kept))] = kept[:length]
        if len(kept) > length and length:
            out[-1] += kept[length:].sum()
        return out

    def cumulative(self, name: str, length: int) -> np.ndarray:
        """How many moments of a series fell at or before the end of each of the first
        `length` quanta (CEIL series)."""
        kept = self._counts[name]
        return np.cumsum(np.pad(kept[:length], (0, max(0, length - len(kept)))))

    def index_of(self, t: float) -> int:
        """The quantum that closes at or after moment t."""
        return max(int(math.ceil((t - self.started_at) / self.quantum - 1e-9)), 0)
