"""The figures kept as rows arrive (analysis.tally, analysis.grouped, analysis.sketches): the same
whatever batches the rows come in, counts exact, percentiles within the sketch's stated
relative accuracy of the exact ones."""
import numpy as np
import pandas as pd
import pytest

from agent.analysis import churn, processes, sketches
from agent.analysis.grouped import MAX_BINS, bin_seconds
from agent.analysis.tally import Tally
from support.quantiles import near_quantile

STARTED = 1_700_000_000.0
QS = (0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 1.0)


def rows(n: int, span: float, seed: int = 0) -> pd.DataFrame:
    """Connection rows of a made-up run: a dozen processes (one without an owner), clients and
    servers, closes of every kind, TIME_WAITs that expired near 60 s, were killed early or are
    open, durations over six decades, lives begun before tracing."""
    rng = np.random.default_rng(seed)
    initiator = rng.choice(["active", "passive", "simultaneous", "reset_local", "reset_remote", "close_unseen",
                            "never_established", "open"], n, p=[.4, .3, .05, .05, .05, .05, .05, .05])
    pid = rng.integers(100, 112, n)
    made = np.isin(initiator, ["active", "simultaneous"]) & (rng.random(n) < 0.95)
    reason = np.where(made, rng.choice(["expired", "killed", "open", "unknown"], n, p=[.8, .1, .05, .05]), "none")
    tw_s = np.where(reason == "expired", 60.0 + rng.exponential(0.05, n), rng.exponential(5.0, n))
    opened = STARTED - 5.0 + rng.random(n) * (span + 5.0)
    duration = np.exp(rng.uniform(np.log(1e-4), np.log(100.0), n))
    is_open = initiator == "open"
    cw_open = is_open & (rng.random(n) < 0.5)
    return pd.DataFrame({
        "pid": pd.array(np.where(pid == 111, None, pid), dtype="Int64"),
        "comm": np.where(pid == 111, "", np.char.add("app", (pid % 4).astype(str))).astype(object),
        "netns": "4026531840", "container": None, "unit": None,
        "workload": np.char.add("w", (pid % 3).astype(str)).astype(object),
        "role": rng.choice(["client", "server", "unknown"], n, p=[.5, .45, .05]),
        "raddr": rng.choice(["10.0.0.1", "10.0.0.2", "10.0.0.3"], n), "rport": rng.choice([80, 443], n),
        "lport": rng.integers(32768, 61000, n), "initiator": initiator,
        "opened_at": opened, "partial": opened < STARTED,
        "closed_at": np.where(is_open, np.nan, opened + duration), "duration_s": np.where(is_open, np.nan, duration),
        "tw_made": made, "tw_ended": np.isin(reason, ["expired", "killed"]), "tw_s": np.where(made, tw_s, np.nan),
        "tw_end_reason": reason, "tw_overflow": np.isin(initiator, ["active"]) & ~made,
        "tw_timeout_s": np.where(made, 60.0, np.nan),
        "close_wait_open": cw_open, "close_wait_at": np.where(cw_open, opened + 1.0, np.nan),
    })


def in_batches(conns: pd.DataFrame, cuts: int, seed: int = 1) -> Tally:
    """The rows added in `cuts` batches of random sizes, in a random order."""
    rng = np.random.default_rng(seed)
    shuffled = conns.sample(frac=1.0, random_state=seed).reset_index(drop=True)
    tally = Tally(STARTED)
    edges = [0, *np.sort(rng.choice(np.arange(1, len(conns)), cuts - 1, replace=False)), len(conns)]
    for start, stop in zip(edges, edges[1:]):
        tally.add(shuffled.iloc[start:stop])
    return tally


@pytest.mark.parametrize("keys", [processes.PER_PROCESS, processes.PER_COMM, processes.PER_WORKLOAD])
def test_the_tables_are_the_same_whatever_batches_the_rows_came_in(keys):
    conns, ended = rows(20_000, span=300.0), STARTED + 300.0
    whole = processes.processes(Tally.of(conns, STARTED), ended, keys)
    for cuts in (2, 17, 400):
        pd.testing.assert_frame_equal(processes.processes(in_batches(conns, cuts), ended, keys), whole)
    peers = [churn.peers(tally, ended).sort_values(churn.PEER_KEYS[:-1] + ["lport"]).reset_index(drop=True)
             for tally in (in_batches(conns, 50), Tally.of(conns, STARTED))]  # (ties: in the order first met)
    pd.testing.assert_frame_equal(*peers)


def test_counts_are_exact_and_percentiles_within_the_stated_accuracy():
    conns, ended = rows(20_000, span=300.0), STARTED + 300.0
    procs = processes.processes(in_batches(conns, 30), ended, processes.PER_COMM).set_index("comm")
    here = (~conns["partial"]) & conns["closed_at"].notna()
    for comm, mine in conns.groupby("comm"):
        row = procs.loc[comm]
        assert row.connections == len(mine)
        assert row.processes == mine["pid"].nunique()
        assert row.active_closes == (mine["initiator"] == "active").sum()
        assert row.timewait_count == mine["tw_made"].sum()
        assert row.timewait_expired == (mine["tw_end_reason"] == "expired").sum()
        assert row.close_wait_open == mine["close_wait_open"].sum()
        assert row.close_wait_max_age_s == pytest.approx(ended - mine["close_wait_at"].min())
        ended_tw = mine.loc[mine["tw_ended"], "tw_s"]
        assert row.timewait_max_s == pytest.approx(ended_tw.max())
        assert near_quantile(row.timewait_p50_s, ended_tw, 0.5) and near_quantile(row.timewait_p95_s, ended_tw, 0.95)
        durations = mine.loc[here.loc[mine.index], "duration_s"]
        for q, column in ((0.5, "duration_p50_s"), (0.95, "duration_p95_s"), (0.99, "duration_p99_s")):
            assert near_quantile(getattr(row, column), durations, q), (comm, column)
        assert row.short_share == pytest.approx((durations < 1.0).mean())


def test_a_sketch_reads_every_percentile_within_its_relative_accuracy():
    rng = np.random.default_rng(3)
    spread = np.exp(rng.uniform(np.log(1e-6), np.log(1e3), 50_000))  # nine decades
    timewaits = np.r_[60.0 + rng.exponential(0.02, 30_000), rng.uniform(0.001, 3.0, 3_000), np.zeros(10)]
    for values in (spread, timewaits):
        kept: dict = {}
        for part in np.array_split(rng.permutation(values), 7):
            sketches.add(kept, np.zeros(len(part), dtype=int), part)
        for q in QS:
            assert near_quantile(sketches.quantile(kept[0], q), values, q), q
    assert np.isnan(sketches.quantile(None, 0.5))


def test_the_busiest_bin_of_a_long_run_is_counted_in_bins_that_widened_as_it_went():
    span = 3_000.0  # 50 minutes: bins of 8 s
    conns = rows(30_000, span=span, seed=5)
    conns.loc[conns.index[:400], "opened_at"] = STARTED + 1234.5  # a burst
    conns.loc[conns.index[:400], "partial"] = False
    ended = STARTED + span
    width = bin_seconds(span)
    assert width == 8 and span / width <= MAX_BINS < span / (width / 2)
    procs = processes.processes(in_batches(conns, 60), ended, processes.PER_COMM).set_index("comm")
    here = conns[(~conns["partial"]) & (conns["opened_at"] >= STARTED)]
    for comm, mine in here.groupby("comm"):
        per_bin = ((mine["opened_at"] - STARTED) // width).value_counts()
        last = (span // width)  # the last bin is cut short by the end of tracing
        rates = [n / (min(width, span - b * width)) for b, n in per_bin.items()]
        assert procs.loc[comm].peak_opened_per_s == pytest.approx(max(rates)), (comm, last)
