"""Decoding raw records: golden bytes in, decoded fields out; recordings in and out."""
import pytest

import json

from agent.analysis import lives
from agent.record import decode, recording
from agent.errors import BadRecording
from support.streams import OFFSET_NS, RAW, epoch, raw, replay, states_mask, recorded_text


def test_record_size_matches_the_packed_layout():
    assert RAW.size == 160


def test_ipv4_record_decodes_every_field():
    data = raw(states=("SYN_SENT", "ESTABLISHED", "FIN_WAIT1", "FIN_WAIT2"), last="FIN_WAIT2",
               pid=4242, tid=4243, comm="curl", laddr="10.1.2.3", lport=51000, raddr="127.0.0.53",
               rport=443, opened=1.5, estab=1.6, fin=1.7, ts=1.9, cgroup_id=77, flags=4)
    row = decode.decode(data, OFFSET_NS).iloc[0]
    assert (row.kind, row.pid, row.tid, row.comm, row.cgroup_id) == ("life", 4242, 4243, "curl", 77)
    assert (row.family, row.laddr, row.lport, row.raddr, row.rport) == ("ipv4", "10.1.2.3", 51000, "127.0.0.53", 443)
    assert row.states_raw == states_mask("SYN_SENT", "ESTABLISHED", "FIN_WAIT1", "FIN_WAIT2")
    assert (row.last_state, row.flags_raw, row.owner_src) == ("FIN_WAIT2", 4, "syscall")
    assert row.opened_at == pytest.approx(epoch(1.5))
    assert row.estab_at == pytest.approx(epoch(1.6))
    assert row.fin_at == pytest.approx(epoch(1.7))
    assert row.event_at == pytest.approx(epoch(1.9))
    assert row.close_wait_at != row.close_wait_at  # unset -> NaN


def test_ipv6_addresses_decode_in_full():
    row = decode.decode(raw(family=6, laddr="::1", raddr="2001:db8::7"), OFFSET_NS).iloc[0]
    assert (row.family, row.laddr, row.raddr) == ("ipv6", "::1", "2001:db8::7")


@pytest.mark.parametrize("mixing", ["as it is", "every address alike"])
def test_each_address_of_a_batch_is_its_own_however_they_hash(monkeypatch, mixing):
    """addresses() groups rows by a hash of their fields; where two hash alike (forced here)
    it must still name each row's own address."""
    import ipaddress

    import numpy as np

    rng = np.random.default_rng(7)
    fields = np.zeros((500, 16), np.uint8)
    fields[:, :4] = rng.integers(0, 3, (500, 4))
    fields[250:, 4:] = rng.integers(0, 2, (250, 12))  # the IPv6 half: differences past the 4th byte
    family = np.where(np.arange(500) < 250, 2, 10)
    if mixing != "as it is":
        monkeypatch.setattr(decode.pd, "factorize", lambda values: (np.zeros(len(values), np.int64), values[:1]))
    names = decode.addresses(fields, family)
    assert list(names) == [str(ipaddress.IPv4Address(bytes(f[:4]))) if fam == 2 else str(ipaddress.IPv6Address(bytes(f)))
                           for f, fam in zip(fields, family)]


def test_no_events_has_every_column_and_each_is_a_frame_of_its_own():
    """decode.empty_events hands out copies of one frame: a caller that adds to its frame
    must not change the next caller's."""
    first = decode.empty_events()
    assert list(first.columns) == list(decode.EVENT_COLUMNS) and len(first) == 0
    first["extra"] = []
    first.loc[0, "kind"] = "life"
    second = decode.empty_events()
    assert list(second.columns) == list(decode.EVENT_COLUMNS) and len(second) == 0


def test_a_partial_record_is_refused():
    with pytest.raises(ValueError, match="whole number"):
        decode.decode(raw()[:100], OFFSET_NS)


def test_a_recording_reads_back_what_was_written(tmp_path):
    data = raw(comm="a", skaddr=1) + raw("open", comm="b", skaddr=2, last="CLOSE_WAIT")
    events, run = replay(tmp_path, data)
    assert list(events["comm"]) == ["a", "b"]
    assert list(events["kind"]) == ["life", "open"]
    assert run.ended_at == pytest.approx(epoch(10.0))


def test_a_recording_from_before_the_timewait_columns_still_reports(tmp_path):
    """Recordings made before TIME_WAIT ends were followed lack the tw_*, netns and fd columns."""
    replay(tmp_path, raw(comm="old", states=("SYN_SENT", "ESTABLISHED", "FIN_WAIT1", "FIN_WAIT2")))
    path = tmp_path / "stream.jsonl"
    lines = [json.loads(line) for line in recorded_text(path).splitlines()]
    for row in lines[:-1]:
        for column in set(decode.EVENT_COLUMNS) - set(decode.REQUIRED_COLUMNS):
            del row[column]
    del lines[-1]["timewait_method"]
    path.write_text("".join(json.dumps(row) + "\n" for row in lines))
    events, run = recording.read_recording(path)
    conn = lives.connections(events, run.ended_at, run.timewait_method).iloc[0]
    assert (conn.comm, conn.initiator, conn.tw_end_reason) == ("old", "active", "open")


@pytest.mark.parametrize("line, message", [
    ("not json", r"stream.jsonl:2: not JSON"),
    ('{"comm": "x"}', r"stream.jsonl:2: not a tcpclose event"),
    ('{"kind": "life"}', r"stream.jsonl:2: not a tcpclose event \(missing skaddr"),
])
def test_a_corrupt_recording_names_its_line(tmp_path, line, message):
    replay(tmp_path, raw())
    path = tmp_path / "stream.jsonl"
    lines = recorded_text(path).splitlines()
    path.write_text("\n".join([lines[0], line, *lines[1:]]) + "\n")
    with pytest.raises(BadRecording, match=message):
        recording.read_recording(path)


@pytest.mark.parametrize("column, value, ok", [("pid", 20.0, True), ("pid", 0.5, False), ("lport", 80.25, False),
                                               ("opened_at", 1.5, True)])
def test_ids_ports_and_counts_must_be_whole_numbers(column, value, ok):
    from agent.record.schema import event_problem

    row = {"kind": "life", "skaddr": 1, "pid": 20, "comm": "x", "owner_src": "syscall", "family": "ipv4",
           "laddr": "127.0.0.1", "lport": 1, "raddr": "127.0.0.1", "rport": 2, "states_raw": 0,
           "last_state": "CLOSE", "flags_raw": 0, "event_at": 2.0, column: value}
    assert (event_problem(row) is None) == ok, event_problem(row)


def test_the_raw_records_timewaits_counted_are_those_the_decoded_lives_are_due():
    """The progress line and the agent count the closes due a TIME_WAIT from the raw records,
    without making their initiators' text: the same lives as the rows' rule."""
    import numpy as np

    from agent.analysis import rules
    from agent.record import layout

    closes = [raw(states=("ESTABLISHED", "FIN_WAIT1", "FIN_WAIT2"), last="FIN_WAIT2"),  # active
              raw(states=("ESTABLISHED", "FIN_WAIT1", "CLOSING"), last="CLOSING"),  # simultaneous
              raw(states=("ESTABLISHED", "CLOSE_WAIT", "LAST_ACK"), last="LAST_ACK"),  # passive
              raw(states=("ESTABLISHED",), last="ESTABLISHED", flags=layout.DEFINES["FLAG_RST_RECEIVED"]),
              raw(states=("SYN_SENT",), last="SYN_SENT"),  # never established
              raw(states=("ESTABLISHED",), last="ESTABLISHED", flags=layout.DEFINES["FLAG_MISSED_CLOSE"]),  # unseen
              raw("open", states=("ESTABLISHED", "FIN_WAIT1", "FIN_WAIT2"), last="FIN_WAIT2"),  # not closed yet
              raw("reset_sent")]
    records = np.frombuffer(b"".join(closes), dtype=layout.EVENT_DTYPE)
    decoded = decode.decode(records, OFFSET_NS)
    due = rules.raw_timewaits_due(records)
    assert due.tolist() == [True, True] + [False] * 6
    assert due.tolist() == rules.timewait_due(lives.initiators(decoded)).tolist()
