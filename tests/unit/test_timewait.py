"""How each TIME_WAIT ended, from recorded streams of lives and timewait-timer records."""
import math
import time
import tracemalloc

import numpy as np
import pandas as pd
import pytest

from agent.analysis.sketches import RELATIVE_ACCURACY
from support.quantiles import near_quantile
from agent.analysis.tally import Tally
from agent.analysis import lives, processes
from agent.analysis.timewait import taken_by_connect
from agent.kernel import diag, probe
from agent.record import decode, layout
from support.streams import epoch, raw, replay, timewait

ACTIVE = dict(states=("SYN_SENT", "ESTABLISHED", "FIN_WAIT1", "FIN_WAIT2"), last="FIN_WAIT2")
T1, T2 = 0xFFFF8881000A0000, 0xFFFF8881000B0000


def conns_of(tmp_path, *chunks, ended=100.0):
    events, run = replay(tmp_path, *chunks, ended=ended, timewait="timers")
    return lives.connections(events, run.ended_at, timewait_method="timers"), run


def closer(skaddr=1, timer=T1, tw_start=2.0, **fields):
    """A client that closed first at 2.0 s and made the timewait socket `timer`."""
    args = dict(ACTIVE, skaddr=skaddr, ts=tw_start, tw_timer=timer, tw_start=tw_start, comm="closer", pid=7)
    return raw(**(args | fields))


def test_a_natural_expiry_gives_the_real_lifetime(tmp_path):
    conns, _ = conns_of(tmp_path, closer(), timewait("expired", timer=T1, start=2.0, end=63.1))
    conn = conns.iloc[0]
    assert conn.tw_end_reason == "expired"
    assert conn.tw_start == pytest.approx(epoch(2.0))
    assert conn.tw_end == pytest.approx(epoch(63.1))
    assert conn.tw_s == pytest.approx(61.1)
    assert math.isnan(conn.tw_fin_wait2_s)  # armed for 60 s and never re-armed: cannot be told


def test_the_end_joins_the_timewait_by_timer_and_start_not_by_timer_alone(tmp_path):
    """Timer memory is recycled: a second timewait on the same address is another socket."""
    conns, _ = conns_of(
        tmp_path,
        closer(skaddr=1, tw_start=2.0), timewait("cancelled", timer=T1, start=2.0, end=3.0),
        closer(skaddr=2, tw_start=4.0), timewait("expired", timer=T1, start=4.0, end=64.5),
    )
    assert list(conns["tw_end_reason"]) == ["killed", "expired"]
    assert list(conns["tw_s"]) == pytest.approx([1.0, 60.5])


def test_a_cancel_as_a_connect_takes_the_same_four_tuple_is_a_reuse(tmp_path):
    newcomer = raw(skaddr=3, states=("SYN_SENT", "ESTABLISHED"), last="ESTABLISHED", opened=5.0, ts=6.0,
                   comm="newcomer", lport=40000, rport=8080)
    conns, _ = conns_of(tmp_path, closer(lport=40000, rport=8080),
                        timewait("cancelled", timer=T1, start=2.0, end=5.00002), newcomer)
    conn = conns[conns["comm"] == "closer"].iloc[0]
    assert conn.tw_end_reason == "reused"
    assert conn.tw_s == pytest.approx(3.00002)


def test_a_cancel_the_kernel_side_saw_inside_a_connect_is_a_reuse_without_the_connection(tmp_path):
    """The BPF side marks a cancel in a connect() to the timewait's remote end (TW_REUSED):
    a reuse even when the connection that reused it is not in the records (filtered out)."""
    conns, _ = conns_of(tmp_path, closer(), timewait("reused", timer=T1, start=2.0, end=5.0))
    assert conns.iloc[0].tw_end_reason == "reused"
    assert conns.iloc[0].tw_s == pytest.approx(3.0)


def test_a_short_client_whose_timewait_is_killed_within_the_window_did_not_reuse_itself(tmp_path):
    """Its own connect() opened within the reuse window of the kill, on the same 4-tuple;
    that is not a new connect() taking the TIME_WAIT over."""
    conns, _ = conns_of(tmp_path, closer(opened=1.9, tw_start=2.0), timewait("cancelled", timer=T1, start=2.0, end=2.5))
    assert conns.iloc[0].tw_end_reason == "killed"


def reuse_lives(uses: int) -> pd.DataFrame:
    """`uses` client lives on one 4-tuple, opened 10 s apart (a churn recycling its ports)."""
    syn_sent = 1 << layout.DEFINES["TCP_SYN_SENT"]
    return pd.DataFrame({"family": 2, "laddr": "127.0.0.1", "lport": 40000, "raddr": "127.0.0.2", "rport": 8080,
                         "states_raw": syn_sent, "opened_at": 10.0 * np.arange(uses)})


def test_a_recycled_four_tuple_is_reused_only_by_the_connect_that_opened_at_its_end():
    lives = reuse_lives(5)  # opened at 0, 10, 20, 30, 40
    rows = np.array([0, 1, 2, 3])
    end_at = np.array([10.5, 25.0, 29.0, 41.0])  # 0.5 s, 5 s, 1.0 s, 1.0 s from the nearest open
    reused = taken_by_connect(lives, rows, end_at, window=1.0)
    assert list(reused) == [True, False, True, True]
    other_port = lives.assign(lport=np.where(np.arange(5) == 0, 40000, 40001))  # the new clients moved away
    assert not taken_by_connect(other_port, np.array([0]), np.array([10.5]), window=1.0).any()


def test_a_recycled_four_tuple_costs_memory_linear_in_its_uses():
    """A join of every timewait with every client of its 4-tuple grows as uses squared:
    at a minute of full churn, 5 GiB more at the end of the run."""
    uses = 3000  # squared: 9 M pairs, some 500 MB; linear: a few MB
    lives = reuse_lives(uses)
    tracemalloc.start()
    try:
        # each timewait ends as the next connect() opens, 0.5 s after it
        reused = taken_by_connect(lives, np.arange(uses - 1), lives["opened_at"].to_numpy()[1:] + 0.5, window=1.0)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert reused.all()
    assert peak < 50 * 2 ** 20


def test_a_cancel_with_a_new_server_side_child_is_a_kill(tmp_path):
    """A SYN into a server-side TIME_WAIT kills it; the new life is the listener's child."""
    child = raw(skaddr=3, states=("SYN_RECV", "ESTABLISHED"), last="ESTABLISHED", opened=5.0, ts=6.0,
                owner="listener", lport=8080, rport=40000)
    server_closer = closer(states=("SYN_RECV", "ESTABLISHED", "FIN_WAIT1", "FIN_WAIT2"), lport=8080, rport=40000)
    conns, _ = conns_of(tmp_path, server_closer, timewait("cancelled", timer=T1, start=2.0, end=5.0), child)
    assert conns.iloc[0].tw_end_reason == "killed"


def test_a_timewait_alive_at_the_end_is_open_with_its_age(tmp_path):
    conns, _ = conns_of(tmp_path, closer(tw_start=2.0), timewait(timer=T1, start=2.0), ended=30.0)
    conn = conns.iloc[0]
    assert conn.tw_end_reason == "open"
    assert math.isnan(conn.tw_end)
    assert conn.tw_s == pytest.approx(28.0)


def test_an_active_close_without_a_timewait_timer_is_an_overflow(tmp_path):
    conns, _ = conns_of(tmp_path, raw(**ACTIVE))
    conn = conns.iloc[0]
    assert (conn.tw_end_reason, conn.tw_overflow) == ("none", True)
    assert math.isnan(conn.tw_start)


def test_without_timer_following_a_close_keeps_an_open_timewait_of_unknown_end(tmp_path):
    events, run = replay(tmp_path, raw(**ACTIVE), timewait="none")
    conn = lives.connections(events, run.ended_at, timewait_method=None).iloc[0]
    assert (conn.tw_end_reason, conn.tw_overflow) == ("open", False)


def test_a_timewait_whose_end_went_unseen_is_unknown(tmp_path):
    conns, _ = conns_of(tmp_path, closer(), timewait("replaced", timer=T1, start=2.0, end=9.0))
    conn = conns.iloc[0]
    assert conn.tw_end_reason == "unknown"
    assert math.isnan(conn.tw_s)


@pytest.mark.parametrize("how", ["expired", "cancelled", "reused"])
def test_an_end_read_before_its_start_is_unknown_not_a_negative_lifetime(tmp_path, how):
    """Seen once at the end of ten minutes of full churn: an end matched to a timewait it came
    before.  It is not taken (a lifetime below zero also crashed the figures' histogram)."""
    conns, run = conns_of(tmp_path, closer(tw_start=2.0), timewait(how, timer=T1, start=2.0, end=1.5))
    conn = conns.iloc[0]
    assert conn.tw_end_reason == "unknown"
    assert math.isnan(conn.tw_s) and math.isnan(conn.tw_end)
    tally = Tally.of(conns, run.started_at)
    assert tally.lifetimes.sum() == 0 and tally.end_reasons["unknown"] == 1


@pytest.mark.parametrize("timeout, rearm, end, how, fin_wait2_s", [
    (5.0, 3.5, 63.6, "expired", 1.5),   # short tcp_fin_timeout, the peer's FIN after 1.5 s
    (5.0, None, 7.0, "expired", 5.0),   # no FIN from the peer: died at tcp_fin_timeout
    (60.0, 12.0, 72.1, "expired", 10.0),  # default tcp_fin_timeout, FIN late enough to change bucket
])
def test_fin_wait2_substate(tmp_path, timeout, rearm, end, how, fin_wait2_s):
    conns, _ = conns_of(tmp_path, closer(tw_timeout=timeout),
                        timewait(how, timer=T1, start=2.0, end=end, rearm=rearm, timeout=timeout))
    assert conns.iloc[0].tw_fin_wait2_s == pytest.approx(fin_wait2_s)


def test_the_time_wait_length_port_pressure_uses_leaves_out_the_fin_wait2_substate(tmp_path):
    """A timewait that died at a 2 s tcp_fin_timeout never held its port for a TIME_WAIT;
    one whose peer's FIN came after 1.5 s held it 60 s from there."""
    def timewait_length(conns, run):
        return Tally.of(conns, run.started_at).timewait_length()

    died, run = conns_of(tmp_path, closer(tw_timeout=2.0), timewait("expired", timer=T1, start=2.0, end=4.0,
                                                                    timeout=2.0))
    assert died.iloc[0].tw_s == pytest.approx(2.0) and timewait_length(died, run) == 60.0  # the kernel's, not 2 s
    flipped, run = conns_of(tmp_path, closer(tw_timeout=5.0), timewait("expired", timer=T1, start=2.0, end=63.5,
                                                                       rearm=3.5, timeout=5.0))
    assert timewait_length(flipped, run) == pytest.approx(60.0, rel=RELATIVE_ACCURACY)  # (a median from a sketch)


def test_per_process_percentiles_count_only_ended_timewaits(tmp_path):
    lifetimes = [60.0, 60.5, 61.0, 62.0]
    stream = []
    for i, life in enumerate(lifetimes):
        timer = T2 + i * 0x100
        stream += [closer(skaddr=10 + i, timer=timer, tw_start=2.0 + i),
                   timewait("expired", timer=timer, start=2.0 + i, end=2.0 + i + life)]
    stream += [closer(skaddr=20, timer=T1, tw_start=3.0), timewait(timer=T1, start=3.0),  # open: 97 s old
               raw(skaddr=21, comm="closer", pid=7, **ACTIVE)]  # no timewait: overflow
    conns, run = conns_of(tmp_path, *stream, ended=100.0)
    proc = processes.processes(Tally.of(conns, run.started_at), run.ended_at).set_index("comm").loc["closer"]
    assert proc.timewait_count == 5  # made: the four ended and the open one
    assert near_quantile(proc.timewait_p50_s, lifetimes, 0.5)  # (from a sketch: analysis.sketches)
    assert proc.timewait_max_s == pytest.approx(62.0)
    assert near_quantile(proc.timewait_p95_s, lifetimes, 0.95)
    assert (proc.timewait_expired, proc.timewait_open, proc.timewait_overflow) == (4, 1, 1)


def test_sock_diag_links_a_timewait_made_while_its_dump_ran(tmp_path, monkeypatch):
    """The fallback's sightings: a connection that closes while a sock_diag dump runs
    (entering the namespace, or the first poll's pyroute2 import) is in that dump,
    and its TIME_WAIT must still be linked to the close and seen to expire."""
    tw = dict(family="ipv4", laddr="127.0.0.1", lport=40000, raddr="127.0.0.1", rport=8080)
    dumps = iter([[tw | {"expires_s": 59.9}], []])

    def dump(states, netns):  # the close (at 2.0) happens 30 ms into this dump
        time.sleep(0.05)
        return next(dumps)

    monkeypatch.setattr(diag, "diag_sockets", dump)
    watch = diag.TimewaitWatch()
    assert watch.poll(epoch(1.97)) == []
    ended = watch.poll(epoch(63.0), force=True)
    events, run = replay(tmp_path, closer(), ended=70.0, timewait="diag")
    events = pd.concat([events, decode.from_timewait_watch(ended, "tw_end", 0)], ignore_index=True)
    conn = lives.connections(events, run.ended_at, timewait_method="diag").iloc[0]
    assert conn.tw_end_reason == "expired"
    assert 59.9 + 0.05 - 0.03 <= conn.tw_s < 60.5  # from the close to the sighting's end + its timer


def test_a_tws_entry_is_stale_once_its_last_timer_event_is_older_than_the_limit():
    """The sweep's test: the latest of the arming, the re-arm and the cancel, not the first."""
    s = 10**9
    states = np.zeros(4, [("start_ns", "u8"), ("rearm_ns", "u8"), ("cancel_ns", "u8"), ("timeout", "u4")])
    states["start_ns"] = [10 * s, 10 * s, 10 * s, 100 * s]
    states["rearm_ns"][1] = 150 * s  # armed 190 s before "now", but re-armed 50 s before it
    states["cancel_ns"][2] = 90 * s  # cancelled 110 s before it, and never settled
    stale = probe.stale_timewaits(states, 200 * s, 100 * s)
    assert stale.tolist() == [True, False, True, False]
    assert not probe.stale_timewaits(states, 50 * s, 100 * s).any()  # a clock younger than the limit
