"""tcpclose agent -o: the directories of its periods, made and removed, never through a link."""
from __future__ import annotations

import os

import pytest

from agent.cli.periods import Periods
from agent.errors import CannotWrite
from agent.safefiles import OutputDir


def test_periods_are_named_for_when_they_began_and_the_oldest_go_past_keep(tmp_path):
    root = OutputDir(tmp_path)
    (tmp_path / "notes.txt").write_text("the user's")
    (tmp_path / "20200101T000000Z-backup.d").mkdir()  # not a period's name: left alone
    for name in ("20200101T000000Z", "20200101T000000Z-1", "20200102T000000Z"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "processes.csv").write_text("pid\n")
    periods = Periods(root, every_s=3600, keep=2)  # the oldest go first, to make room for the new one
    assert periods.current.path.parent == tmp_path and periods.current.path.name.endswith("Z")
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted(["notes.txt", "20200101T000000Z-backup.d", "20200102T000000Z", periods.current.path.name])
    again = Periods(root, every_s=3600, keep=3)  # begun in the same second: a name of its own
    assert again.current.path.name != periods.current.path.name
    assert again.current.path.name.startswith(periods.current.path.name[:16])


def test_a_link_planted_at_a_period_is_neither_followed_nor_removed_through(tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious").write_text("keep me")
    root_path = tmp_path / "out"
    root_path.mkdir()
    os.symlink(victim, root_path / "20200101T000000Z")
    root = OutputDir(root_path)
    Periods(root, every_s=3600, keep=1)
    assert (victim / "precious").read_text() == "keep me"
    with pytest.raises(CannotWrite, match="20200101T000000Z"):  # a period's directory is made new, never reused
        root.subdirectory("20200101T000000Z")
    assert os.listdir(victim) == ["precious"]


def test_a_period_that_cannot_be_written_is_left_and_the_next_goes_on(tmp_path, monkeypatch, capsys):
    from agent.cli import periods as module
    from agent.record import rows as rowfile
    from agent.record.runinfo import RunInfo
    from agent.record.runrows import RunRows

    def full_disk(*args, **kwargs):
        raise CannotWrite("cannot write to x: No space left on device; free some")
    monkeypatch.setattr(module.results, "show", full_disk)
    released = []

    class Tracer:
        rows_files = ()

        def rotate(self, out):
            run = RunInfo(started_at=0.0, ended_at=1.0)
            rows = RunRows.at_hand(rowfile.empty(), run)
            return RunRows(rows.tally, rows.batches, lambda: released.append(out)), run
    periods = Periods(OutputDir(tmp_path), every_s=3600, keep=5)
    first = periods.current.path
    periods.rotate(Tracer())
    assert periods.current.path != first and periods.current.path.is_dir()
    assert f"the period in {first} is left unfinished: cannot write to x" in capsys.readouterr().err
    assert len(released) == 1  # its rows' file closed all the same
