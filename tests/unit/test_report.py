"""The incident report from recorded streams (no root): churn per process and peer,
port pressure, the findings, summary.json and report.html."""
import csv
import json

import pytest

from agent.analysis.tally import Tally
from agent.analysis.sketches import RELATIVE_ACCURACY
from agent.analysis import pipeline, ports
from agent.cli import main
from click.testing import CliRunner
from support.incidents import (SMALL_RANGE, churn_stream, cli_report,
                               incident_stream, pressed_stream)
from support.streaming import whole_run
from support.streams import raw, replay


def analysis_of(tmp_path, *chunks, **replay_args):
    events, run = replay(tmp_path, *chunks, **replay_args)
    return pipeline.analyse(Tally.of(whole_run(events, run), run.started_at, run.timewait_followed), run)


def test_churn_per_process_counts_rates_durations_and_short_share(tmp_path):
    a = analysis_of(tmp_path, *churn_stream(), started=0.5, ended=10.5)
    procs = a.procs.set_index("comm")
    churner, slow = procs.loc["churner"], procs.loc["slow"]
    assert churner.opened == 30 and slow.opened == 4
    assert churner.opened_per_s == pytest.approx(30 / 10.0)
    assert churner.peak_opened_per_s == pytest.approx(10)  # 1 s bins from the start of tracing
    assert churner.duration_p50_s == pytest.approx(0.01, rel=RELATIVE_ACCURACY)  # (from a sketch)
    assert churner.short_share == 1.0 and slow.short_share == 0.0
    assert slow.duration_p99_s == pytest.approx(5.0, rel=RELATIVE_ACCURACY)
    assert churner.active_share == 1.0 and slow.active_share == 0.0


def test_peers_are_remote_address_and_port_outbound_and_our_service_port_inbound(tmp_path):
    a = analysis_of(tmp_path, *churn_stream(), started=0.5, ended=10.5)
    peers = a.peers.set_index("direction")
    outbound, inbound = peers.loc["outbound"], peers.loc["inbound"]
    assert (outbound.raddr, outbound.rport, outbound.connections) == ("10.0.0.2", 80, 30)
    assert outbound.timewait_count == 30 and outbound.active_closes == 30
    assert (inbound.raddr, inbound.lport, inbound.connections) == ("10.0.0.3", 9000, 4)
    assert inbound.passive_closes == 4 and inbound.processes == "slow"


def test_port_pressure_warns_past_half_the_range_with_the_time_left(tmp_path):
    a = analysis_of(tmp_path, *pressed_stream(), started=0.5, ended=20.5, timewait="timers", sysctls=SMALL_RANGE)
    row = a.pressure.iloc[0]
    assert (row.raddr, row.rport, row.port_range) == ("10.0.0.2", 80, 100)
    assert row.timewait_peak == 60 and row.timewait_now == 60
    assert row.rate_now_per_s == pytest.approx(6.0)
    assert row.max_rate_per_s == pytest.approx(100 / 60)
    # 40 ports left, filling at 6/s less the 60/60 s that end: 8 s
    assert row.warning and row.seconds_left == pytest.approx(8.0)
    assert not row.tw_reuse  # tcp_tw_reuse=2 is for loopback only
    problem = [f for f in a.findings if f["topic"] == "ports"]
    assert problem and problem[0]["severity"] == "problem"
    assert "run out in about 8 s" in problem[0]["text"] and "EADDRNOTAVAIL" in problem[0]["text"]
    assert a.timeline["timewait"].iloc[-1] == 60


def test_port_pressure_on_loopback_says_tw_reuse_takes_over(tmp_path):
    a = analysis_of(tmp_path, *pressed_stream("127.0.0.2"), started=0.5, ended=20.5, timewait="timers",
                    sysctls=SMALL_RANGE)
    row = a.pressure.iloc[0]
    assert row.tw_reuse and row.warning
    assert "tcp_tw_reuse applies" in ports.describe(row)


def test_a_destination_under_half_the_range_is_not_a_warning(tmp_path):
    a = analysis_of(tmp_path, *pressed_stream(), started=0.5, ended=20.5, timewait="timers",
                    sysctls=SMALL_RANGE | {"ip_local_port_range": "32768 60999"})
    assert not a.pressure["warning"].any()
    assert not [f for f in a.findings if f["topic"] == "ports"]


def test_timewait_findings_tell_a_closing_server_from_a_closing_client(tmp_path):
    server_closes = dict(states=("SYN_RECV", "ESTABLISHED", "FIN_WAIT1", "FIN_WAIT2"), last="FIN_WAIT2",
                         owner="listener")
    stream = churn_stream() + [raw(skaddr=400 + i, pid=40, comm="web", opened=2.0, ts=2.5, lport=8080,
                                   rport=50000 + i, **server_closes) for i in range(5)]
    a = analysis_of(tmp_path, *stream, started=0.5, ended=10.5)
    text = {f["text"].split(" ")[0]: f["text"] for f in a.findings if f["topic"] == "timewait"}
    assert "server that closes first" in text["web"] and "tcp_tw_reuse cannot help" in text["web"]
    assert "keep its connections to 10.0.0.2:80 open" in text["churner"]


def test_summary_json_lists_the_timewait_end_reasons_most_common_first_whatever_came_first(tmp_path):
    from agent.output import summary_json

    a = analysis_of(tmp_path, *incident_stream(), started=0.5, ended=20.5, timewait="timers")
    a.tally.end_reasons.clear()
    a.tally.end_reasons.update({"killed": 3, "expired": 7, "reused": 3, "open": 9})  # (in the rows' order)
    reasons = json.loads(json.dumps(summary_json.build(a)))["timewait"]["end_reasons"]
    assert list(reasons.items()) == [("open", 9), ("expired", 7), ("killed", 3), ("reused", 3)]


def test_summary_json_holds_the_findings_and_figures(tmp_path):
    out = cli_report(tmp_path, *incident_stream(), started=0.5, ended=20.5, timewait="timers", sysctls=SMALL_RANGE)
    facts = json.loads((out / "summary.json").read_text())
    topics = [f["topic"] for f in facts["findings"]]
    assert topics[:2] == ["ports", "close_wait"]  # the problems first
    assert facts["port_pressure"][0]["seconds_left"] == pytest.approx(8.0)
    assert facts["close_wait_open"][0]["comm"] == "leaky"
    assert facts["close_wait_open"][0]["close_wait_age_s"] == pytest.approx(17.5)
    assert facts["timewait"]["made"] == 60 and facts["timewait"]["end_reasons"]["open"] == 60
    # in a run that followed timers, churner's closes armed none: tcp_max_tw_buckets was full
    assert facts["timewait"]["never_made_overflow"] == 30 and "overflow" in topics
    assert {p["comm"]: p["opened"] for p in facts["processes"]}["churner"] == 30
    assert facts["run"]["sysctls"]["ip_local_port_range"] == "40000 40099"


def test_the_csv_files_carry_churn_peers_ports_and_timeline(tmp_path):
    import pandas as pd

    out = cli_report(tmp_path, *incident_stream(), started=0.5, ended=20.5, timewait="timers", sysctls=SMALL_RANGE)
    procs = pd.read_csv(out / "processes.csv")
    assert list(procs.columns[:14]) == ["pid", "comm", "connections", "active_closes", "passive_closes",
                                        "simultaneous_closes", "resets_local", "resets_remote", "timewait_count",
                                        "timewait_p50_s", "timewait_p95_s", "timewait_max_s", "close_wait_open",
                                        "close_wait_max_age_s"]
    assert {"opened_per_s", "duration_p99_s", "short_share"} <= set(procs.columns)
    peers = pd.read_csv(out / "peers.csv")  # 10.0.0.2:80, 10.0.0.3 to our 9000, 127.0.0.1 to our 7000
    assert list(zip(peers["direction"], peers["connections"], peers["processes"])) == [
        ("outbound", 90, "churner pusher"), ("inbound", 4, "slow"), ("inbound", 1, "leaky")]
    ports_csv = pd.read_csv(out / "ports.csv")
    assert bool(ports_csv.loc[0, "warning"]) and ports_csv.loc[0, "raddr"] == "10.0.0.2"
    timeline = pd.read_csv(out / "timeline.csv")
    assert timeline["opened"].sum() == 30 + 4 + 60 + 1
    assert timeline["since_start_s"].iloc[-1] == pytest.approx(20.0)


def test_report_html_is_one_file_with_findings_first_and_embedded_plots(tmp_path):
    out = cli_report(tmp_path, *incident_stream(), started=0.5, ended=20.5, timewait="timers", sysctls=SMALL_RANGE)
    page = (out / "report.html").read_text()
    assert page.index('id="findings"') < page.index('id="timewait-over-time"')
    for section in ("timewait-over-time", "timewait-lifetimes", "closes", "churn", "ports", "close-wait", "unseen"):
        assert f'id="{section}"' in page
    assert page.count('src="data:image/png;base64,') == 6
    assert "http://" not in page and "https://" not in page  # nothing to fetch
    assert "leaks CLOSE_WAIT" in page and "run out in about 8 s" in page


@pytest.mark.parametrize("given", ["recording", "out directory"])
def test_doctor_given_a_run_adds_its_findings(tmp_path, given):
    out = cli_report(tmp_path, *incident_stream(), started=0.5, ended=20.5, timewait="timers", sysctls=SMALL_RANGE)
    run = tmp_path / "stream.jsonl" if given == "recording" else out
    result = CliRunner().invoke(main, ["doctor", str(run), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    topics = [f["topic"] for f in report["recording"]]
    assert topics[:2] == ["ports", "close_wait"]
    assert "run out in about 8 s" in report["recording"][0]["text"]


def test_the_summary_shows_the_namespace_beside_the_process_where_there_are_several(tmp_path):
    """Two containers: the same pid and comm in each, told apart by their namespace."""
    from agent.output import text

    a = analysis_of(tmp_path, raw(skaddr=1, pid=7, comm="web", states=("SYN_SENT", "ESTABLISHED", "FIN_WAIT1")))
    assert "NETNS" not in text.render(a.tally, a.procs, a.run)
    two_containers = a.procs.iloc[[0, 0]].assign(netns=["net:[4026532001]", "net:[4026532002]"])
    shown = text.render(a.tally, two_containers, a.run)
    assert "NETNS" in shown and "net:[4026532001]" in shown and "net:[4026532002]" in shown


def test_the_tables_of_a_run_still_tracing_are_written_with_what_they_leave_out(tmp_path):
    """Every --interval a trace -o rewrites its tables from the rows final so far; the summary
    says how many lives wait for their row (a SIGKILL leaves these files; report DIR finishes them)."""
    from agent.cli import results
    from agent.cli.options import View
    from agent.output import files
    from agent.safefiles import OutputDir

    a = analysis_of(tmp_path, *churn_stream(), started=0.5, ended=10.5)
    a.run.lives_pending, a.run.cut_short = 7, True
    out = OutputDir(tmp_path / "out")
    results.write_interval(out, a.tally, a.run, View())
    out.close()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(files.TABLES)
    summary = (tmp_path / "out" / "summary.txt").read_text()
    assert "Still tracing: 7 lives whose rows are not final yet" in summary
    written = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert written["totals"]["socket_lives"] == a.tally.lives == 34
    procs = {r["comm"]: r for r in csv.DictReader(open(tmp_path / "out" / "processes.csv"))}
    assert procs["churner"]["connections"] == "30" and procs["churner"]["opened"] == "30"
