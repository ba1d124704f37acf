"""Percentiles that stream: a DDSketch (the ddsketch library) per group and measure.

A run's percentiles (TIME_WAIT lifetimes, connection durations) are no longer computed from
every value kept to the end: each batch of rows adds its values to a sketch, sketches of
the same group merge, and a percentile read from one is within RELATIVE_ACCURACY of a
value at that rank (DDSketch's guarantee: each value is counted in a logarithmic bucket
whose bounds are within that relative error of it).  0.2 % is 0.12 s on a 60 s TIME_WAIT,
under the 0.1 s the summary prints for values near 10 s, and keeps 60 s apart from the
61 s of a timer wheel that fired late.

Each sketch keeps at most BIN_LIMIT buckets, 14 decades at this accuracy (a microsecond to
three years: past it the lowest buckets are folded together, so low percentiles would lose
accuracy first), and only those between its lowest and highest value: 2 kB for a run's
TIME_WAIT lifetimes, 28 kB for durations spread over six decades, 64 kB at most, whatever
the run's length.

Adding is vectorised: the batch's values are mapped to their buckets with numpy (the
sketch's own logarithmic mapping, key = ceil(log_gamma(value))) and counted per (group,
bucket).  Sketches keeps those counts as arrays until a sketch is read (a note, the end) or
FOLD_PAIRS of them wait, then adds each (group, bucket) count once, as the bucket's
representative value with its weight: a few thousand calls a read, where adding each batch's
took a few thousand a batch (7 % of making a row at full churn).  A percentile reads only the
buckets' counts, which do not depend on how the values were grouped into calls.
"""
from __future__ import annotations

import math
from typing import Iterable

import numpy as np
from ddsketch import LogCollapsingLowestDenseDDSketch

RELATIVE_ACCURACY = 0.002
BIN_LIMIT = 8192


def new() -> LogCollapsingLowestDenseDDSketch:
    return LogCollapsingLowestDenseDDSketch(RELATIVE_ACCURACY, bin_limit=BIN_LIMIT)


_MAPPING = new()._mapping  # (the mapping every sketch made here shares)
_LOG_GAMMA = math.log(_MAPPING.gamma)


FOLD_PAIRS = 1 << 17  # counts waiting at most: 2 MiB a Sketches (a trace without -o reads them at its end)


class Sketches:
    """A sketch per group (ints: the row of a group in its table), made where missing."""

    def __init__(self):
        self._sketches: dict[int, LogCollapsingLowestDenseDDSketch] = {}
        self._pairs: list[np.ndarray] = []  # (group, bucket) numbers waiting (_pair)
        self._weights: list[np.ndarray] = []  # and how many values each had
        self._waiting = 0

    def add(self, groups: np.ndarray, values: np.ndarray) -> None:
        """Add values[i] to the sketch of groups[i]; NaN values are skipped."""
        values = np.asarray(values, dtype=float)
        keep = ~np.isnan(values)
        if not keep.any():
            return
        pairs, weights = np.unique(_pair(np.asarray(groups)[keep], values[keep]), return_counts=True)
        self._pairs.append(pairs)
        self._weights.append(weights)
        self._waiting += len(pairs)
        if self._waiting >= FOLD_PAIRS:
            self._fold()

    def get(self, group: int) -> LogCollapsingLowestDenseDDSketch | None:
        self._fold()
        return self._sketches.get(group)

    def values(self):
        self._fold()
        return self._sketches.values()

    def _fold(self) -> None:
        """The counts waiting, added to the sketches: once per (group, bucket)."""
        if not self._pairs:
            return
        pairs, at = np.unique(np.concatenate(self._pairs), return_inverse=True)
        weights = np.bincount(at.ravel(), weights=np.concatenate(self._weights))
        self._pairs, self._weights, self._waiting = [], [], 0
        for pair, weight in zip(pairs.tolist(), weights.tolist()):
            group, slot = divmod(pair, 2**22)
            key, is_positive = divmod(slot, 2)
            sketch = self._sketches.get(group)
            if sketch is None:
                sketch = self._sketches[group] = new()
            sketch.add(_MAPPING.value(key - 2**20) if is_positive else 0.0, weight)


def _pair(groups: np.ndarray, values: np.ndarray) -> np.ndarray:
    """One number per (group, bucket of the value, positive or not); zeros and negatives go to
    bucket 0 and are added as 0.0, which the sketch counts apart (a duration of 0 is a close
    within the clock's resolution)."""
    positive = values > _MAPPING.min_possible
    keys = np.zeros(len(values), dtype=np.int64)
    keys[positive] = np.ceil(np.log(values[positive]) / _LOG_GAMMA).astype(np.int64)
    # the keys of positive values are within +-2**20 (a DDSketch of this accuracy spans 1e-308
    # to 1e308 in some 350,000 of them)
    slot = (keys + 2**20) * 2 + positive
    return groups.astype(np.int64) * 2**22 + slot


def merged(parts: Iterable) -> LogCollapsingLowestDenseDDSketch | None:
    """One sketch of all the values of `parts` (None: there were none)."""
    out = None
    for part in parts:
        if part is None:
            continue
        if out is None:
            out = new()
        out.merge(part)
    return out


def quantile(sketch, q: float) -> float:
    """The value at quantile q (0..1) of a sketch; NaN for no sketch or an empty one."""
    value = sketch.get_quantile_value(q) if sketch is not None else None
    return float("nan") if value is None else float(value)
