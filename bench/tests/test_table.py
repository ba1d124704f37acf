"""The bench's table: ratios paired within a repeat, their spread, and the CPU taken."""
import os

import pytest

from bench import harness, sampling
from bench import table as tables


def cells(table, title: str) -> list[str]:
    """One row of a rich Table, by its title in the first column."""
    labels = table.columns[0]._cells
    row = labels.index(title)
    return [column._cells[row] for column in table.columns[1:]]


def rows(untraced: list[float], traced: list[float], **traced_fields) -> list[dict]:
    out = []
    for repeat, (u, t) in enumerate(zip(untraced, traced)):
        out.append({"mode": "untraced", "repeat": repeat, "rate": u})
        out.append({"mode": "tcpclose", "repeat": repeat, "rate": t, **traced_fields})
    return out


def test_ratio_is_the_median_of_ratios_paired_within_each_repeat():
    # the workload's rate drifts between repeats; each traced run is held against its own repeat's
    table = tables.table(rows([100, 200, 100, 200], [99, 150, 98, 160]), rate=0)
    # paired: 0.99, 0.75, 0.98, 0.80 -> median 0.89 (a ratio of the medians would say 124.5 / 150 = 0.83)
    assert cells(table, "ratio") == ["1.00", "0.89"]
    assert cells(table, "ratio, middle half") == ["1.00-1.00", "0.79-0.98"]


def test_no_spread_from_fewer_than_four_repeats_and_no_ratio_without_untraced_runs():
    table = tables.table(rows([100, 200, 100], [90, 180, 90]), rate=0)
    assert cells(table, "ratio") == ["1.00", "0.90"]
    with pytest.raises(ValueError):
        cells(table, "ratio, middle half")
    soak = tables.table([{"mode": "tcpclose", "repeat": 0, "rate": 100.0}], rate=0)
    assert cells(soak, "ratio") == ["-"]


def test_rss_levels_are_medians_of_a_minute_where_single_samples_fall_anywhere_in_a_swing():
    """A tracer's RSS swings between its floor and a step's peak: the single samples after a
    minute and at the end can land on either, the medians of the second and last minute do not."""
    rss = sampling.RssSampler.__new__(sampling.RssSampler)  # (no thread: samples given)
    rss.stop, rss.join = type("Stopped", (), {"set": lambda self: None})(), lambda: None
    minute = int(60 / sampling.RSS_EVERY_S)
    swing = lambda floor: [floor + 40 * (i % 3 == 0) for i in range(minute)]  # noqa: E731 (a peak every third)
    rss.samples = swing(200) + swing(200) + swing(201) + swing(210)
    rss.samples[minute - 1] = 240  # the sample taken at the first minute fell on a peak, the last one did not
    assert rss.growth() == (240, 210)  # -12 %
    assert rss.levels() == (200, 210)  # +5 %
    rss.samples = rss.samples[:2 * minute - 1]
    assert all(v != v for v in rss.levels())  # under two minutes: NaN
    table = tables.table(rows([100], [90], rss_1min_mib=240, rss_end_mib=210, rss_2nd_min_median_mib=200,
                              rss_last_min_median_mib=210), rate=0)
    assert cells(table, "RSS growth") == ["-", "-12%"] and cells(table, "RSS growth, medians") == ["-", "+5.0%"]


def test_cpu_taken_adds_bpf_and_the_tracer_per_core_of_the_machine():
    table = tables.table(rows([100], [90], bpf_cores=0.08, cpu_cores=0.02), rate=0)
    assert cells(table, "CPU taken") == ["-", f"{0.10 / os.cpu_count():.1%}"]


def test_every_other_repeat_runs_the_modes_in_reverse_so_a_drift_weighs_on_each_alike():
    modes = ["untraced", "empty program", "tcpclose", "tcpclose --aggregates"]
    orders = [harness.run_order(modes, repeat) for repeat in range(4)]
    assert orders[0] == orders[2] == modes
    assert orders[1] == orders[3] == modes[::-1]
    # over a pair of repeats every mode sits at the same mean position: a linear drift cancels
    positions = {m: sum(order.index(m) for order in orders[:2]) for m in modes}
    assert len(set(positions.values())) == 1


def test_untraced_again_is_held_against_the_first_untraced_run_and_traced_runs_against_both():
    frame = rows([100, 200, 100, 200], [90, 180, 90, 180])
    frame += [{"mode": "untraced again", "repeat": r, "rate": rate} for r, rate in enumerate([96, 210, 98, 190])]
    table = tables.table(frame, rate=0)
    # untraced again, paired with the first untraced run of each repeat (the A/A ratio):
    # 0.96, 1.05, 0.98, 0.95 -> median 0.97.  tcpclose, paired with the mean of the repeat's
    # two untraced runs (98, 205, 99, 195): 0.918, 0.878, 0.909, 0.923 -> median 0.91
    assert cells(table, "ratio") == ["1.00", "0.91", "0.97"]
    assert "untraced again" in harness.MODES and harness.MODES.index("untraced again") == len(harness.MODES) - 1


def test_ratio_by_cpu_per_connection_is_the_untraced_cost_over_the_traced_one_paired():
    frame = rows([100, 100, 100, 100], [100, 100, 100, 100])
    for row, cpu in zip(frame, [100, 125, 100, 100, 100, 125, 100, 100]):  # untraced, tcpclose, ...
        row["cpu_us_per_conn"] = cpu
    table = tables.table(frame, rate=6000)
    # tcpclose cost 125 us a connection where untraced cost 100 in two repeats: 0.8, 1.0, 0.8, 1.0
    assert cells(table, "ratio by CPU/conn") == ["1.00", "0.90"]
    assert cells(table, "ratio by CPU/conn, middle half") == ["1.00-1.00", "0.80-1.00"]
    assert cells(table, "ratio") == ["1.00", "1.00"]  # a fixed rate: the rate says nothing


def test_ratio_by_the_workload_s_user_cpu_is_paired_and_does_not_move_with_the_host_s_speed():
    # repeats 1 and 3 ran on a host 20 % slower: every rate fell, but the share of the machine
    # that the workload's own code got (what the tracer takes from it, in kernel mode) did not
    frame = rows([100, 80, 100, 80], [95, 76, 95, 76])
    for row, share in zip(frame, [0.25, 0.2375, 0.25, 0.2375, 0.25, 0.2375, 0.25, 0.2375]):
        row["workload_user"] = share
    frame[3]["workload_user"] = 0.225  # tcpclose in repeat 1: 0.9
    table = tables.table(frame, rate=0)
    assert cells(table, "workload's user CPU") == ["25.00%", "23.75%"]
    assert cells(table, "ratio by workload's user CPU") == ["1.00", "0.95"]  # 0.95, 0.90, 0.95, 0.95
    assert cells(table, "ratio by workload's user CPU, middle half") == ["1.00-1.00", "0.94-0.95"]


def test_machine_cpu_counts_user_time_inside_busy_time():
    busy, stolen, user = sampling.machine_cpu()
    assert 0 < user < busy and stolen >= 0
    own_user, own_total = sampling.cpu_s(os.getpid())
    assert 0 < own_user <= own_total


def test_peak_rss_with_report_is_the_tracer_s_own_not_the_high_water_mark_it_inherits():
    import subprocess
    import sys

    held = bytearray(400 << 20)  # the bench's own memory (it reads tcpstates' output whole, once)
    held[:: 4096] = b"\1" * len(held[:: 4096])
    child = subprocess.Popen([sys.executable, "-c", "import sys, time; b = bytearray(150 << 20); b[::4096] = "
                              "b'\\1' * len(b[::4096]); sys.stderr.write('x' * 100000); del b; time.sleep(0.5)"],
                             stderr=subprocess.PIPE, text=True)
    peak, said = sampling.wait_peak_rss(child)
    assert child.returncode == 0
    assert 150 <= peak < 300  # its 150 MiB and the interpreter's, not the 400 MiB this process holds
    assert said == "x" * 100000
    del held


def test_a_tracer_whose_end_failed_leaves_what_it_said_last():
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", "import sys\nfor i in range(100): print(i, file=sys.stderr)\n"
                              "sys.exit('tcpclose: cannot write the files')"], stderr=subprocess.PIPE, text=True)
    _, said = sampling.wait_peak_rss(child)
    assert child.returncode == 1
    assert said.splitlines() == [str(i) for i in range(100 - sampling.STDERR_TAIL + 1, 100)] + [
        "tcpclose: cannot write the files"]


def test_saved_rows_of_two_benches_pool_with_each_ratio_paired_within_its_own_repeat(tmp_path):
    saved = tmp_path / "rows.jsonl"
    # two benches, both numbering their repeats 0 and 1, on hosts of different speeds
    for name, runs in (("a", rows([100, 200], [90, 160])), ("b", rows([50, 300], [40, 285]))):
        for row in runs:
            tables.save_row(saved, row | {"bench": name, "machine": "m", "target_rate": 0.0})
    tables.save_row(saved, {"mode": "untraced", "repeat": 0, "rate": 20.0, "rss_mib": float("nan"),
                           "bench": "c", "machine": "m", "target_rate": 6000.0})
    by_rate = tables.load_rows([saved])
    assert sorted(by_rate) == [0.0, 6000.0] and len(by_rate[0.0]) == 8
    # paired within (bench, repeat): 0.90, 0.80, 0.80, 0.95 -> median 0.85.  Pairing by the
    # repeat number alone would mix the benches' runs.
    table = tables.table(by_rate[0.0], rate=0)
    assert cells(table, "ratio") == ["1.00", "0.85"]
    assert cells(table, "ratio, middle half") == ["1.00-1.00", "0.80-0.91"]


def test_a_rows_file_that_a_bench_did_not_write_is_refused_with_where(tmp_path):
    bad = tmp_path / "rows.jsonl"
    tables.save_row(bad, {"mode": "untraced", "repeat": 0, "rate": 1.0, "bench": "a", "target_rate": 0.0})
    with open(bad, "a") as f:
        f.write('{"mode": "untraced", "rate": 1.0}\n')
    with pytest.raises(SystemExit, match=r"rows.jsonl:2 is not a row a bench saved"):
        tables.load_rows([bad])
    with pytest.raises(SystemExit, match="cannot read"):
        tables.load_rows([tmp_path / "missing.jsonl"])


def test_bench_from_saved_rows_prints_the_pooled_table_without_root_or_a_run(tmp_path):
    import subprocess
    import sys

    saved = tmp_path / "rows.jsonl"
    for row in rows([100, 100, 100, 100], [90, 80, 90, 80]):
        tables.save_row(saved, row | {"bench": "2026-11-22T10:00:00 abc1234", "machine": "2 cores", "target_rate": 0.0})
    done = subprocess.run([sys.executable, "-m", "bench", "--from", str(saved)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "1 bench run(s): 2026-11-22T10:00:00 abc1234; machine: 2 cores" in done.stdout
    assert "4 repeat(s)" in done.stdout
    ratio = next(line for line in done.stdout.splitlines() if line.strip("│ ").startswith("ratio "))
    assert "0.85" in ratio
