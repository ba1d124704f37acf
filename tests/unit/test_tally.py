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
    # times in whole milliseconds and 0.3 ms, never within a float's error of a bin's edge
    tw_s = np.round(np.where(reason == "expired", 60.0 + rng.exponential(0.05, n), rng.exponential(5.0, n)), 3) + 1e-3
    opened = STARTED - 5.0 + np.round(rng.random(n) * (span + 4.99), 3) + 3e-4
    duration = np.round(np.exp(rng.uniform(np.log(1e-3), np.log(100.0), n)), 3)
    is_open = initiator == "open"
    cw_open = is_open & (rng.random(n) < 0.5)
    tw_start = np.where(made, opened + duration, np.nan)
    ended_tw = np.isin(reason, ["expired", "killed"])
    fin_wait2 = np.where(made & (rng.random(n) < 0.1), rng.uniform(0.5, 3.0, n), np.nan)
    role = rng.choice(["client", "server", "unknown"], n, p=[.5, .45, .05])
    return pd.DataFrame({
        "pid": pd.array(np.where(pid == 111, None, pid), dtype="Int64"),
        "comm": np.where(pid == 111, "", np.char.add("app", (pid % 4).astype(str))).astype(object),
        "netns": "4026531840", "container": None, "unit": None,
        "workload": np.char.add("w", (pid % 3).astype(str)).astype(object),
        "role": role, "raddr": rng.choice(["10.0.0.1", "10.0.0.2", "10.0.0.3"], n),
        # a client's local port is ephemeral, a server's its service's; the other way round for the remote one
        "rport": np.where(role == "server", rng.integers(32768, 61000, n), rng.choice([80, 443], n)),
        "lport": np.where(role == "server", rng.choice([80, 8080], n), rng.integers(32768, 61000, n)),
        "initiator": initiator,
        "opened_at": opened, "partial": opened < STARTED,
        "closed_at": np.where(is_open, np.nan, opened + duration), "duration_s": np.where(is_open, np.nan, duration),
        "laddr": "127.0.0.1", "owner_src": rng.choice(["syscall", "listener"], n),
        "tw_start": tw_start, "tw_end": np.where(ended_tw, tw_start + tw_s, np.nan), "tw_fin_wait2_s": fin_wait2,
        "tw_made": made, "tw_ended": ended_tw, "tw_s": np.where(made, tw_s, np.nan),
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


def test_the_tables_are_the_same_whether_the_rows_text_is_pandas_text_or_python_objects():
    """Rows as a trace makes them hold pandas' text (Arrow's); read back from their file, Python
    objects: the figures read either as it is (analysis.columns)."""
    conns, ended = rows(5_000, span=60.0), STARTED + 60.0
    text = [c for c in conns if conns[c].dtype == object or isinstance(conns[c].dtype, pd.StringDtype)]
    as_objects = conns.astype({c: object for c in text})
    as_text = conns.astype({c: "str" for c in text})
    assert as_text["comm"].dtype == "str" and as_objects["initiator"].dtype == object
    tallies = [Tally.of(frame, STARTED) for frame in (as_objects, as_text)]
    for keys in (processes.PER_PROCESS, processes.PER_COMM, processes.PER_WORKLOAD):
        pd.testing.assert_frame_equal(*(processes.processes(t, ended, keys) for t in tallies), check_dtype=False)
    pd.testing.assert_frame_equal(*(churn.peers(t, ended) for t in tallies), check_dtype=False)
    assert tallies[0].owner_src == tallies[1].owner_src and tallies[0].end_reasons == tallies[1].end_reasons


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
        kept = sketches.Sketches()
        for part in np.array_split(rng.permutation(values), 7):
            kept.add(np.zeros(len(part), dtype=int), part)
        for q in QS:
            assert near_quantile(sketches.quantile(kept.get(0), q), values, q), q
    assert np.isnan(sketches.quantile(None, 0.5))


def test_sketches_count_the_same_however_the_values_came_and_were_folded(monkeypatch):
    """Counts wait per (group, bucket) and are added to the DDSketches when one is read, or
    when FOLD_PAIRS wait: the same sketch as adding every value to it, one at a time."""
    monkeypatch.setattr(sketches, "FOLD_PAIRS", 50)  # folded while adding, and again when read
    rng = np.random.default_rng(5)
    values = np.r_[np.exp(rng.uniform(np.log(1e-3), np.log(1e2), 3_000)), np.zeros(7), np.full(5, np.nan)]
    groups = rng.integers(0, 3, len(values))
    kept = sketches.Sketches()
    for part in np.array_split(rng.permutation(len(values)), 40):
        kept.add(groups[part], values[part])
    for group in range(3):
        one_by_one = sketches.new()
        for value in values[(groups == group) & ~np.isnan(values)]:
            one_by_one.add(float(value))
        assert kept.get(group).count == one_by_one.count
        for q in (0.0, 0.01, 0.25, 0.5, 0.9, 0.999, 1.0):
            assert sketches.quantile(kept.get(group), q) == pytest.approx(sketches.quantile(one_by_one, q), rel=1e-12)
    assert kept.get(3) is None


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


def ended_by(conns: pd.DataFrame, ended: float) -> pd.DataFrame:
    """The rows of a run that ended then: nothing closed or ended after it."""
    return conns[~(conns["tw_end"] > ended) & ~(conns["closed_at"] > ended)]


def exact_alive(times, start, stop):
    """How many [start, stop) hold each time, from every interval (what the quanta replace)."""
    return np.searchsorted(np.sort(start), times, side="right") - np.searchsorted(np.sort(stop), times, side="right")


@pytest.mark.parametrize("span", [40.0, 250.0, 2000.0])  # quanta of 0.1 s and 1 s, bins of 0.1 s to 5 s
def test_the_timeline_is_the_one_every_row_gives(span):
    conns = rows(30_000, span=span, seed=7)
    conns = ended_by(conns, STARTED + span)
    ended = STARTED + span
    timeline = churn.timeline(in_batches(conns, 25), ended)
    step = churn.timeline_step(span)
    edges = np.append(np.arange(STARTED, ended, step), ended)
    here = (~conns["partial"]) & (conns["opened_at"] >= STARTED)
    assert timeline["opened"].tolist() == np.histogram(conns.loc[here, "opened_at"], bins=edges)[0].tolist()
    assert timeline["closed"].tolist() == np.histogram(conns["closed_at"].dropna(), bins=edges)[0].tolist()
    made = conns[conns["tw_made"]]
    stop = np.where(made["tw_end"].notna(), made["tw_end"],
                    np.where(made["tw_end_reason"] == "open", np.inf, made["tw_start"] + 60.0))
    assert timeline["timewait"].tolist() == exact_alive(edges[1:], made["tw_start"], stop).tolist()
    cw = conns[conns["close_wait_at"].notna()]
    assert timeline["close_wait"].tolist() == exact_alive(edges[1:], cw["close_wait_at"],
                                                          cw["closed_at"].fillna(np.inf)).tolist()


def test_port_pressure_is_the_exact_one_to_the_quantum():
    """TIME_WAITs held towards each destination: at the end exactly, at their busiest within
    what began or ended in one quantum (0.1 s); the rate of the last 10 s within one quantum's."""
    from agent.analysis import ports
    from agent.record.runinfo import RunInfo

    span = 120.0
    conns = rows(30_000, span=span, seed=9)
    conns = ended_by(conns, STARTED + span)
    run = RunInfo(started_at=STARTED, ended_at=STARTED + span, timewait_method="timers")
    tally = in_batches(conns, 25)
    pressure = ports.pressure(tally, run).set_index(["raddr", "rport"])
    quantum = tally.occupancy.quantum
    for (raddr, rport), mine in conns[conns["role"] == "client"].groupby(["raddr", "rport"]):
        row = pressure.loc[(raddr, rport)]
        made = mine[mine["tw_made"]]
        stop = np.where(made["tw_end"].notna(), made["tw_end"],
                        np.where(made["tw_end_reason"] == "open", np.inf, made["tw_start"] + 60.0))
        assert row.connections == len(mine)
        assert row.timewait_now == exact_alive(np.array([run.ended_at]), made["tw_start"], stop)[0]
        peak = exact_alive(made["tw_start"].to_numpy(), made["tw_start"], stop).max()
        moments = np.r_[made["tw_start"], stop[np.isfinite(stop)]]
        busiest_quantum = np.bincount(np.maximum((moments - STARTED) // quantum, 0).astype(int)).max()
        assert abs(row.timewait_peak - peak) <= busiest_quantum, (row.timewait_peak, peak)
        here = mine[~mine["partial"]]
        recent = (here["opened_at"] > run.ended_at - ports.RATE_WINDOW_S).sum()
        assert abs(row.rate_now_per_s * ports.RATE_WINDOW_S - recent) <= np.bincount(
            np.maximum((here["opened_at"] - STARTED) // quantum, 0).astype(int)).max()
    assert tally.timewait_length() == pytest.approx(
        conns.loc[conns["tw_end_reason"] == "expired", "tw_s"].median(), rel=0.01)

