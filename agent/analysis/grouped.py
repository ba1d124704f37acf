"""Figures per group of connection rows, kept as the rows arrive, in memory bounded by the
groups, not by the rows: counts summed, the highest and lowest values kept, the values whose
percentiles are wanted in sketches (analysis.sketches), the names seen, and how many
connections each group opened per time bin (for its busiest bin).

A run's rows come in batches (analysis.stream makes them as the records arrive); each
batch's measures (one column per figure, computed once per row by analysis.tally) are
added to the groups they belong to.  The figures per coarser grouping (per process name,
per workload) come from summary(), which merges the groups: sums and sketches merge
exactly, so a figure does not depend on how the rows were cut into batches.
"""
from __future__ import annotations

from collections import Counter

import numpy as np
import pandas as pd

from . import sketches
from .columns import Columns, plain

SUM, HIGHEST, LOWEST, SKETCH = "sum", "highest", "lowest", "sketch"
MAX_BINS = 600  # the busiest bin: 1 s wide, or 2, 4, ... s to keep a long run within this many bins


def bin_seconds(traced_s: float) -> int:
    """The width of the bins a run's busiest bin is taken from: the shortest power of two
    seconds that keeps it within MAX_BINS (1 s up to 10 minutes), so that bins kept
    narrower while the run went on add up into it exactly."""
    width = 1
    while traced_s / width > MAX_BINS:
        width *= 2
    return width


class Grouped:
    def __init__(self, keys: list[str], measures: dict[str, str], started_at: float | None = None,
                 names_of: str | None = None, dtypes: dict | None = None):
        """keys: the columns naming a group; measures: column -> SUM, HIGHEST, LOWEST or SKETCH.
        started_at: count each group's connections opened per bin (the rows' `opened` measure,
        at their opened_at), for its busiest bin.  names_of: a column whose values are kept,
        per group, as a set.  dtypes: the key columns' types in cells() (others: objects)."""
        self.keys = list(keys)
        self._of = {kind: [m for m, k in measures.items() if k == kind] for kind in (SUM, HIGHEST, LOWEST, SKETCH)}
        self._groups: dict[tuple, int] = {}
        self._labels: list[tuple] = []
        self._sum = np.zeros((0, len(self._of[SUM])), dtype=np.int64)
        self._max = np.zeros((0, len(self._of[HIGHEST])))
        self._min = np.zeros((0, len(self._of[LOWEST])))
        self._sketches = {m: sketches.Sketches() for m in self._of[SKETCH]}
        self.started_at = started_at
        self.bin_s = 1
        self._opened: Counter = Counter()  # (group, bin) -> connections opened
        self._names_of = names_of
        self._names: dict[int, set] = {}
        self._dtypes = {k: (dtypes or {}).get(k, object) for k in self.keys}


    def __len__(self) -> int:
        return len(self._labels)

    def _codes(self, rows: Columns) -> np.ndarray:
        """The group of each row, new groups made."""
        combined, labels = rows.groups(self.keys)
        ids = np.empty(len(labels), dtype=np.int64)
        for j, label in enumerate(labels):
            group = self._groups.get(label)
            if group is None:
                group = self._groups[label] = len(self._labels)
                self._labels.append(label)
            ids[j] = group
        grown = len(self._labels) - len(self._sum)
        if grown:
            self._sum = np.vstack([self._sum, np.zeros((grown, self._sum.shape[1]), dtype=np.int64)])
            self._max = np.vstack([self._max, np.full((grown, self._max.shape[1]), np.nan)])
            self._min = np.vstack([self._min, np.full((grown, self._min.shape[1]), np.nan)])
        return ids[combined]

    def add(self, rows: Columns) -> None:
        """A batch: the key columns, the measures, and opened_at where started_at is set."""
        if not len(rows):
            return
        codes = self._codes(rows)
        n = len(self._labels)
        for i, m in enumerate(self._of[SUM]):
            self._sum[:, i] += np.bincount(codes, weights=rows[m], minlength=n).astype(np.int64)
        for store, kind, ufunc in ((self._max, HIGHEST, np.fmax), (self._min, LOWEST, np.fmin)):
            for i, m in enumerate(self._of[kind]):
                column = store[:, i]  # (a view: updated in place)
                ufunc.at(column, codes, np.asarray(rows[m], dtype=float))
        for m in self._of[SKETCH]:
            self._sketches[m].add(codes, np.asarray(rows[m], dtype=float))
        if self._names_of:  # (each distinct (group, name) once)
            names, distinct = rows.factorized(self._names_of)
            pairs = np.unique(codes * len(distinct) + names)
            for group, name in zip((pairs // len(distinct)).tolist(), (pairs % len(distinct)).tolist()):
                self._names.setdefault(group, set()).add(distinct[name])
        if self.started_at is not None:
            self._count_opened(codes, rows)

    def _count_opened(self, codes: np.ndarray, rows: Columns) -> None:
        opened = np.asarray(rows["opened"], dtype=bool)
        bins = ((np.asarray(rows["opened_at"], dtype=float)[opened] - self.started_at) // 1).astype(np.int64)
        if not len(bins):
            return
        while bins.max() // self.bin_s >= 2 * MAX_BINS:  # a long run: the bins kept twice as wide
            self._widen(self.bin_s * 2)
        bins //= self.bin_s
        low = int(bins.min())
        width = int(bins.max()) - low + 1  # (one int64 names a (group, bin) pair: sorted flat, not by rows)
        pairs, counts = np.unique(codes[opened].astype(np.int64) * width + (bins - low), return_counts=True)
        self._opened.update(dict(zip(zip((pairs // width).tolist(), (pairs % width + low).tolist()), counts.tolist())))

    def _widen(self, width: int) -> None:
        factor = width // self.bin_s
        wider: Counter = Counter()
        for (group, b), n in self._opened.items():
            wider[(group, b // factor)] += n
        self._opened, self.bin_s = wider, width

    def cells(self) -> pd.DataFrame:
        """One row per group: its keys, its sums, highest and lowest (NaN: no value), and
        `_group`, its number."""
        out = pd.DataFrame(self._labels, columns=self.keys, dtype=object)
        if self._labels:  # (none added: every key an object column, as before any batch had types)
            out = out.astype(self._dtypes)
        for store, kind in ((self._sum, SUM), (self._max, HIGHEST), (self._min, LOWEST)):
            for i, m in enumerate(self._of[kind]):
                out[m] = store[:, i]
        out["_group"] = np.arange(len(out))
        return out

    def summary(self, by: list[str], quantiles: dict[str, tuple[str, float]], ended_at: float | None = None,
                extra: dict | None = None) -> pd.DataFrame:
        """One row per group of `by` (columns among the keys), in the order first met: the
        sums summed, highest and lowest kept, `quantiles` (column -> (sketched measure, q))
        from the merged sketches, `names` (the names seen, space-separated and sorted) where
        kept, and with started_at, `peak_opened_per_s` (the busiest bin up to ended_at).
        extra: more pandas aggregations over the groups' cells (named aggregation)."""
        cells = self.cells()
        grouped = cells.groupby(by, dropna=False, sort=False)
        out = grouped.agg(**{m: (m, "sum") for m in self._of[SUM]},
                          **{m: (m, "max") for m in self._of[HIGHEST]},
                          **{m: (m, "min") for m in self._of[LOWEST]},
                          **(extra or {}))
        new = grouped.ngroup().to_numpy()
        members: list[list[int]] = [[] for _ in range(len(out))]
        for cell, group in enumerate(new.tolist()):
            members[group].append(cell)
        for column, (measure, q) in quantiles.items():
            kept = self._sketches[measure]
            out[column] = [sketches.quantile(sketches.merged(kept.get(c) for c in cells_of), q)
                           for cells_of in members]
        if self._names_of:
            out["names"] = [" ".join(sorted(set().union(*(self._names.get(c, ()) for c in cells_of))))
                            for cells_of in members]
        if self.started_at is not None:
            out["peak_opened_per_s"] = self._peaks(new, len(out), ended_at)
        return out.reset_index()

    def _peaks(self, new: np.ndarray, groups: int, ended_at: float) -> np.ndarray:
        """Each new group's busiest bin (bin_seconds of the run), per second: 0 where none opened."""
        self._widen(max(self.bin_s, bin_seconds(ended_at - self.started_at)))
        peaks = np.zeros(groups)
        width = self.bin_s
        for (cell, b), n in self._sum_bins(new).items():
            # the last bin ends with tracing and may be shorter than the others
            seconds = max(min(width, ended_at - (self.started_at + b * width)), 1e-9)
            peaks[cell] = max(peaks[cell], n / seconds)
        return peaks

    def _sum_bins(self, new: np.ndarray) -> Counter:
        out: Counter = Counter()
        for (cell, b), n in self._opened.items():
            out[(int(new[cell]), b)] += n
        return out

    def opened_rates(self, by: list[str], ended_at: float) -> dict[tuple, pd.Series]:
        """Per group of `by` (its key values, missing ones None): connections opened per second
        in each bin (bin_seconds of the run), indexed by the bin's start in seconds since tracing
        began; bins with none are left out."""
        self._widen(max(self.bin_s, bin_seconds(ended_at - self.started_at)))
        cells = self.cells()
        label_of = [tuple(plain(v) for v in values) for values in cells[by].itertuples(index=False)]
        counted: Counter = Counter()
        for (cell, b), n in self._opened.items():
            counted[(label_of[cell], b)] += n
        out: dict[tuple, dict] = {}
        for (label, b), n in counted.items():
            out.setdefault(label, {})[b * self.bin_s] = n / self.bin_s
        return {label: pd.Series(rates).sort_index() for label, rates in out.items()}

    def sketch(self, measure: str):
        """The merged sketch of a measure over all the groups (None: no value)."""
        return sketches.merged(self._sketches[measure].values())
