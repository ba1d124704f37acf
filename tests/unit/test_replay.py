"""`tcpclose report` and `doctor` read a recording through the streaming core (run.replay), a
frame at a time: the rows are those of the whole run analysed at once, whatever the size of
the frames, wherever the snapshot at the start falls, and for a recording cut short."""
import gzip

import pandas as pd
import pytest

from agent.analysis import lives
from agent.record import decode, recording
from agent.run import replay as replaying
from support.incidents import ACTIVE_CLIENT, incident_stream
from support.streaming import cells_differ
from support.streams import HZ, OFFSET_NS, churn, epoch, raw, replay


def _whole(events, run) -> pd.DataFrame:
    return lives.connections(events, run.ended_at, run.timewait_method, run.pods)


@pytest.mark.parametrize("frame_rows", [7, 1000])
@pytest.mark.parametrize("build, method", [(incident_stream, "timers"), (lambda: [churn(400, span=20.0)], "timers"),
                                           (lambda: [churn(400, span=20.0)], None)])
def test_a_recording_read_a_frame_at_a_time_gives_the_rows_of_the_whole_run(tmp_path, monkeypatch, frame_rows,
                                                                            build, method):
    events, run = replay(tmp_path, *build(), ended=150.0, timewait=method)
    monkeypatch.setattr(recording, "ROWS_PER_FRAME", frame_rows)
    kept, read_run = replaying.rows_of(tmp_path / "stream.jsonl")
    conns = kept.frame()
    assert read_run.to_dict() == run.to_dict()
    assert len(conns) and cells_differ(_whole(events, run), conns).empty


def test_a_snapshot_recorded_after_the_first_lives_still_goes_first(tmp_path, monkeypatch):
    """The tracer records its snapshot at the start once the probe is attached: lives drained
    meanwhile come before it in the file.  A life it found is completed by it all the same."""
    events = decode.decode(b"".join([
        raw(skaddr=5, pid=5, comm="early", opened=1.0, ts=1.2, lport=40005, **ACTIVE_CLIENT),
        raw(skaddr=1, pid=0, comm="", owner="none", flags=decode.layout.DEFINES["FLAG_PARTIAL"], lport=40001,
            opened=None, ts=3.0, **ACTIVE_CLIENT)]), OFFSET_NS, HZ)
    snap = pd.DataFrame({"family": "ipv4", "laddr": "127.0.0.1", "lport": [40001, 40002], "raddr": "127.0.0.1",
                         "rport": 8080, "state": "ESTABLISHED", "inode": [7, 8], "since_ack_s": 0.1,
                         "pid": [10, 11], "comm": ["old", "older"], "fd": [3, 3], "cgroup_id": 1})
    existing = decode.from_snapshot(snap, "existing", epoch(1.5), None)
    path = tmp_path / "late-snapshot.jsonl"
    recorder = recording.Recorder(path)
    recorder.write(events.iloc[:1])
    recorder.write(existing)
    recorder.write(events.iloc[1:])
    run = recording.RunInfo(started_at=epoch(0.5), ended_at=epoch(20.0))
    recorder.finish(run)
    monkeypatch.setattr(recording, "ROWS_PER_FRAME", 1)
    kept, _ = replaying.rows_of(path)
    conns = kept.frame()
    by_port = conns.set_index("lport")
    assert (by_port.loc[40001, "comm"], by_port.loc[40001, "initiator"]) == ("old", "active")
    assert (by_port.loc[40002, "comm"], by_port.loc[40002, "initiator"]) == ("older", "open")
    assert cells_differ(_whole(recording.read_recording(path)[0], run), conns).empty


def test_a_recording_cut_short_is_bounded_by_its_events_as_when_read_whole(tmp_path):
    replay(tmp_path, *incident_stream(), ended=150.0, timewait="timers")
    text = gzip.decompress((tmp_path / "stream.jsonl").read_bytes()).decode()
    cut = tmp_path / "cut.jsonl"
    cut.write_text(text[:text.rindex('{"kind": "run"')][:-200])  # no run line, and a last line cut mid-way
    events, whole_run = recording.read_recording(cut)
    kept, run = replaying.rows_of(cut)
    conns = kept.frame()
    assert run.cut_short and (run.started_at, run.ended_at) == (whole_run.started_at, whole_run.ended_at)
    assert len(conns) and cells_differ(_whole(events, whole_run), conns).empty


def test_a_long_replay_says_how_far_it_got_after_each_frame(tmp_path, monkeypatch):
    """made(done, total): the events read and made into rows so far, of all the recording's,
    after each frame; the last says all of them (the end of a long `tcpclose report`)."""
    events, _ = replay(tmp_path, churn(400, span=20.0), ended=150.0)
    monkeypatch.setattr(recording, "ROWS_PER_FRAME", 150)
    said = []
    kept, _ = replaying.rows_of(tmp_path / "stream.jsonl", made=lambda done, total: said.append((done, total)))
    assert [done for done, _ in said] == [*range(150, len(events), 150), len(events)]
    assert {total for _, total in said} == {len(events)} and len(kept.frame())
