"""The live line, and what it says when the churn outruns the rows (run.progress)."""
from __future__ import annotations

from agent.run.progress import BEHIND_SHOWN, line


def test_the_line_says_how_many_records_wait_only_once_a_step_cannot_take_them_all():
    assert line(65, 1200, 600, 0) == "1:05 traced: 1,200 socket lives closed, 600 TIME_WAITs made, 0 drops"
    assert line(65, 120, 60, 0, waiting=BEHIND_SHOWN - 1).endswith(", 0 drops")
    assert line(65, 120, 60, 3, waiting=BEHIND_SHOWN).endswith(
        f", 3 records DROPPED (see Not seen); {BEHIND_SHOWN:,} records behind")


def test_the_end_of_a_long_run_shows_how_far_the_rows_are_made_and_always_their_last():
    import io

    from agent.run.progress import Progress

    log = io.StringIO()
    progress = Progress(enabled=True, stream=log)  # (not a terminal: a line every LOG_EVERY_S at most)
    progress._last -= 60  # the last line long ago: the next is due
    progress.made(50_000, 200_000)
    progress.made(100_000, 200_000)  # too soon after: not shown
    progress.made(200_000, 200_000)  # the last: always shown
    assert log.getvalue().splitlines() == ["making the rows: 50,000 of 200,000 records (25 %)",
                                           "making the rows: 200,000 of 200,000 records (100 %)"]


def test_on_a_terminal_the_line_is_cut_to_its_width_so_that_it_can_be_rewritten_in_place():
    import fcntl
    import os
    import pty
    import struct
    import termios

    from agent.run.progress import Progress

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 40, 0, 0))  # 24 rows, 40 columns
    with os.fdopen(slave, "w") as terminal:
        progress = Progress(stream=terminal)
        assert progress.terminal and progress.enabled
        progress.show(lambda: "x" * 100, force=True)
        shown = os.read(master, 1000).decode()
    os.close(master)
    assert shown == "\r" + "x" * 39 + "\x1b[K"
