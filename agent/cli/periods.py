"""tcpclose agent --out DIR: the files of trace -o, a directory a period, the oldest removed.

DIR holds one directory per period (--rotate seconds), named for the moment it began in UTC
(20261204T130000Z): the connection rows made final in that period, the tables made from them,
run.json (its counters those of the period), and report.html once it has ended.  While a
period runs, its tables are rewritten every interval as trace -o's are, so that a kill leaves
a directory `tcpclose report` finishes.  A life's row is final once its TIME_WAIT has ended:
the period that holds it is the one in which that happened, up to a minute after its close
(its opened_at may be in the period before).  Past --keep periods, the oldest directories
are removed, and only those: the names that are periods' (PERIOD_NAME), opened without
following a link.  A period a killed agent left unfinished (no report.html) is finished
when the agent starts again, as `tcpclose report DIR/PERIOD` would.
"""
from __future__ import annotations

import re
import time

import click

from ..errors import BadRecording, CannotWrite
from ..record import rundir
from ..record.runinfo import RunInfo
from ..record.runrows import RunRows
from ..safefiles import OutputDir
from . import results
from .options import View

PERIOD_NAME = re.compile(r"^\d{8}T\d{6}Z(-\d+)?$")
SAME_SECOND = 10  # periods begun within one second (a restart) get -1 ... -9 after their name
RETRY_S = 60.0  # a next period whose directory could not be made is tried again this much later
FINISHED = "report.html"  # written last by a period's finish: what a killed agent's periods lack


class Periods:
    def __init__(self, root: OutputDir, every_s: float, keep: int, fmt: str = "csv", view: View = View()):
        """root: --out's directory; a new period every `every_s` seconds; `keep` periods at most."""
        self.root, self.every_s, self.keep, self.fmt, self.view = root, every_s, keep, fmt, view
        self._prune(keep - 1)
        self.finish_left()
        self.current = self._new()
        self._began = time.monotonic()

    def due(self) -> bool:
        return time.monotonic() - self._began >= self.every_s

    def rotate(self, tracer) -> None:
        """The period that ends now finished in its directory, the next begun in a new one
        (run.tracer.Tracer.rotate).  A next directory that cannot be made (a full disk, DIR
        gone) leaves the current period going, tried again RETRY_S later."""
        try:
            following = self._new()
        except CannotWrite as exc:
            self._began = time.monotonic() - self.every_s + RETRY_S
            click.echo(f"tcpclose: no new period begun, {self.current.path} goes on (tried again in "
                       f"{RETRY_S:.0f} s): {exc.message}", err=True)
            return
        ended, self.current = self.current, following
        self._began = time.monotonic()
        rows, run = tracer.rotate(self.current)
        try:
            self._finish(ended, rows, run, tracer.rows_files)
        except CannotWrite as exc:  # (a full disk: the agent goes on, and so do the next periods)
            click.echo(f"tcpclose: the period in {ended.path} is left unfinished: {exc.message}", err=True)

    def finish(self, rows: RunRows, run: RunInfo, there: tuple[str, ...]) -> None:
        """The last period, as the agent stops (the rows of Tracer.finish: every life's)."""
        self._finish(self.current, rows, run, there)

    def finish_left(self) -> None:
        """The periods that an agent stopped by a kill left unfinished (no FINISHED file),
        finished from their rows and run.json; one that cannot be is left with a warning."""
        for name in sorted(n for n in self.root.names() if PERIOD_NAME.match(n)):
            try:
                period = self.root.existing_subdirectory(name)
            except CannotWrite as exc:
                click.echo(f"tcpclose: {self.root.path / name} is left unfinished: {exc.message}", err=True)
                continue
            if period is None:
                continue
            try:
                rows_name = next((n for n in (rundir.ROWS, rundir.PARQUET) if period.holds_file(n)), None)
                if rows_name is None or not period.holds_file(rundir.RUN) or period.holds_file(FINISHED):
                    continue
                click.echo(f"tcpclose: finishing {period.path}, left unfinished by an agent that was killed",
                           err=True)
                rows, run = rundir.read(period.opened_path)
                self._finish(period, rows, run, (rows_name,))
            except (BadRecording, CannotWrite) as exc:
                click.echo(f"tcpclose: {period.path} is left unfinished: {exc.message}", err=True)
            finally:
                period.close()

    def _finish(self, out: OutputDir, rows: RunRows, run: RunInfo, there: tuple[str, ...]) -> None:
        out.remove([rundir.PENDING])  # (the lives held then: their rows go to a later period)
        try:
            results.show(rows, run, out, view=self.view, there=there, fmt=self.fmt)
        finally:
            rows.release()

    def _new(self) -> OutputDir:
        """A directory for a period beginning now, the oldest removed first to make room."""
        self._prune(self.keep - 1)
        name = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        taken = set(self.root.names())
        free = [n for n in [name, *(f"{name}-{i}" for i in range(1, SAME_SECOND))] if n not in taken]
        return self.root.subdirectory(free[0] if free else name)  # (none free: refused, with the reason)

    def _prune(self, keep: int) -> None:
        """The oldest periods removed, `keep` left."""
        periods = sorted(n for n in self.root.names() if PERIOD_NAME.match(n))
        for name in periods[:max(len(periods) - keep, 0)]:
            self.root.remove_subdirectory(name)
