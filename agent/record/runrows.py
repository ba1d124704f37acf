"""A finished run's connection rows, wherever they are kept (a trace's file of rows, a run
directory, a recording made into rows), with the figures made from them (analysis.tally):
the outputs read the figures, and the rows again only to write a file of them."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

import pandas as pd

from ..analysis.tally import Tally
from . import rows as rowfile
from .runinfo import RunInfo


@dataclass
class RunRows:
    tally: Tally
    batches: Callable[[], Iterable[pd.DataFrame]]  # the rows, a batch at a time, each time called
    release: Callable[[], None] = lambda: None  # called once they are no longer wanted (their file closed)

    def frame(self) -> pd.DataFrame:
        """Every row at once (the lives still open of a run counted per process; tests)."""
        parts = [part for part in self.batches() if len(part)]
        return pd.concat(parts, ignore_index=True) if parts else rowfile.empty()

    @classmethod
    def tallied(cls, batches: Callable[[], Iterable[pd.DataFrame]], run: RunInfo) -> "RunRows":
        """Rows whose figures are made now, a batch at a time (a recording, a run directory)."""
        tally = Tally(run.started_at, run.timewait_followed)
        for part in batches():
            tally.add(part)
        return cls(tally, batches)

    @classmethod
    def at_hand(cls, conns: pd.DataFrame, run: RunInfo) -> "RunRows":
        """Rows in memory."""
        return cls.tallied(lambda: [conns], run)
