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


def _killed_period(directory, pid: int):
    """A period as an agent killed midway leaves it: rows made final, the held lives' rows as
    they stood at the last interval, run.json cut short, no report.html."""
    from agent.analysis import stream
    from agent.record import decode
    from support.incidents import ACTIVE_CLIENT
    from support.streaming import left_by_a_kill
    from support.streams import epoch, raw, replay, timewait

    timer = 0xFFFF8881000A0000
    directory.mkdir()
    events, _ = replay(directory, raw(skaddr=1, pid=pid, comm="closer", ts=2.0, tw_timer=timer, tw_start=2.0,
                                      lport=40001, **ACTIVE_CLIENT),
                       raw(skaddr=2, pid=pid, comm="closer", ts=3.0, tw_timer=timer + 0x100, tw_start=3.0,
                           lport=40002, **ACTIVE_CLIENT),
                       timewait("expired", timer=timer, start=2.0, end=62.0), ended=70.0, timewait="timers")
    for name in os.listdir(directory):  # (the recording replay() made)
        os.unlink(directory / name)
    lives = stream.Stream("timers", {})
    lives.step(events.iloc[:2], epoch(30.0))
    pending = decode.concat(list(lives.provisional(epoch(30.0))))
    made = lives.step(events.iloc[2:], epoch(62.0))
    left_by_a_kill(directory, made, pending, epoch(0.0), epoch(30.0))


def test_a_period_a_killed_agent_left_is_finished_when_it_starts_again(tmp_path, capsys):
    import pandas as pd

    killed, done, planted = (tmp_path / n for n in ("20200101T000000Z", "20200101T010000Z", "20200101T020000Z"))
    _killed_period(killed, pid=7)
    _killed_period(done, pid=8)
    (done / "report.html").write_text("finished before")
    _killed_period(planted, pid=9)
    victim = tmp_path.parent / f"{tmp_path.name}-victim.arrow"
    os.rename(planted / "connections.arrow", victim)
    os.symlink(victim, planted / "connections.arrow")  # a link planted at its rows: not read through

    periods = Periods(OutputDir(tmp_path), every_s=3600, keep=5)
    err = capsys.readouterr().err
    assert f"finishing {killed}, left unfinished" in err and str(done) not in err and str(planted) not in err
    assert "report.html" in os.listdir(killed) and "connections.pending.arrow" not in os.listdir(killed)
    conns = pd.read_csv(killed / "connections.csv")
    assert sorted(zip(conns["lport"], conns["tw_end_reason"])) == [(40001, "expired"), (40002, "open")]
    assert (done / "report.html").read_text() == "finished before" and "processes.csv" not in os.listdir(done)
    assert "report.html" not in os.listdir(planted) and os.path.islink(planted / "connections.arrow")
    assert periods.current.path.name not in (killed.name, done.name, planted.name)


def test_a_next_period_that_cannot_be_made_leaves_the_current_going_and_is_tried_again(tmp_path, monkeypatch,
                                                                                          capsys):
    from agent.cli import periods as module

    periods = Periods(OutputDir(tmp_path), every_s=3600, keep=5)
    first = periods.current

    def full_disk(name):
        raise CannotWrite(f"cannot write to {tmp_path / name}: No space left on device; free some")
    monkeypatch.setattr(periods.root, "subdirectory", full_disk)

    class Tracer:
        def rotate(self, out):
            raise AssertionError("no period ends while no next one could be begun")
    periods.rotate(Tracer())
    assert periods.current is first
    assert f"no new period begun, {first.path} goes on" in capsys.readouterr().err
    assert not periods.due()
    monkeypatch.setattr(module.time, "monotonic", lambda real=module.time.monotonic: real() + module.RETRY_S)
    assert periods.due()  # tried again RETRY_S later, not a whole period later
