"""The rows' files written on a thread of their own at the end of a trace (run.writer_thread):
in order, beside the caller, and with a write's error raised to it."""
import threading

import numpy as np
import pandas as pd
import pytest

from agent.analysis.stream import Stream
from agent.analysis.tally import Tally
from agent.record import connections_csv, decode, layout, rows, rundir
from agent.run import kept as kept_module
from agent.run.kept import Kept
from agent.run.writer_thread import WriterThread
from agent.safefiles import OutputDir
from support.streams import HZ, OFFSET_NS, churn, epoch

CONNECTIONS = 300


def test_the_caller_goes_on_while_one_item_is_written_and_waits_for_it_before_the_next():
    written, release = [], threading.Event()

    def write(item):
        if item == "first":
            assert release.wait(10)
        written.append(item)

    writer = WriterThread(write)
    writer("first")  # returns while "first" is being written
    assert written == []
    second = threading.Thread(target=writer, args=("second",))
    second.start()
    second.join(0.3)
    assert second.is_alive()  # (one item at most waits: the next call waits for the one being written)
    release.set()
    second.join(10)
    writer("third")
    writer.close()
    assert written == ["first", "second", "third"]


def test_an_error_of_a_write_is_raised_to_the_caller_at_its_next_call_or_at_close():
    def write(item):
        if item == "bad":
            raise OSError(28, "No space left on device")

    writer = WriterThread(write)
    writer("bad")
    with pytest.raises(OSError, match="No space"):
        writer("next")
    writer.close()  # (the error was raised once; "next" was not given)

    writer = WriterThread(write)
    writer("bad")
    with pytest.raises(OSError, match="No space"):
        writer.close()
    assert not [t for t in threading.enumerate() if t.name.startswith("tcpclose-rows")]


def finishing(tmp_path, monkeypatch) -> Kept:
    """A trace -o with every record still waiting at its end, in steps of 100 records."""
    monkeypatch.setattr(kept_module, "STEP_RECORDS", 100)
    raw = np.frombuffer(churn(CONNECTIONS, span=30.0), layout.EVENT_DTYPE)
    kept = Kept.into(OutputDir(tmp_path / "out"), "csv")
    kept.start(Stream("timers", {}, decode.empty_events()), lambda part: decode.decode(part, OFFSET_NS, HZ),
               Tally(epoch(0.5), True))
    kept.arrive(raw[np.argsort(raw["ts_ns"], kind="stable")])
    return kept


def test_the_end_writes_every_row_once_in_both_files_in_the_order_made(tmp_path, monkeypatch):
    kept = finishing(tmp_path, monkeypatch)
    order = []
    add = Kept.add

    def noted(self, made):
        order.append(made)
        add(self, made)

    monkeypatch.setattr(Kept, "add", noted)
    kept.finish([], epoch(200.0))
    made = pd.concat(order, ignore_index=True)
    assert len(made) == 2 * CONNECTIONS and len(order) > 5  # (the end made many parts)
    arrow = rows.read(tmp_path / "out" / rundir.ROWS)
    csv = pd.read_csv(tmp_path / "out" / connections_csv.NAME)
    for written in (arrow, csv):
        assert written[["pid", "lport", "rport", "role"]].values.tolist() == \
            made[["pid", "lport", "rport", "role"]].values.tolist()


def test_a_failed_write_at_the_end_reaches_the_caller_and_leaves_no_thread(tmp_path, monkeypatch):
    kept = finishing(tmp_path, monkeypatch)
    calls = []
    append = connections_csv.Writer.append

    def failing(self, table):
        calls.append(table.num_rows)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        append(self, table)

    monkeypatch.setattr(connections_csv.Writer, "append", failing)
    with pytest.raises(OSError, match="No space"):
        kept.finish([], epoch(200.0))
    assert len(calls) == 3  # (nothing written after the failure)
    assert not [t for t in threading.enumerate() if t.name.startswith("tcpclose-rows")]
