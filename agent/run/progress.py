"""The live line while tracing: elapsed time, connections, TIME_WAITs, drops, and how far the
rows are behind when the churn outruns them; then, at the end of a long run, how far the rows are made.

On a terminal it rewrites one line in place twice a second; elsewhere (a log,
a pipe) it writes a line every LOG_EVERY_S seconds when asked to (--progress).
"""
from __future__ import annotations

import os
import sys
import time
from typing import TextIO

TERMINAL_EVERY_S = 0.5
LOG_EVERY_S = 10.0


BEHIND_SHOWN = 50_000  # records waiting for their rows (a step's worth, run.kept.STEP_RECORDS) to say so
ESTIMATE_AFTER_S = 5.0  # the end's time left is said once its pace is this old (a few steps)


def _duration(seconds: float) -> str:
    """`seconds` as a person says it, to the second under a minute and to the minute above: 40 s, 3 min 10 s, 1 h 5 min."""
    seconds = max(int(round(seconds)), 1)
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes} min"
    return f"{minutes} min {seconds} s" if minutes else f"{seconds} s"


def line(elapsed_s: float, lives: int, timewaits: int, drops: int, waiting: int = 0) -> str:
    """waiting: records not made into rows yet, because the churn outruns the steps' share of a
    core (run.kept): they wait on disk, and the end of the run makes them."""
    minutes, seconds = divmod(int(elapsed_s), 60)
    text = f"{minutes:d}:{seconds:02d} traced: {lives:,} socket lives closed, {timewaits:,} TIME_WAITs made"
    text += f", {drops:,} records DROPPED (see Not seen)" if drops else ", 0 drops"
    if waiting >= BEHIND_SHOWN:
        text += f"; {waiting:,} records behind"
    return text


class Progress:
    def __init__(self, enabled: bool | None = None, stream: TextIO = sys.stderr):
        """enabled None: on a terminal only."""
        self.stream = stream
        self.terminal = stream.isatty()
        self.enabled = self.terminal if enabled is None else enabled
        self.every = TERMINAL_EVERY_S if self.terminal else LOG_EVERY_S
        self._started = time.monotonic()
        self._last = self._started
        self._shown = False
        self._made_from: tuple[int, float] | None = None  # (made(): the records done, and when, at its first call)

    def update(self, read, force: bool = False) -> None:
        """read(): (lives, timewaits, drops[, waiting]) so far (line()), called only when the line is due."""
        self.show(lambda: line(time.monotonic() - self._started, *read()), force)

    def made(self, done: int, total: int) -> None:
        """The end of a long run: `done` of the `total` records made into rows so far, and the
        time left at the pace since the first call (once ESTIMATE_AFTER_S have shown it)."""
        now = time.monotonic()
        if self._made_from is None or done < self._made_from[0]:
            self._made_from = (done, now)
        first, since = self._made_from

        def text() -> str:
            said = f"making the rows: {done:,} of {total:,} records ({100 * done // max(total, 1)} %)"
            if done > first and done < total and now - since >= ESTIMATE_AFTER_S:
                said += f", about {_duration((total - done) * (now - since) / (done - first))} left"
            return said
        self.show(text, force=done == total)

    def show(self, make_text, force: bool = False) -> None:
        """make_text(): the line, called only when it is due."""
        now = time.monotonic()
        if not self.enabled or (not force and now - self._last < self.every):
            return
        self._last = now
        text = make_text()
        if self.terminal:  # (cut to the terminal's width: a line that wrapped could not be rewritten in place)
            self.stream.write("\r" + text[:self._width() - 1] + "\x1b[K")  # \x1b[K: clear the rest of a longer line
        else:
            self.stream.write(text + "\n")
        self.stream.flush()
        self._shown = True

    def _width(self) -> int:
        try:
            columns = os.get_terminal_size(self.stream.fileno()).columns
        except (OSError, ValueError):
            columns = 0
        return columns or 1 << 16  # (0: a terminal whose size was never set, a new pty's)

    def close(self) -> None:
        """End the line in place (once) so that what follows starts on a line of its own."""
        if self._shown and self.terminal:
            self.stream.write("\n")
            self.stream.flush()
        self._shown = False
