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
sketch's own logarithmic mapping, key = ceil(log_gamma(value))), counted per (group,
bucket), and each count is added once, as the bucket's representative value with its
weight: a few hundred calls a batch instead of one per value.
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


def add(sketches: dict, groups: np.ndarray, values: np.ndarray) -> None:
    """Add values[i] to sketches[groups[i]] (made where missing); NaN values are skipped.
    groups: hashable labels (ints here: the row of a group in its table)."""
    values = np.asarray(values, dtype=float)
    keep = ~np.isnan(values)
    if not keep.any():
        return
    groups, values = np.asarray(groups)[keep], values[keep]
    positive = values > _MAPPING.min_possible
    # bucket key of each value (0 where it counts as zero); zeros and negatives are added as 0.0,
    # which the sketch counts apart (a duration of 0 is a close within the clock's resolution)
    keys = np.zeros(len(values), dtype=np.int64)
    keys[positive] = np.ceil(np.log(values[positive]) / _LOG_GAMMA).astype(np.int64)
    # one number per (group, bucket, positive or not): the keys of positive values are within
    # +-2**20 (a DDSketch of this accuracy spans 1e-308 to 1e308 in some 350,000 of them)
    slot = (keys + 2**20) * 2 + positive
    pairs, weights = np.unique(groups.astype(np.int64) * 2**22 + slot, return_counts=True)
    for pair, weight in zip(pairs.tolist(), weights.tolist()):
        group, slot = divmod(pair, 2**22)
        key, is_positive = divmod(slot, 2)
        sketch = sketches.get(group)
        if sketch is None:
            sketch = sketches[group] = new()
        sketch.add(_MAPPING.value(key - 2**20) if is_positive else 0.0, weight)


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
