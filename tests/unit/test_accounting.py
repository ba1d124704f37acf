"""What a run could not see: the accounting in the summary's last line."""
from agent.analysis import accounting
from agent.output import text
from agent.record import transitions
from agent.record.runinfo import RunInfo


def run_with(**fields) -> RunInfo:
    return RunInfo(started_at=0.0, ended_at=1.0, **fields)


def test_evictions_are_lives_started_minus_ended_minus_still_open():
    run = run_with(counters={"lives_started": 100, "lives_ended": 90, "socks_full": 2, "ringbuf_drops": 3,
                             "partial": 4, "recursion_misses": 5, "missed_close": 1}, open_lives=7)
    unseen = accounting.unseen(run)
    assert unseen["ring-buffer drops"] == 3
    assert unseen["lives evicted (map full or a missed close)"] == 3 + 2
    assert unseen["lives begun before tracing"] == 4
    assert unseen["transitions the kernel skipped (BPF recursion)"] == 5
    assert unseen["lives whose close was skipped (ended at their last transition seen)"] == 1


def test_timewaits_not_followed_to_their_end_are_the_unended_unopen_ones_and_those_without_room():
    run = run_with(counters={"tw_linked": 50, "tw_ended": 40, "tw_full": 3}, open_timewaits=6)
    assert accounting.unseen(run)["timewait sockets not followed to their end (map full or swept)"] == 50 - 40 - 6 + 3


def test_a_recording_without_counters_says_zero_not_nothing():
    assert set(accounting.unseen(run_with()).values()) == {0}


def test_a_transitions_stream_that_fell_behind_says_how_much_it_lost():
    t = transitions.accounting(900, {"transitions": 1000, "transition_drops": 100}, "/tmp/t.csv")
    assert (t["lost"], t["in_flight_at_end"]) == (100, 0)
    line = text.transitions_line(t)
    assert line.startswith("Transitions: 900 of 1000 written to /tmp/t.csv; 100 lost")
    whole = text.transitions_line(transitions.accounting(5, {"transitions": 5}, "-"))
    assert whole == "Transitions: 5 of 5 written to stdout"
