"""What a run keeps until its end, in arrival order: the BPF records in a spool (raw, on
disk, so the tracer's memory stays flat), the frames made from sock_diag as they are."""
from __future__ import annotations

from typing import Callable, Iterator

import numpy as np
import pandas as pd

from ..analysis.processes import counts_of_lives
from ..record import layout, spool
from ..record.decode import concat

SPOOL_BATCH = 1_000_000  # records decoded at a time when the run is only counted
Decoder = Callable[[np.ndarray], pd.DataFrame]


class Kept:
    def __init__(self, directory: str | None = None):
        self._spool = spool.Spool(layout.EVENT_DTYPE, directory)
        self._parts: list[range | pd.DataFrame] = []

    def add(self, part: np.ndarray | pd.DataFrame) -> None:
        """Raw records (layout.EVENT_DTYPE) to the spool; a decoded frame as it is."""
        if len(part):
            self._parts.append(self._spool.append(part) if isinstance(part, np.ndarray) else part)

    @property
    def spooled(self) -> int:
        """BPF records waiting in the spool."""
        return self._spool.count

    @property
    def rows(self) -> int:
        """Every row the end of the run will analyse: the spooled records and the decoded rows."""
        return self._spool.count + sum(len(part) for part in self._frames())

    def _frames(self) -> Iterator[pd.DataFrame]:
        return (part for part in self._parts if isinstance(part, pd.DataFrame))

    def events(self, decode: Decoder) -> pd.DataFrame:
        """Every part, decoded, in arrival order; the spool is emptied."""
        frames = spool.in_order(self._parts, self._spool.read(), decode)
        self._close()
        return concat(frames)

    def counted(self, decode: Decoder) -> tuple[list[dict], pd.DataFrame]:
        """For a run too big to analyse whole: the spooled lives counted per owner, a batch at
        a time (as --aggregates counts them in BPF), and the decoded frames as events (the
        lives still open, the snapshots, the TIME_WAIT ends of sock_diag)."""
        counts = counts_of_lives(decode(b) for b in self._spool.batches(SPOOL_BATCH))
        frames = list(self._frames())
        self._close()
        return counts, concat(frames)

    def _close(self) -> None:
        self._parts = []
        self._spool.close()
