"""A batch of connection rows as the figures read it (analysis.tally, grouped, occupancy):
each column taken out of its frame once, as an array, and each key column factorized once
however many groupings read it.

On a batch of a few thousand rows, pandas' cost per call (a column looked up, a text column
converted out of Arrow, a frame made of the measures, a groupby) was most of what the
figures cost: some 2.8 µs a row, with the owners, the peers and the TIME_WAITs' makers each
factorizing the same owner columns again.  Here a column is a numpy array (or, for a whole
number that may be missing, pandas' masked Int64 array), read as often as wanted.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np
import pandas as pd


def _array(values: pd.Series):
    """A frame's column as the figures read it: numbers as numpy arrays, a whole number that
    may be missing as Int64 (masked), pandas' text (Arrow's) as it is: compared, factorized
    and taken there, where converting it to Python objects costs more than all of that;
    anything else as Python objects (None where missing, NaN too: the rows' text columns hold
    both).  Test membership with among(), which takes either."""
    if isinstance(values.dtype, (pd.Int64Dtype, pd.StringDtype)):
        return values.array
    if pd.api.types.is_numeric_dtype(values.dtype) and isinstance(values.dtype, np.dtype):
        return values.to_numpy()
    return values.to_numpy(object)


def among(values, items) -> np.ndarray:
    """Is each value one of `items` (a column as Columns gives it: numpy's isin would convert
    pandas' text to Python objects first)."""
    return values.isin(list(items)) if isinstance(values, pd.api.extensions.ExtensionArray) else np.isin(values, items)


def plain(value):
    """A value as a dict key: None for every kind of missing, Python ints and text."""
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return None
    return value.item() if isinstance(value, np.generic) else value


class Columns:
    """Named columns of equal length, taken from a frame only when first read."""

    def __init__(self, arrays: Mapping[str, object] | None = None, frame: pd.DataFrame | None = None,
                 length: int | None = None):
        """arrays: name -> array; frame: where the other columns are read from (kept as `frame`)."""
        self.frame = frame
        self._arrays = dict(arrays or {})
        self._length = length if length is not None else len(frame) if frame is not None else \
            len(next(iter(self._arrays.values()))) if self._arrays else 0
        self._factorized: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._parent: tuple[Columns, np.ndarray] | None = None  # (where()): read from there, then subset

    def __len__(self) -> int:
        return self._length

    def __contains__(self, name: str) -> bool:
        if name in self._arrays:
            return True
        if self._parent is not None:
            return name in self._parent[0]
        return self.frame is not None and name in self.frame

    def __getitem__(self, name: str):
        values = self._arrays.get(name)
        if values is None:
            if self._parent is not None:
                parent, mask = self._parent
                values = parent[name][mask]
            else:
                if self.frame is None or name not in self.frame:
                    raise KeyError(name)
                values = _array(self.frame[name])
            self._arrays[name] = values
        return values

    def factorized(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """(a code per row, the distinct values the codes index, in the order first met);
        a missing value is one of the values (no sentinel)."""
        found = self._factorized.get(name)
        if found is None:
            if self._parent is not None and name in self._parent[0]._factorized:
                codes, uniques = self._parent[0]._factorized[name]
                found = codes[self._parent[1]], uniques
            else:
                codes, uniques = pd.factorize(self[name], use_na_sentinel=False)
                found = codes, np.asarray(uniques, dtype=object)
            self._factorized[name] = found
        return found

    def groups(self, names: list[str]) -> tuple[np.ndarray, list[tuple]]:
        """The distinct combinations of these columns' values: a code per row (0, 1, ... as
        first met) and the values each code stands for (a missing one None)."""
        parts = [self.factorized(k) for k in names]
        combined = parts[0][0].astype(np.int64)  # (factorize numbers them 0, 1, ... as first met)
        for codes, values in parts[1:]:  # (numbered again at each step: the numbers stay below rows x values)
            combined = pd.factorize(combined * len(values) + codes)[0].astype(np.int64)
        first = np.unique(combined, return_index=True)[1]  # the first row of each code, in code order
        return combined, [tuple(plain(values[codes[row]]) for codes, values in parts) for row in first.tolist()]

    def where(self, mask: np.ndarray) -> "Columns":
        """The rows where `mask` is set (or at these positions): the columns read, and the
        factorizations made, here are subset from this batch's when wanted."""
        out = Columns(length=int(np.count_nonzero(mask)) if mask.dtype == bool else len(mask))
        out._parent = (self, mask)
        return out

    def counts(self, name: str, mask: np.ndarray | None = None) -> dict:
        """How many rows hold each value of a column (where `mask`), missing ones left out,
        the most common first (as pandas' value_counts)."""
        codes, uniques = self.factorized(name)
        counted = np.bincount(codes if mask is None else codes[mask], minlength=len(uniques))
        order = np.argsort(-counted, kind="stable")
        return {uniques[i]: int(counted[i]) for i in order.tolist() if counted[i] and plain(uniques[i]) is not None}
