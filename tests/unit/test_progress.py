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


def test_the_end_says_the_time_left_at_its_pace_so_far_once_it_has_one(monkeypatch):
    """From ESTIMATE_AFTER_S after the first call on, the time left at the pace since then:
    150,000 records in 30 s, 600,000 more take 2 min."""
    import io

    from agent.run import progress as progresses

    clock = [1000.0]
    monkeypatch.setattr(progresses.time, "monotonic", lambda: clock[0])
    log = io.StringIO()
    progress = progresses.Progress(enabled=True, stream=log)
    progress._last -= 60
    progress.made(50_000, 800_000)  # (its pace starts here: nothing to say yet)
    clock[0] += 30
    progress.made(200_000, 800_000)
    clock[0] += 3600
    progress.made(750_000, 800_000)  # 700,000 in 3,630 s: 50,000 more take 259 s
    assert log.getvalue().splitlines() == [
        "making the rows: 50,000 of 800,000 records (6 %)",
        "making the rows: 200,000 of 800,000 records (25 %), about 2 min 0 s left",
        "making the rows: 750,000 of 800,000 records (93 %), about 4 min 19 s left"]
    assert progresses._duration(3 * 3600 + 125) == "3 h 2 min" and progresses._duration(0.2) == "1 s"


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
