"""A trace -o killed while its steps were behind its records (run.kept): the records still
waiting are in the run's directory (run.backlog), and `tcpclose report DIR` makes their rows
(run.replay.waiting_rows), each life once."""
import tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd

from agent.analysis import lives
from agent.analysis.stream import Stream
from agent.analysis.tally import Tally
from agent.errors import BadRecording
from agent.record import decode, layout, rows, rundir
from agent.record.runinfo import RunInfo
from agent.run import backlog as backlogs
from agent.run import kept as kept_module
from agent.run import replay
from agent.run.backlog import Backlog
from agent.run.kept import Kept
from agent.safefiles import OutputDir
from support.streams import HZ, OFFSET_NS, churn, epoch

CONNECTIONS = 400  # three records each: the client's life, the server's, the client's TIME_WAIT's end
STEP = 200
STARTED, NOTED = epoch(0.5), epoch(200.0)
READING = lambda: {"offset_ns": OFFSET_NS, "hz": HZ, "owners": {}}  # noqa: E731  (Tracer.reading)


def records(first: int, n: int) -> np.ndarray:
    out = np.zeros(n, layout.EVENT_DTYPE)
    out["pid"] = np.arange(first, first + n)
    return out


def test_with_a_directory_the_records_waiting_are_in_named_files_that_go_once_read(tmp_path, monkeypatch):
    """persist() puts what waits in memory into a file of the run's directory and says where
    the records waiting start; a file read to its end is removed and the next has the next
    number; rundir.waiting_records reads them back from there, oldest first."""
    monkeypatch.setattr(backlogs, "IN_MEMORY_BYTES", 10 * layout.EVENT_DTYPE.itemsize)
    out = OutputDir(tmp_path / "out")
    waiting = Backlog(out=out)
    assert waiting.persist() is None  # nothing waits: no file
    waiting.add(records(0, 6))
    assert list((tmp_path / "out").iterdir()) == []  # in memory
    assert waiting.persist() == (rundir.waiting_name(0), 0, 6)
    assert waiting.take(4)["pid"].tolist() == [0, 1, 2, 3]
    waiting.add(records(6, 8))  # after those in the file
    assert waiting.persist() == (rundir.waiting_name(0), 4, 10)
    spec = {"first": 0, "from": 4, "records": 10}
    assert [r["pid"].tolist() for r in rundir.waiting_records(tmp_path / "out", spec, layout.EVENT_DTYPE, 5)] == [
        [4, 5, 6, 7, 8], [9, 10, 11, 12, 13]]
    assert len(waiting.take(100)) == 10 and not (tmp_path / "out" / rundir.waiting_name(0)).exists()
    waiting.add(records(14, 12))  # past memory: straight to the next file
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [rundir.waiting_name(1)]
    assert waiting.persist() == (rundir.waiting_name(1), 0, 12)
    # a WAITING of an earlier note names file 0, gone since: its records are rows; the later ones are read
    assert [r["pid"].tolist() for r in rundir.waiting_records(tmp_path / "out", spec, layout.EVENT_DTYPE, 100)] == [
        list(range(14, 24))]  # (those that waited then: those after came after the note)


def killed_behind(tmp_path: Path) -> tuple[np.ndarray, int, int]:
    """A trace -o into tmp_path/out, killed while behind (STEP_RECORDS monkeypatched): two
    steps, a note, two more steps (the second makes rows of records that waited at the note:
    written after it), and nothing more.  Returns its records, and how many rows
    connections.arrow held at the note and at the kill."""
    raw = np.frombuffer(churn(CONNECTIONS, span=120.0), layout.EVENT_DTYPE)
    raw = raw[np.argsort(raw["ts_ns"], kind="stable")]  # (as the ring hands them over)
    # the servers' lives owned by their accept(), not by their listener (held to the run's end: analysis.stream)
    raw["owner_src"][raw["owner_src"] == layout.DEFINES["OWNER_LISTENER"]] = layout.DEFINES["OWNER_SYSCALL"]
    out = OutputDir(tmp_path / "out")
    kept = Kept.into(out, "csv", waiting=True)
    kept.start(Stream("timers", {}, decode.empty_events()), lambda part: decode.decode(part, OFFSET_NS, HZ),
               Tally(STARTED, True), reading=READING)
    kept.arrive(raw)
    kept.step(), kept.step()  # (a life is made from the step after its own: its grace runs from its arrival)
    assert kept.note(out, RunInfo(started_at=STARTED, ended_at=NOTED, hz=HZ, timewait_method="timers", cut_short=True))
    before = len(rows.read(tmp_path / "out" / rundir.ROWS))
    kept.step(), kept.step()
    return raw, before, len(rows.read(tmp_path / "out" / rundir.ROWS))


def test_a_run_killed_while_behind_is_finished_with_the_rows_of_the_records_that_waited(tmp_path, monkeypatch):
    """`report DIR` of a trace killed while behind has every life once: those made, those
    held at the note as they stood, and the rest made from the records that waited, as a
    whole-run analysis makes them."""
    monkeypatch.setattr(kept_module, "STEP_RECORDS", STEP)
    raw, before, after = killed_behind(tmp_path)
    assert 0 < before < after < 2 * CONNECTIONS  # (behind: most records still wait)
    assert rundir.waiting_name(0) in {p.name for p in (tmp_path / "out").iterdir()}

    reported, _ = replay.rows_of_directory(tmp_path / "out")
    conns = reported.frame()
    life = conns[rundir.LIFE]
    assert len(conns) == 2 * CONNECTIONS and not life.duplicated().any()
    whole = lives.connections(decode.decode(raw.tobytes(), OFFSET_NS, HZ), NOTED, "timers", {})
    cols = [*rundir.LIFE, "comm", "initiator", "tw_end_reason", "tw_s"]
    held = pd.MultiIndex.from_frame(rows.read(tmp_path / "out" / rundir.PENDING)[rundir.LIFE])
    mine = conns[~pd.MultiIndex.from_frame(life).isin(held)][cols]
    theirs = whole[~pd.MultiIndex.from_frame(whole[rundir.LIFE]).isin(held)][cols]
    key = [*rundir.LIFE]
    pd.testing.assert_frame_equal(mine.sort_values(key).reset_index(drop=True),
                                  theirs.sort_values(key).reset_index(drop=True), check_dtype=False)
    assert (conns["tw_end_reason"] == "expired").sum() > CONNECTIONS // 2  # the ends that waited joined their lives

    without, _ = rundir.read(tmp_path / "out")  # (what report DIR made before: the records waiting lost)
    assert len(without.frame()) <= after + len(held) < 2 * CONNECTIONS


def test_what_a_killed_run_left_waiting_is_read_as_input_never_through_a_link(tmp_path, monkeypatch):
    """connections.waiting.json and the records it names are input to a root tool: one that is
    not what a trace writes is one line naming it, a file of records replaced by a link is
    not read through it, and records of any bytes make rows or one line, never a traceback
    (one field of a few records changed, each field in turn)."""
    from click.testing import CliRunner

    from agent.cli import main

    def report():
        return CliRunner().invoke(main, ["report", str(tmp_path / "out")])

    def one_line(result, *words):
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert result.exit_code == 7 and "Traceback" not in result.output, result.output
        assert lines[-1].startswith("tcpclose: ") and all(w in lines[-1] for w in words), lines[-1]
    monkeypatch.setattr(kept_module, "STEP_RECORDS", STEP)
    killed_behind(tmp_path)
    spec = (tmp_path / "out" / rundir.WAITING).read_text()
    for bad in ('{"file": "../../etc/shadow", "from": 0}', "[]", spec.replace('"hz": 250', '"hz": "x"')):
        (tmp_path / "out" / rundir.WAITING).write_text(bad)
        one_line(report(), rundir.WAITING)
    (tmp_path / "out" / rundir.WAITING).write_text(spec)
    records = tmp_path / "out" / rundir.waiting_name(0)
    kept_bytes = records.read_bytes()
    victim = tmp_path / "victim"
    victim.write_bytes(kept_bytes)
    records.unlink()
    records.symlink_to(victim)
    one_line(report(), "cannot read", rundir.waiting_name(0))
    records.unlink()
    records.write_bytes(np.random.default_rng(7).integers(0, 256, len(kept_bytes), dtype=np.uint8).tobytes())
    one_line(report(), rundir.waiting_name(0), "not within the run")
    # a few bytes of one field changed in a few records: the rows, or one line (a time so far
    # off made the analysis ask for hundreds of GiB: a MemoryError, a traceback)
    rng, fields = np.random.default_rng(11), [f for f in layout.EVENT_DTYPE.names if f != "pad"]
    for field in fields:
        changed = np.frombuffer(kept_bytes, layout.EVENT_DTYPE).copy()
        which = rng.choice(len(changed), size=3, replace=False)
        noise = rng.integers(0, 256, (3, changed.dtype[field].itemsize), dtype=np.uint8).tobytes()
        changed[field][which] = np.frombuffer(noise, changed.dtype[field].base).reshape(changed[field][which].shape)
        records.write_bytes(changed.tobytes())
        try:  # (the figures made: what `report DIR` writes its tables from)
            replay.rows_of_directory(tmp_path / "out")
        except BadRecording:
            pass


def test_a_run_that_caught_up_leaves_no_record_waiting_and_a_new_run_clears_what_an_old_one_left(tmp_path):
    """A note with nothing waiting removes WAITING; Kept.into() removes the files of records a
    killed run left in the directory: they are not the new run's."""
    out = OutputDir(tmp_path / "out")
    (tmp_path / "out" / rundir.waiting_name(3)).write_bytes(records(0, 2).tobytes())
    (tmp_path / "out" / rundir.WAITING).write_text("{}")
    kept = Kept.into(out, "csv", waiting=True)
    names = {p.name for p in (tmp_path / "out").iterdir()}
    assert rundir.WAITING not in names and rundir.waiting_name(3) not in names
    kept.start(Stream("timers", {}, decode.empty_events()), lambda part: decode.decode(part, OFFSET_NS, HZ), None,
               reading=READING)
    kept.arrive(records(0, 2))
    assert kept.note(out, RunInfo(epoch(0.5), epoch(10.0), cut_short=True))
    assert rundir.read_waiting(tmp_path / "out")["rows_before"] == 0
    kept.step()
    assert kept.note(out, RunInfo(epoch(0.5), epoch(10.0), cut_short=True))
    assert not (tmp_path / "out" / rundir.WAITING).exists()


def test_report_dir_of_a_long_killed_run_keeps_what_pending_holds_not_an_index_of_every_row(tmp_path):
    """What `report DIR` keeps while it reads a killed run's rows to find the lives of PENDING
    made final since is bounded by PENDING, not by the run's rows: four times the rows take
    no more memory (an index of every row's life grew with them), and the lives found are
    the same."""
    pending = rows.empty().reindex(range(2_000))
    pending["skaddr"] = np.arange(2_000, dtype=np.uint64) * 7  # (even ones made final in the last part)
    pending["opened_at"], pending["closed_at"] = epoch(1.0), np.nan
    out = tmp_path / "out"
    out.mkdir()
    with open(out / rundir.PENDING, "wb") as f:
        writer = rows.RowsWriter(f)
        writer.append(pending)
        writer.close()

    def made(parts: int):
        def batches():
            for i in range(parts):
                part = rows.empty().reindex(range(20_000))
                part["skaddr"] = np.arange(i * 20_000, (i + 1) * 20_000, dtype=np.uint64) * 7 + 3
                part["opened_at"], part["closed_at"] = epoch(1.0), epoch(2.0)
                if i == parts - 1:
                    part.loc[:999, "skaddr"] = pending["skaddr"].to_numpy()[::2]
                    part.loc[:999, "closed_at"] = np.nan
                yield part
        return batches

    peaks = []
    for parts in (5, 20):
        tracemalloc.start()
        left, _, since = rundir._pending_and_last(out, made(parts), (parts - 1) * 20_000)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
        assert sorted(left["skaddr"].tolist()) == pending["skaddr"].tolist()[1::2]
        assert len(since) == 20_000
    assert peaks[1] < 1.3 * peaks[0], peaks
