"""The connection rows made as the records arrive (analysis.stream) are those of the whole run
analysed at once, however the arrivals are cut into batches; and what the stream holds meanwhile
is what is still alive, not the run."""
import pandas as pd
import pytest

from agent.analysis import reuses
from agent.analysis import stream as streaming
from agent.analysis.stream import GRACE_S, RECORDS_GRACE_S, Stream
from agent.record import decode, layout
from support.incidents import ACTIVE_CLIENT, PASSIVE_SERVER, incident_stream
from support.streaming import cells_differ, differences, left_by_a_kill, streamed
from support.streams import churn, epoch, raw, replay, timewait

T1 = 0xFFFF8881000A0000
KERNEL_ADDRESS = 0xFFFF888123456789  # (past 2**53: a float would lose it)
SERVER_CLOSER = dict(states=("SYN_RECV", "ESTABLISHED", "FIN_WAIT1", "FIN_WAIT2"), last="FIN_WAIT2")


def kinds_of_endings():
    """One of each: expiries, a reuse marked by the BPF side, a reuse only a client's open shows,
    kills, a FIN_WAIT2 substate, an overflow, a lost end, a reset sent after its close, a life
    credited to a listener other processes' lives show shared, lives still open and a timewait
    alive at the end."""
    out = []
    for i in range(6):  # clients that close first; their TIME_WAITs expire 60 s later
        timer, at = T1 + i * 0x100, 1.0 + i
        out += [raw(skaddr=10 + i, pid=10, comm="client", opened=at - 0.5, ts=at, lport=41000 + i,
                    tw_timer=timer, tw_start=at, **ACTIVE_CLIENT),
                timewait("expired", timer=timer, start=at, end=at + 60.0)]
    out += [raw(skaddr=30, pid=11, comm="rebinder", opened=2.0, ts=2.5, lport=42000, tw_timer=T1 + 0x1000,
                tw_start=2.5, **ACTIVE_CLIENT),
            timewait("reused", timer=T1 + 0x1000, start=2.5, end=4.0),
            raw(skaddr=31, pid=12, comm="rebinder2", opened=3.0, ts=3.2, lport=42001, tw_timer=T1 + 0x2000,
                tw_start=3.2, **ACTIVE_CLIENT),
            timewait("cancelled", timer=T1 + 0x2000, start=3.2, end=7.0),
            # the connect() that took it over (no mark from the BPF side): it arrives when it closes
            raw(skaddr=32, pid=12, comm="rebinder2", opened=7.0, ts=20.0, lport=42001, **ACTIVE_CLIENT),
            raw(skaddr=33, pid=13, comm="web", opened=3.0, ts=3.5, lport=8080, rport=43000, tw_timer=T1 + 0x3000,
                tw_start=3.5, **SERVER_CLOSER),
            timewait("cancelled", timer=T1 + 0x3000, start=3.5, end=9.0),  # a SYN killed it
            raw(skaddr=34, pid=14, comm="caller", opened=4.0, ts=4.5, lport=44000, tw_timer=T1 + 0x4000,
                tw_start=4.5, tw_timeout=2.0, **ACTIVE_CLIENT),
            timewait("expired", timer=T1 + 0x4000, start=4.5, end=6.5, timeout=2.0),
            raw(skaddr=35, pid=15, comm="overflow", opened=4.0, ts=4.2, lport=45000, **ACTIVE_CLIENT),
            raw(skaddr=36, pid=16, comm="lost", opened=4.0, ts=4.3, lport=46000, tw_timer=T1 + 0x5000,
                tw_start=4.3, **ACTIVE_CLIENT),
            raw(skaddr=KERNEL_ADDRESS, pid=17, comm="aborter", opened=5.0, ts=5.5, lport=47000,
                states=("SYN_SENT", "ESTABLISHED"), last="ESTABLISHED"),
            raw("reset_sent", skaddr=KERNEL_ADDRESS, pid=0, comm="", ts=5.5001),
            raw(skaddr=38, pid=18, comm="prefork", opened=5.0, ts=6.0, lport=9000, rport=48000, **PASSIVE_SERVER),
            raw(skaddr=39, pid=19, comm="worker", opened=5.0, ts=6.5, lport=9000, rport=48001,
                **(PASSIVE_SERVER | {"owner": "syscall"})),
            raw("open", skaddr=40, pid=20, comm="leaky", states=("SYN_RECV", "ESTABLISHED", "CLOSE_WAIT"),
                last="CLOSE_WAIT", close_wait=3.0, ts=0, owner="listener", lport=7000, rport=45000),
            raw(skaddr=41, pid=21, comm="late", opened=8.0, ts=9.0, lport=49000, tw_timer=T1 + 0x6000,
                tw_start=9.0, **ACTIVE_CLIENT),
            timewait(None, timer=T1 + 0x6000, start=9.0)]
    return out


STREAMS = {
    "incidents": (incident_stream, "timers"),
    "kinds of endings": (kinds_of_endings, "timers"),
    "kinds of endings, no timers": (kinds_of_endings, None),
}


@pytest.mark.parametrize("name", STREAMS)
@pytest.mark.parametrize("cuts", [0, 3, 1000])  # one batch, a few, a record a batch
def test_the_rows_made_as_records_arrive_are_those_of_the_whole_run(tmp_path, monkeypatch, name, cuts):
    monkeypatch.setattr(streaming, "PART_LIVES", 2)  # (the end of the run makes its rows in parts)
    build, method = STREAMS[name]
    events, run = replay(tmp_path, *build(), ended=150.0, timewait=method)
    for seed in range(3):
        assert differences(events, run, cuts, seed).empty


@pytest.mark.parametrize("name", STREAMS)
def test_the_timewaits_still_followed_handed_over_apart_give_the_same_rows(tmp_path, monkeypatch, name):
    """The tracer hands the timewait sockets the BPF side still followed at the end apart from
    the other events, with their own columns only: each is found for its life's part, and a
    cancel read there is an end like any other."""
    monkeypatch.setattr(streaming, "PART_LIVES", 2)
    build, method = STREAMS[name]
    events, run = replay(tmp_path, *build(), ended=150.0, timewait=method)
    assert (events["kind"] == "tw_open").any()
    for cuts in (0, 3):
        assert differences(events, run, cuts, apart=True).empty


def test_a_recorded_churn_streamed_a_second_at_a_time_gives_the_same_rows(tmp_path, monkeypatch):
    monkeypatch.setattr(streaming, "PART_LIVES", 100)
    events, run = replay(tmp_path, churn(3000, span=30.0), ended=100.0, timewait="timers")
    assert differences(events, run, cuts=30).empty


def test_a_step_makes_its_rows_a_part_at_a_time_each_handed_on_before_the_next_is_made(tmp_path, monkeypatch):
    """A step's rows cost memory while they are made (~2.5 kB a life): a step with more lives
    final than PART_LIVES makes them in parts of at most that many, lazily, and the rows are
    those of one part."""
    events, run = replay(tmp_path, churn(300, span=10.0), ended=100.0, timewait="timers")
    arrivals = events[events["kind"].isin(streaming.ARRIVING)]
    later = epoch(100.0 + GRACE_S + 1)  # (a life is final GRACE_S after it arrived at the earliest)

    def held_a_while():
        stream = Stream("timers", {})
        assert stream.step(arrivals, epoch(100.0)).empty
        return stream

    whole = held_a_while().step(decode.empty_events(), later)  # (PART_LIVES: more than its lives)
    assert len(whole) > 100
    made = []
    connection_rows = streaming.connection_rows
    monkeypatch.setattr(streaming, "connection_rows", lambda *a, **k: made.append(1) or connection_rows(*a, **k))
    monkeypatch.setattr(streaming, "PART_LIVES", 40)
    stream = held_a_while()
    made.clear()
    parts = stream.step_parts(decode.empty_events(), later)
    first = next(parts)
    assert len(made) == 1 and 0 < len(first) <= 40  # the next part is not made yet
    rest = list(parts)
    assert len(rest) == -(-len(whole) // 40) - 1 and all(len(part) <= 40 for part in rest)
    assert cells_differ(whole, decode.concat([first, *rest])).empty
    # every life made final went; the servers' (their listener's children) wait for the end
    assert stream.held == (arrivals["kind"] == "life").sum() - len(whole) == 300


def test_a_client_that_came_with_the_end_of_the_run_shows_a_cancel_a_reuse(tmp_path, monkeypatch):
    """The end of the run makes its rows in parts; a client's cancelled TIME_WAIT and the
    client that took it over, both still held then (its own TIME_WAIT open, its life read in
    the last drain), are made in one."""
    monkeypatch.setattr(streaming, "PART_LIVES", 1)
    fillers = [raw(skaddr=50 + i, pid=10, comm="client", opened=1.0, ts=2.0 + i, lport=41000 + i,
                   tw_timer=T1 + 0x100 * i, tw_start=2.0 + i, **ACTIVE_CLIENT) for i in range(3)]
    events, run = replay(tmp_path, *fillers,
                         raw(skaddr=31, pid=12, comm="rebinder", opened=3.0, ts=3.2, lport=42001,
                             tw_timer=T1 + 0x2000, tw_start=3.2, **ACTIVE_CLIENT),
                         timewait("cancelled", timer=T1 + 0x2000, start=3.2, end=7.0),
                         *(timewait(None, timer=T1 + 0x100 * i, start=2.0 + i) for i in range(3)),
                         timewait(None, timer=T1 + 0x3000, start=9.0),
                         raw(skaddr=32, pid=12, comm="rebinder", opened=7.0, ts=9.0, lport=42001,
                             tw_timer=T1 + 0x3000, tw_start=9.0, **ACTIVE_CLIENT),
                         ended=10.0, timewait="timers")
    for cuts in (0, 2):
        assert differences(events, run, cuts).empty
    rows, _ = streamed(events, run, cuts=0)
    assert rows.set_index("skaddr")["tw_end_reason"].loc[31] == "reused"


@pytest.mark.parametrize("part_lives", [1, 1000])  # (a step's rows made a life at a time, or at once)
def test_a_client_whose_record_came_before_the_cancel_it_made_shows_a_reuse(tmp_path, monkeypatch, part_lives):
    """Records of two CPUs: the client that took a TIME_WAIT over closed, and its record came
    before the cancel's.  Looked at when the cancel arrives, while the client is still held
    (its own TIME_WAIT), not only when a life on the same ports arrives next."""
    monkeypatch.setattr(streaming, "PART_LIVES", part_lives)
    events, run = replay(tmp_path,
                         raw(skaddr=31, pid=12, comm="rebinder", opened=3.0, ts=3.2, lport=42001,
                             tw_timer=T1 + 0x2000, tw_start=3.2, **ACTIVE_CLIENT),
                         raw(skaddr=32, pid=12, comm="rebinder", opened=7.0, ts=9.0, lport=42001,
                             tw_timer=T1 + 0x3000, tw_start=9.0, **ACTIVE_CLIENT),
                         timewait("cancelled", timer=T1 + 0x2000, start=3.2, end=7.0),
                         timewait("expired", timer=T1 + 0x3000, start=9.0, end=69.0),
                         ended=150.0, timewait="timers")
    assert differences(events, run, cuts=1000).empty
    rows, _ = streamed(events, run, cuts=1000)
    assert rows.set_index("skaddr")["tw_end_reason"].loc[31] == "reused"


def test_a_cancel_a_client_was_seen_taking_is_final_once_its_grace_is_over(tmp_path):
    """The client that took a TIME_WAIT over arrives with the cancel, within the cancelled life's
    grace: from then on that end says "reused" to every lookup, and the life is not parked to
    the end of the run as a cancel nothing explained."""
    events, run = replay(tmp_path,
                         raw(skaddr=31, pid=12, comm="rebinder", opened=3.0, ts=6.5, lport=42001,
                             tw_timer=T1 + 0x2000, tw_start=6.5, **ACTIVE_CLIENT),
                         timewait("cancelled", timer=T1 + 0x2000, start=6.5, end=7.0),
                         raw(skaddr=32, pid=12, comm="rebinder", opened=6.9, ts=7.5, lport=42001,
                             tw_timer=T1 + 0x3000, tw_start=7.5, **ACTIVE_CLIENT),
                         timewait("expired", timer=T1 + 0x3000, start=7.5, end=67.5),
                         ended=150.0, timewait="timers")
    stream = Stream("timers", {})
    assert stream.step(events.iloc[:3], epoch(7.5)).empty and stream.held == 2  # (within their grace)
    rows = stream.step(events.iloc[:0], epoch(7.5 + GRACE_S + 0.1))
    assert list(rows["skaddr"]) == [31] and list(rows["tw_end_reason"]) == ["reused"]
    assert stream.held == 1  # the client, until its own TIME_WAIT ends


def test_a_parked_cancel_is_not_looked_at_again_when_its_ports_come_back_later(tmp_path, monkeypatch):
    """At full churn a client's ports come back every 20 s or so: a cancel no connect() was
    seen taking stays parked to the end, and is not looked at again at each of them."""
    looked = []
    reused_now = reuses.reused_now
    monkeypatch.setattr(reuses, "reused_now", lambda *args: looked.append(len(args[-1])) or reused_now(*args))
    later = [raw(skaddr=40 + i, pid=12, comm="rebinder", opened=20.0 * i, ts=20.0 * i + 0.5, lport=42001,
                 **ACTIVE_CLIENT) for i in range(1, 5)]
    events, run = replay(tmp_path,
                         raw(skaddr=31, pid=12, comm="rebinder", opened=3.0, ts=3.2, lport=42001,
                             tw_timer=T1 + 0x2000, tw_start=3.2, **ACTIVE_CLIENT),
                         timewait("cancelled", timer=T1 + 0x2000, start=3.2, end=7.0), *later,
                         ended=150.0, timewait="timers")
    assert differences(events, run, cuts=1000).empty
    assert looked == [1]  # as the cancel arrived


def test_a_snapshot_at_the_start_completes_the_lives_it_found_and_stays_open_for_the_rest(tmp_path):
    events, run = replay(tmp_path, raw(skaddr=1, pid=0, comm="", owner="none", flags=layout.DEFINES["FLAG_PARTIAL"],
                                       lport=40001, opened=None, ts=3.0, **{k: v for k, v in ACTIVE_CLIENT.items()}),
                         ended=20.0)
    snap = pd.DataFrame({"family": "ipv4", "laddr": "127.0.0.1", "lport": [40001, 40002], "raddr": "127.0.0.1",
                         "rport": 8080, "state": "ESTABLISHED", "inode": [7, 8], "since_ack_s": 0.1,
                         "pid": [10, 11], "comm": ["old", "older"], "fd": [3, 3], "cgroup_id": 1})
    existing = decode.from_snapshot(snap, "existing", epoch(1.5), None)
    whole = pd.concat([existing, events], ignore_index=True)
    assert differences(whole, run, cuts=1).empty
    rows, _ = streamed(whole, run, cuts=1)
    by_port = rows.set_index("lport")
    assert (by_port.loc[40001, "comm"], by_port.loc[40001, "initiator"]) == ("old", "active")
    assert (by_port.loc[40002, "comm"], by_port.loc[40002, "initiator"]) == ("older", "open")


def test_a_life_waits_for_the_end_of_its_timewait_and_then_is_final(tmp_path):
    events, run = replay(tmp_path, raw(skaddr=KERNEL_ADDRESS, pid=7, comm="closer", ts=2.0, tw_timer=T1,
                                       tw_start=2.0, **ACTIVE_CLIENT),
                         timewait("expired", timer=T1, start=2.0, end=62.0), ended=70.0, timewait="timers")
    life, end = events.iloc[[0]], events.iloc[[1]]
    stream = Stream("timers", {})
    assert stream.step(life, epoch(30.0)).empty and stream.held == 1  # long past its grace: it waits
    rows = stream.step(end, epoch(62.0))
    assert list(rows["tw_end_reason"]) == ["expired"] and rows["tw_s"].iloc[0] == pytest.approx(60.0)
    assert stream.held == 0


def test_a_socket_address_stays_whole_beside_a_timewait_still_open_whose_record_has_none(tmp_path):
    """A recording's end comes in a frame of its own, where a timewait still open has no socket
    address (NaN: a float column).  Its life's row is made beside it, but not in one frame with
    it: the address (past 2**53) would have gone through a float."""
    events, run = replay(tmp_path, raw(skaddr=KERNEL_ADDRESS, pid=7, comm="closer", ts=2.0, tw_timer=T1,
                                       tw_start=2.0, **ACTIVE_CLIENT),
                         timewait(None, timer=T1, start=2.0), ended=10.0, timewait="timers")
    stream = Stream("timers", {})
    assert stream.step(events[events["kind"] == "life"], epoch(5.0)).empty
    still_open = events[events["kind"] == "tw_open"].assign(skaddr=float("nan"))
    rows = stream.finish(still_open, run.ended_at)
    assert list(rows["tw_end_reason"]) == ["open"] and rows["skaddr"].iloc[0] == KERNEL_ADDRESS


def test_a_reset_that_arrives_a_batch_after_its_life_is_still_its_own(tmp_path):
    events, run = replay(tmp_path, raw(skaddr=KERNEL_ADDRESS, pid=7, comm="aborter", ts=2.0,
                                       states=("SYN_SENT", "ESTABLISHED"), last="ESTABLISHED"),
                         raw("reset_sent", skaddr=KERNEL_ADDRESS, pid=0, comm="", ts=2.0001), ended=10.0)
    stream = Stream(None, {})
    assert stream.step(events.iloc[[0]], epoch(2.0)).empty  # within its grace
    rows = stream.step(events.iloc[[1]], epoch(2.0 + GRACE_S + 0.1))
    assert list(rows["rst_sent"]) == [True] and list(rows["initiator"]) == ["reset_local"]


def test_a_step_on_its_records_own_clock_holds_a_life_only_until_the_records_after_it_are_in(tmp_path):
    """Behind (or replaying), a step's clock is its last record's time, and every record the ring
    held before that one is in: a life waits RECORDS_GRACE_S of its records' time, not GRACE_S,
    and the reset that follows it in the next batch is still its own."""
    events, run = replay(tmp_path, raw(skaddr=KERNEL_ADDRESS, pid=7, comm="aborter", ts=2.0,
                                       states=("SYN_SENT", "ESTABLISHED"), last="ESTABLISHED"),
                         raw("reset_sent", skaddr=KERNEL_ADDRESS, pid=0, comm="", ts=2.0001),
                         raw(skaddr=KERNEL_ADDRESS + 64, pid=7, comm="later", ts=2.4, **ACTIVE_CLIENT), ended=10.0)
    later = epoch(2.0 + RECORDS_GRACE_S + 0.15)
    assert RECORDS_GRACE_S + 0.15 < GRACE_S
    for grace_s, made in ((GRACE_S, 0), (RECORDS_GRACE_S, 1)):
        stream = Stream(None, {})
        assert stream.step(events.iloc[[0]], epoch(2.0), grace_s).empty
        rows = stream.step(events.iloc[[1, 2]], later, grace_s)
        assert len(rows) == made and stream.held == 2 - made
    assert list(rows["comm"]) == ["aborter"] and list(rows["rst_sent"]) == [True]
    assert list(rows["initiator"]) == ["reset_local"]


def test_what_a_churn_leaves_held_is_what_is_alive_not_the_run(tmp_path):
    """120 s of closes whose TIME_WAITs last 60 s: the lives waiting are those of the last
    minute, and once the ends came none is left; the rows all came out on the way."""
    events, run = replay(tmp_path, churn(6000, span=120.0), ended=200.0, timewait="timers")
    events = events.sort_values("event_at", kind="stable")
    events.loc[events["comm"] == "churn-server", "owner_src"] = "syscall"  # its own close(): not parked
    stream, made, most = Stream("timers", {}), 0, 0
    for second in range(1, 190):
        batch = events[(events["event_at"] > epoch(second - 1)) & (events["event_at"] <= epoch(second))]
        made += len(stream.step(batch, epoch(second)))
        most = max(most, stream.held)
    lives = int((events["kind"] == "life").sum())
    assert made == lives  # every row final before the end, none twice
    assert stream.held == 0
    # the clients' lives of the last 60 s (+ the grace): a half of those of the run, at most
    assert 0.45 * lives / 2 < most <= (60 + GRACE_S + 1) / 120 * lives / 2 + 10


def test_an_end_that_never_comes_is_given_up_once_no_timewait_could_still_live(tmp_path):
    events, run = replay(tmp_path, raw(skaddr=1, pid=7, comm="closer", ts=2.0, tw_timer=T1, tw_start=2.0,
                                       **ACTIVE_CLIENT), ended=400.0, timewait="timers")
    stream = Stream("timers", {})
    assert stream.step(events, epoch(150.0)).empty
    rows = stream.step(events.iloc[:0], epoch(2.0 + 60.0 + 120.0 + 1))
    assert list(rows["tw_end_reason"]) == ["unknown"] and stream.settled_early == 1


def test_lives_parked_to_the_end_are_bounded(tmp_path, monkeypatch):
    monkeypatch.setattr(streaming, "PARKED_MAX", 3)
    server = [raw(skaddr=100 + i, pid=9, comm="server", opened=1.0 + i, ts=1.5 + i, lport=9000, rport=40000 + i,
                  **PASSIVE_SERVER) for i in range(5)]
    events, run = replay(tmp_path, *server, ended=20.0)
    stream = Stream(None, {})
    assert stream.step(events, epoch(19.0)).empty
    rows = stream.step(events.iloc[:0], epoch(19.0 + GRACE_S))
    assert sorted(rows["rport"]) == [40000, 40001]  # the oldest two, settled with what is known
    assert set(rows["owner_src"]) == {"listener"}
    assert stream.held == 3 and stream.settled_early == 2
    assert sorted(stream.finish(events.iloc[:0], run.ended_at)["rport"]) == [40002, 40003, 40004]


def test_the_sock_diag_fallback_gives_the_same_rows_streamed(tmp_path, monkeypatch):
    """--timewait diag: the ends are sightings named by 4-tuple, arriving as the polls see them go."""
    monkeypatch.setattr(streaming, "PART_LIVES", 1)
    closers = [raw(skaddr=1 + i, pid=7, comm="closer", opened=1.0 + i, ts=2.0 + i, lport=40000 + i, **ACTIVE_CLIENT)
               for i in range(3)]
    newcomer = raw(skaddr=9, pid=7, comm="closer", opened=4.5, ts=30.0, lport=40001, **ACTIVE_CLIENT)
    events, run = replay(tmp_path, *closers, newcomer, ended=150.0, timewait="diag")
    tw = dict(family="ipv4", laddr="127.0.0.1", raddr="127.0.0.1", rport=8080)
    ends = decode.from_timewait_watch([tw | {"lport": 40000, "first_seen": epoch(2.5), "end": epoch(62.0), "how": "expired"},
                                       tw | {"lport": 40001, "first_seen": epoch(3.5), "end": epoch(4.5), "how": "cancelled"}],
                                      "tw_end", 0)
    events = pd.concat([events, ends], ignore_index=True).sort_values("event_at", kind="stable", ignore_index=True)
    for cuts in (0, 2, 100):
        assert differences(events, run, cuts).empty
    reasons = streamed(events, run, cuts=100)[0].set_index("skaddr")["tw_end_reason"]
    assert (reasons[1], reasons[2], reasons[3]) == ("expired", "reused", "unknown")


def test_a_run_killed_midway_has_its_held_lives_as_they_stood_and_no_life_twice(tmp_path):
    """What trace -o leaves behind (record.rundir): the rows made, and at each interval the
    rows of the lives held, as if the run ended then; a life made final after that interval is
    read once, as final."""
    from agent.record import rundir

    events, run = replay(tmp_path, raw(skaddr=1, pid=7, comm="closer", ts=2.0, tw_timer=T1, tw_start=2.0,
                                       lport=40001, **ACTIVE_CLIENT),
                         raw(skaddr=2, pid=7, comm="closer", ts=3.0, tw_timer=T1 + 0x100, tw_start=3.0,
                             lport=40002, **ACTIVE_CLIENT),
                         timewait("expired", timer=T1, start=2.0, end=62.0), ended=70.0, timewait="timers")
    stream = Stream("timers", {})
    assert stream.step(events.iloc[:2], epoch(30.0)).empty
    pending = decode.concat(list(stream.provisional(epoch(30.0))))
    assert list(pending["tw_end_reason"]) == ["open", "open"] and list(pending["tw_s"]) == pytest.approx([28.0, 27.0])
    assert stream.held == 2  # changed nothing
    made = stream.step(events.iloc[2:], epoch(62.0))  # after the interval: one made final
    left_by_a_kill(tmp_path, made, pending, epoch(0.0), epoch(30.0))
    kept, run = rundir.read(tmp_path)
    conns = kept.frame()
    assert sorted(zip(conns["lport"], conns["tw_end_reason"])) == [(40001, "expired"), (40002, "open")]
    assert run.ended_at == pytest.approx(epoch(62.0))  # where its rows stop


def test_each_interval_notes_only_the_held_lives_whose_rows_are_new_or_may_change(tmp_path, monkeypatch):
    """A TIME_WAIT held for a minute has its provisional row written once, not every interval
    (record.rundir.Pending); a life in its grace and one parked to the end are written again;
    the file is made anew once most of its rows are of lives no longer held; and a run killed
    then reads each life once, a TIME_WAIT still open as old as the run."""
    from agent.record import rows, rundir
    from agent.record.runinfo import RunInfo
    from agent.safefiles import OutputDir

    events, run = replay(tmp_path, raw(skaddr=1, pid=7, comm="closer", ts=2.0, tw_timer=T1, tw_start=2.0,
                                       lport=40001, **ACTIVE_CLIENT),
                         raw(skaddr=2, pid=8, comm="child", ts=3.0, lport=8080, rport=40009,
                             **PASSIVE_SERVER),
                         raw(skaddr=3, pid=7, comm="closer", ts=29.5, tw_timer=T1 + 0x100, tw_start=29.5,
                             lport=40003, **ACTIVE_CLIENT),
                         timewait("expired", timer=T1 + 0x100, start=29.5, end=89.5), ended=100.0, timewait="timers")
    out = OutputDir(tmp_path / "run")
    pending, stream = rundir.Pending(out), Stream("timers", {})

    def note(now: float) -> list:
        before = pending._writer.rows if pending._writer else 0
        pending.write(lambda everything: stream.provisional(epoch(now), everything), stream.held)
        table = rows.read(tmp_path / "run" / rundir.PENDING)
        return sorted(table["lport"].iloc[before if pending._writer.rows > before else 0:])

    assert stream.step(events.iloc[:2], epoch(30.0)).empty
    assert note(33.0) == [8080, 40001]  # the first: every life held
    assert stream.step(events.iloc[2:3], epoch(39.5)).empty
    assert note(40.0) == [8080, 40003]  # the listener's child (parked) and the life that arrived
    assert note(50.0) == [8080, 40003]  # the listener's child, and the other still in its grace at 40 s
    assert note(60.0) == [8080]
    assert stream.held == 3

    monkeypatch.setattr(rundir, "ROTATE_SLACK", 0)
    made = stream.step(events.iloc[3:], epoch(90.0))  # 40003's TIME_WAIT ended: final
    assert list(made["lport"]) == [40003]
    assert note(90.0) == [8080, 40001]  # 7 rows written > twice the 2 held: made anew with those held
    assert len(rows.read(tmp_path / "run" / rundir.PENDING)) == 2
    pending.write(lambda everything: stream.provisional(epoch(91.0), everything), stream.held)  # 3 rows, kept

    with open(tmp_path / "run" / rundir.ROWS, "wb") as f:
        writer = rows.RowsWriter(f)
        writer.append(made)
        writer.close()
    (tmp_path / "run" / rundir.RUN).write_text(RunInfo(started_at=epoch(0.0), ended_at=epoch(91.0),
                                                       cut_short=True).to_json())
    kept, run = rundir.read(tmp_path / "run")
    conns = kept.frame()
    assert sorted(conns["lport"]) == [8080, 40001, 40003]  # each once
    still = conns.set_index("lport").loc[40001]
    assert still["tw_end_reason"] == "open" and still["tw_s"] == pytest.approx(91.0 - 2.0)  # its row made at 30 s
    pending.close()


def test_provisional_rows_made_a_few_lives_at_a_time_are_those_made_all_at_once(tmp_path, monkeypatch):
    """Stream.provisional makes its rows NOTE_PART_LIVES lives at a time (what making them costs
    is bounded so): the lives that decide on each other's rows, a listener's children, together."""
    events, run = replay(tmp_path, *kinds_of_endings(), ended=150.0, timewait="timers")
    arrivals = events[events["kind"].isin(streaming.ARRIVING)]

    def provisional(part_lives: int) -> pd.DataFrame:
        monkeypatch.setattr(streaming, "NOTE_PART_LIVES", part_lives)
        stream = Stream("timers", {})
        stream.step(arrivals[arrivals["event_at"] <= epoch(8.0)], epoch(8.0))
        parts = list(stream.provisional(epoch(12.0)))  # past their grace: the settled ones a life a part
        return decode.concat(parts), len(parts)

    (whole, one), (parts, many) = provisional(100_000), provisional(1)
    assert many > one + 3 and len(whole) > 5 and cells_differ(whole, parts).empty


def test_a_servers_timewait_cancelled_is_killed_at_once_a_clients_waits_for_a_taker(tmp_path):
    """No connect() takes over a server's TIME_WAIT (its local port is the listener's): a cancel
    the BPF side did not mark is a kill, final as it comes; a client's may still be shown a
    reuse by a client opened on its 4-tuple, which arrives when that one closes."""
    events, run = replay(tmp_path,
                         raw(skaddr=1, pid=13, comm="web", opened=1.0, ts=2.0, lport=8080, rport=43000, tw_timer=T1,
                             tw_start=2.0, **SERVER_CLOSER),
                         raw(skaddr=2, pid=12, comm="rebinder", opened=1.0, ts=2.0, lport=42001,
                             tw_timer=T1 + 0x100, tw_start=2.0, **ACTIVE_CLIENT),
                         timewait("cancelled", timer=T1, start=2.0, end=3.0),
                         timewait("cancelled", timer=T1 + 0x100, start=2.0, end=3.0),
                         ended=30.0, timewait="timers")
    stream = Stream("timers", {})
    assert stream.step(events, epoch(3.0)).empty  # (within their grace)
    rows = stream.step(events.iloc[:0], epoch(3.0 + GRACE_S + 0.1))
    assert list(rows["comm"]) == ["web"] and list(rows["tw_end_reason"]) == ["killed"]
    assert stream.held == 1  # the client's, parked
    assert list(stream.finish(events.iloc[:0], run.ended_at)["tw_end_reason"]) == ["killed"]


def test_a_timewait_that_ended_while_the_end_of_the_run_read_the_maps_has_its_end(tmp_path):
    """The end of a run reads the timewaits still followed, then the ring once more: one that
    ended in between is read open and its end record comes after; the end is what happened."""
    events, run = replay(tmp_path, raw(skaddr=1, pid=7, comm="closer", ts=2.0, tw_timer=T1, tw_start=2.0,
                                       **ACTIVE_CLIENT),
                         timewait(None, timer=T1, start=2.0), timewait("cancelled", timer=T1, start=2.0, end=9.99),
                         ended=10.0, timewait="timers")
    stream = Stream("timers", {})
    assert stream.step(events[events["kind"] == "life"], epoch(3.0)).empty
    rows = stream.finish(events[events["kind"] != "life"], epoch(10.0))
    assert list(rows["tw_end_reason"]) == ["killed"] and rows["tw_s"].iloc[0] == pytest.approx(7.99)


def test_a_cancel_read_from_the_maps_at_the_end_of_the_run_ends_its_timewait(tmp_path):
    """A timewait the BPF side still followed at the end, cancelled by a connect() (reused), is
    read so from its map entry and handed over apart (decode.from_followed_timewaits): that
    cancel is the end of its life's TIME_WAIT, as a record of it would be."""
    import numpy as np

    from support.streams import HZ, OFFSET_NS

    events, run = replay(tmp_path, raw(skaddr=1, pid=7, comm="closer", ts=2.0, tw_timer=T1, tw_start=2.0,
                                       **ACTIVE_CLIENT), ended=10.0, timewait="timers")
    stream = Stream("timers", {})
    assert stream.step(events[events["kind"] == "life"], epoch(3.0)).empty
    states = np.zeros(1, [("timer", "<u8"), ("start_ns", "<u8"), ("rearm_ns", "<u8"), ("cancel_ns", "<u8"),
                          ("timeout", "<u4"), ("reused", "<u4")])
    states[0] = (T1, 2 * 10**9, 0, 9 * 10**9, 60 * HZ, 1)
    followed = decode.from_followed_timewaits(states, OFFSET_NS, HZ, epoch(10.0))
    assert list(followed.columns) == list(decode.FOLLOWED_COLUMNS)
    rows = stream.finish(decode.empty_events(), epoch(10.0), followed)
    assert list(rows["tw_end_reason"]) == ["reused"] and rows["tw_s"].iloc[0] == pytest.approx(7.0)
