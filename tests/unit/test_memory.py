"""The end of a default-mode run: what it keeps until then (run.kept: the connection rows, on
disk in record.rows' format)."""
import io

import pandas as pd

import pytest

from agent.analysis import lives
from agent.record import decode, rows
from agent.record.runinfo import RunInfo
from agent.run.kept import Kept
from support.streams import OFFSET_NS, raw


def conns_of(*pids: int, state: str = "life"):
    """Connection rows of lives of these owners (closed by them, or still open)."""
    events = decode.decode(b"".join(raw(state, pid=p, skaddr=p) for p in pids), OFFSET_NS)
    return lives.connections(events, 10.0 + OFFSET_NS / 1e9)


def test_the_rows_kept_come_back_whole_and_in_order(tmp_path):
    kept = Kept(str(tmp_path))
    for part in (conns_of(1, 2), conns_of(3), conns_of(4, state="open")):
        kept.add(part)
    back = kept.rows_of_run(RunInfo(OFFSET_NS / 1e9, 10.0 + OFFSET_NS / 1e9)).frame()
    assert list(back["pid"]) == [1, 2, 3, 4] and list(back["initiator"]) == ["active"] * 3 + ["open"]


def test_a_rows_file_cut_short_reads_up_to_its_last_whole_batch():
    """A SIGKILL or a full disk mid-write: what was whole is what there is."""
    buf = io.BytesIO()
    writer = rows.RowsWriter(buf)
    writer.append(conns_of(1, 2))
    whole = len(buf.getvalue())
    writer.append(conns_of(3, 4))
    data = buf.getvalue()
    for cut in (whole, whole + 10, len(data) - 1):
        assert list(rows.read(io.BytesIO(data[:cut]))["pid"]) == [1, 2]
    assert list(rows.read(io.BytesIO(data))["pid"]) == [1, 2, 3, 4]
    assert rows.read(io.BytesIO(data[:5])).empty  # not even the schema: no rows, not an error


def test_an_append_is_one_batch_whatever_chunks_its_text_came_in():
    """Rows whose text columns are Arrow text made of several chunks (lives gathered from
    several arrivals): still one batch, so that a file cut short holds an append whole or not."""
    import pyarrow as pa

    two_chunks = pd.concat([conns_of(1, 2), conns_of(3)], ignore_index=True)
    two_chunks["comm"] = pd.Series(pd.arrays.ArrowStringArray(pa.chunked_array([["a", "b"], ["c"]])))
    assert rows.table(two_chunks)["comm"].num_chunks == 2
    buf = io.BytesIO()
    rows.RowsWriter(buf).append(two_chunks)
    batches = list(rows.batches(io.BytesIO(buf.getvalue())))
    assert [len(batch) for batch in batches] == [3] and list(batches[0]["comm"]) == ["a", "b", "c"]


@pytest.mark.parametrize("idle_cores, due_after", [(0.0, 1.6 / 0.1), (0.3, 1.6 / 0.1), (0.7, 1.6 / 0.5),
                                                    (1.2, 1.6 / 0.9), (None, 1.6 / 0.1)])
def test_a_long_step_puts_off_the_next_so_that_the_steps_take_their_share_of_a_core(tmp_path, monkeypatch,
                                                                                    idle_cores, due_after):
    """A step that took 1.6 s: on a busy host the next waits until the steps have taken a
    tenth of a core (STEP_SHARE); where the CPUs were half a core idle meanwhile, half a core,
    a whole core idle, 0.9 of one (IDLE_SHARES); where /proc/stat cannot be read, as on a busy host."""
    from agent.run import kept as kept_module

    assert (kept_module.STEP_SHARE, kept_module.IDLE_SHARES) == (0.1, ((1.0, 0.9), (0.5, 0.5)))
    clock = [100.0]
    monkeypatch.setattr(kept_module.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(kept_module.procfs, "idle_cpu_seconds",
                        lambda: None if idle_cores is None else 5000.0 + idle_cores * (clock[0] - 100.0))
    kept = Kept(str(tmp_path))
    kept._stepped(98.4)  # a step that took 1.6 s, just ended
    clock[0] = 100.0 + kept_module.STEP_EVERY_S
    assert not kept.step_due()  # a second later: 1.6 s of 2.6 s would be more than half a core
    clock[0] = 100.0 + due_after - 0.01
    assert not kept.step_due()
    clock[0] = 100.0 + due_after
    assert kept.step_due()


def test_notes_every_second_do_not_put_the_steps_off_for_ever(tmp_path, monkeypatch):
    """A note (--interval 1) that takes 0.3 s counts in the steps' share, but the next step is
    still due a second after the last step, not after the last note (where CPUs idle)."""
    from agent.run import kept as kept_module

    clock = [100.0]
    monkeypatch.setattr(kept_module.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(kept_module.procfs, "idle_cpu_seconds", lambda: 5000.0 + 2.0 * (clock[0] - 100.0))
    kept = Kept(str(tmp_path))
    kept._stepped(99.9)  # a step of 0.1 s, just ended
    for second in (1.0, 2.0):  # a note each second, 0.3 s long
        clock[0] = 100.0 + second + 0.3
        kept._stepped(100.0 + second, note=True)
    assert kept.step_due()  # 2.3 s after the last step, 0.7 s of it steps and notes: under 0.9 of a core


def test_a_run_counted_per_process_leaves_no_rows_file_of_another_run(tmp_path):
    """A trace --aggregates -o writes the counts only: the per-connection files of an earlier
    run in DIR are removed, not left to be taken for this one's."""
    import pandas as pd

    from agent.output import files
    from agent.record.runinfo import RunInfo
    from agent.safefiles import OutputDir

    for name in ("connections.arrow", "connections.pending.arrow", "connections.csv"):
        (tmp_path / name).write_bytes(b"x")
    procs = pd.DataFrame(columns=files.PROCESS_COLUMNS + files.EXTRA_PROCESS_COLUMNS)
    out = OutputDir(tmp_path)
    files.write_aggregates(out, procs, procs, "summary\n", RunInfo(started_at=0.0, ended_at=1.0))
    left = {p.name for p in tmp_path.iterdir()}
    assert not left & {"connections.arrow", "connections.csv", "connections.pending.arrow"}


def test_report_dir_analyses_the_rows_of_a_run_that_was_counted_for_want_of_memory(tmp_path):
    from agent.record import rundir
    from agent.record.runinfo import RunInfo

    with open(tmp_path / rundir.ROWS, "wb") as f:
        writer = rows.RowsWriter(f)
        writer.append(conns_of(1, 2))
        writer.close()
    counted = RunInfo(started_at=0.0, ended_at=1.0, aggregates=[{"pid": 1, "comm": "app", "lives": 2}],
                      analysis_skipped={"records": 2, "needed_bytes": 3, "available_bytes": 1})
    (tmp_path / rundir.RUN).write_text(counted.to_json())
    kept, run = rundir.read(tmp_path)
    conns = kept.frame()
    assert not run.counted_only and list(conns["pid"]) == [1, 2]


def test_the_records_still_waiting_at_the_end_are_made_a_step_at_a_time_and_said_so(tmp_path, monkeypatch):
    """Kept.finish makes the records waiting a step (STEP_RECORDS) at a time and tells made(done,
    total) after each, up to all of them; then the end's own parts."""
    import numpy as np

    from agent.record import layout
    from agent.run import kept as kept_module
    from support.streams import raw

    class Stream:
        held, stepped, finished, settled_early = 0, 0, False, 0

        def step_parts(self, frame, now, grace_s):
            self.stepped += len(frame)
            yield frame.iloc[:0]

        def finish_parts(self, frame, ended_at, followed):
            self.finished = True
            return []

    monkeypatch.setattr(kept_module, "STEP_RECORDS", 40)
    kept = Kept(str(tmp_path))
    stream = Stream()
    kept.start(stream, lambda part: decode.decode(part, OFFSET_NS), tally=None)
    monkeypatch.setattr(kept, "add", lambda rows: None)
    kept.arrive(np.repeat(np.frombuffer(raw("life"), layout.EVENT_DTYPE), 100))
    said = []
    kept.finish([], 10.0, made=lambda done, total: said.append((done, total)))
    assert said == [(40, 100), (80, 100), (100, 100)] and stream.stepped == 100 and stream.finished


def test_what_arrives_during_a_step_or_a_note_is_taken_between_its_parts_and_made_later(tmp_path):
    """Kept calls meanwhile() (the tracer's take) after each part a step or a note writes: what
    arrived in those seconds waits in the backlog (on disk past its 16 MiB), not in the
    drainer's memory, and is made into rows by a later step.  The end, after tracing, calls it
    no more."""
    import numpy as np

    from agent.record import layout
    from agent.safefiles import OutputDir

    class Stream:
        held, stepped, settled_early = 1, 0, 0

        def step_parts(self, frame, now, grace_s):
            self.stepped += len(frame)
            yield from (conns_of(1), conns_of(2), conns_of(3))

        def provisional(self, now, everything):
            yield from (conns_of(4, state="open"), conns_of(5, state="open"))

        def finish_parts(self, frame, ended_at, followed):
            return []

    records = lambda n: np.repeat(np.frombuffer(raw("life"), layout.EVENT_DTYPE), n)  # noqa: E731
    kept, stream, waiting = Kept(str(tmp_path)), Stream(), []

    def meanwhile():
        waiting.append(kept.behind)
        if len(waiting) <= 5:  # (a few only: called at the end, it would never run out)
            kept.arrive(records(10))

    kept.start(stream, lambda part: decode.decode(part, OFFSET_NS), tally=None, meanwhile=meanwhile)
    kept.arrive(records(100))
    kept.step()
    assert stream.stepped == 100 and waiting == [0, 10, 20]  # after each of the step's three parts
    assert kept.note(OutputDir(tmp_path / "out"), RunInfo(OFFSET_NS / 1e9, 10.0 + OFFSET_NS / 1e9))
    assert waiting == [0, 10, 20, 30, 40]  # and after each of the note's two
    kept.finish([], 10.0 + OFFSET_NS / 1e9)
    assert stream.stepped == 150 and len(waiting) == 5 and kept.behind == 0


def test_a_backlog_that_cannot_be_written_during_a_note_is_not_taken_for_a_full_output_directory(tmp_path):
    """A note that cannot write -o's files returns False and the run goes on (the end says so);
    the backlog's own file failing while the note takes what arrived is the tracer's error, as
    it is from a drain."""
    from agent.errors import CannotWrite
    from agent.safefiles import OutputDir

    class Stream:
        held = 1

        def provisional(self, now, everything):
            yield conns_of(4, state="open")

    def meanwhile():
        raise CannotWrite("cannot write to /var/tmp: No space left on device")

    kept = Kept(str(tmp_path))
    kept.start(Stream(), lambda part: decode.decode(part, OFFSET_NS), tally=None, meanwhile=meanwhile)
    with pytest.raises(CannotWrite, match="/var/tmp"):
        kept.note(OutputDir(tmp_path / "out"), RunInfo(OFFSET_NS / 1e9, 10.0 + OFFSET_NS / 1e9))


def test_a_step_behind_takes_the_short_grace_and_one_that_caught_up_or_saw_sightings_the_long(tmp_path, monkeypatch):
    """Kept.step's clock: behind (records still waiting), the time of its last record, with the
    stream's RECORDS_GRACE_S, since every record before it is in hand; caught up, the time now,
    with GRACE_S (what follows its last record may still be in the ring); and GRACE_S too where
    sock_diag's sightings came with the batch (timed when seen, not in the ring's order)."""
    import numpy as np

    from agent.analysis.stream import GRACE_S, RECORDS_GRACE_S
    from agent.record import layout
    from agent.run import kept as kept_module

    class Stream:
        held, settled_early = 0, 0

        def __init__(self):
            self.steps = []

        def step_parts(self, frame, now, grace_s):
            self.steps.append((len(frame), grace_s))
            yield frame.iloc[:0]

    monkeypatch.setattr(kept_module, "STEP_RECORDS", 40)
    kept, stream = Kept(str(tmp_path)), Stream()
    kept.start(stream, lambda part: decode.decode(part, OFFSET_NS), tally=None)
    kept.arrive(np.repeat(np.frombuffer(raw("life"), layout.EVENT_DTYPE), 100))
    for _ in range(3):
        kept.step()
    assert stream.steps == [(40, RECORDS_GRACE_S), (40, RECORDS_GRACE_S), (20, GRACE_S)]
    kept.arrive(np.repeat(np.frombuffer(raw("life"), layout.EVENT_DTYPE), 100))
    kept.arrive(decode.decode(raw("life"), OFFSET_NS).assign(kind="tw_end"))  # (a sighting, as decoded)
    kept.step()
    assert stream.steps[-1] == (41, GRACE_S)
