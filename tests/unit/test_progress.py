"""The live line, and what it says when the churn outruns the rows (run.progress)."""
from __future__ import annotations

from agent.run.progress import BEHIND_SHOWN, line


def test_the_line_says_how_many_records_wait_only_once_a_step_cannot_take_them_all():
    assert line(65, 1200, 600, 0) == "1:05 traced: 1,200 socket lives closed, 600 TIME_WAITs made, 0 drops"
    assert line(65, 120, 60, 0, waiting=BEHIND_SHOWN - 1).endswith(", 0 drops")
    assert line(65, 120, 60, 3, waiting=BEHIND_SHOWN).endswith(
        f", 3 records DROPPED (see Not seen); rows behind: {BEHIND_SHOWN:,} records wait for the end")
