"""tcpclose report --prometheus: its arguments, and the fleet's summary (metrics.fleet,
output.fleet_summary, output.fleet_report); tests/live/test_live_agent.py reads a real Prometheus."""
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from agent.cli import main
from agent.metrics import fleet
from agent.metrics.fleet import Fleet
from agent.output import fleet_report, fleet_summary


@pytest.mark.parametrize("args, says", [
    (["--prometheus", "ftp://x"], "not a Prometheus address"),
    (["--prometheus", "http://p:9090", "--since", "0h"], "not a duration"),
    (["--prometheus", "http://p:9090", "--since", "1w"], "not a duration"),
    # the instance goes into the queries: a quote would change them
    (["--prometheus", "http://p:9090", "--instance", 'x"} or vector(1) #'], "not an instance"),
    ([], "give a recording, or --prometheus URL"),
])
def test_bad_arguments_get_one_line_and_exit_2(args, says):
    done = CliRunner().invoke(main, ["report", *args])
    assert done.exit_code == 2 and says in done.output, done.output


def test_an_unreachable_prometheus_is_one_line_and_exit_10():
    done = CliRunner().invoke(main, ["report", "--prometheus", "http://127.0.0.1:1"])
    assert done.exit_code == 10 and "cannot read Prometheus at http://127.0.0.1:1" in done.output


def _fleet(**over_time) -> Fleet:
    rows = pd.DataFrame([
        {"comm": "web\x1b[2J", "connections": 10, "active_closes": 0, "passive_closes": 10,
         "simultaneous_closes": 0, "resets_local": 0, "resets_remote": 0, "timewait_count": 0,
         "timewait_p50_s": float("nan"), "timewait_unlinked": 0, "close_wait_open": 3,
         "close_wait_max_age_s": 400.0, "timewait_expired": 0, "timewait_reused": 0, "timewait_killed": 0,
         "timewait_unknown": 0},
        {"comm": "fetcher", "connections": 8, "active_closes": 8, "passive_closes": 0,
         "simultaneous_closes": 0, "resets_local": 0, "resets_remote": 2, "timewait_count": 8,
         "timewait_p50_s": 60.8, "timewait_unlinked": 1, "close_wait_open": 0,
         "close_wait_max_age_s": float("nan"), "timewait_expired": 5, "timewait_reused": 2, "timewait_killed": 0,
         "timewait_unknown": 0},
    ])
    headroom = pd.DataFrame([{"instance": "web1:9864", "source": "10.0.0.9", "destination": "10.0.0.1:5432",
                              "headroom": 0.15}])
    return Fleet(1.8e9, 3600, ["web1:9864"], rows, headroom, {"ringbuf_drops": 0}, overflows=4,
                 over_time=over_time, lifetimes=pd.Series({1.0: 2, 60.5: 5, float("inf"): 0}))


def test_the_summary_speaks_of_each_workload_and_escapes_names():
    text = fleet_summary.render(_fleet(), "http://p:9090")
    assert "\x1b" not in text and "web\\x1b[2J" in text
    assert "in the 1 h to" in text
    assert "fetcher closed first on 8 of 8 closes: 8 TIME_WAITs on its side" in text
    assert ("fetcher: 5 expired, 2 reused; median 60.8 s; 1 due and not seen made (tcp_max_tw_buckets, or a timer "
            "event missed)") in text
    assert "The kernels made 4 TIME_WAITs fewer than due" in text
    assert "web\\x1b[2J: 3 sockets in CLOSE_WAIT, the oldest 400 s old" in text
    assert "web1:9864: 10.0.0.9 -> 10.0.0.1:5432: 15% of the range free at the lowest" in text


def test_the_fleet_report_says_what_the_range_shows_and_plots_it(tmp_path):
    minutes = pd.Index([1.8e9 - 600 + 60 * i for i in range(11)], dtype=float)
    fleet = _fleet(active_closes=pd.DataFrame({"fetcher": [2.0] * 11}, index=minutes),
                   close_waits=pd.DataFrame({"web\x1b[2J": np.arange(11.0), "idle": [0.0] * 11}, index=minutes),
                   headroom=pd.DataFrame({"10.0.0.1:5432": np.linspace(1, 0.15, 11)}, index=minutes))
    found = {f["topic"]: f for f in fleet_report.findings(fleet)}
    assert found["closes_first"]["text"].startswith("fetcher closes first: 8 of its 8 closes were active, and left "
                                                    "8 TIME_WAITs")
    assert found["close_wait"]["severity"] == "problem"
    assert "web\\x1b[2J leaks CLOSE_WAIT: 3 sockets" in found["close_wait"]["text"]
    assert "oldest 400 s old" in found["close_wait"]["evidence"]
    assert found["ports"]["severity"] == "warning" and "held 85% of the ephemeral port range" in found["ports"]["text"]
    assert found["overflow"]["severity"] == "problem" and "4 TIME_WAITs fewer" in found["overflow"]["text"]
    assert "unseen" not in found  # no record lost

    page = fleet_report.render(fleet, "http://p:9090", "the text", top=20)
    assert "\x1b" not in page
    for plot in ("closes", "close-wait", "ports", "timewait-lifetimes"):
        assert f'id="{plot}-plot"' in page
    assert "<pre>the text</pre>" in page

    quiet = _fleet()  # no series over the range: each plot says why it is not there
    quiet.workloads[["timewait_expired", "timewait_reused"]] = 0
    quiet.lifetimes = pd.Series(dtype=int)
    page = fleet_report.render(quiet, "http://p:9090", "", top=20)
    assert "no workload closed a connection first in the range" in page
    assert "no client TIME_WAIT held a port in the range" in page
    assert "no TIME_WAIT ended in the range" in page
    assert "-plot" not in page


class _Answers:
    """A Prometheus that answers each query with what the test gives for it."""
    def __init__(self, answer):
        self.answer = answer

    def query(self, expr, at):
        return self.answer

    def query_range(self, expr, start, end, step):
        return self.answer


def test_lifetime_buckets_are_read_from_cumulative_counts():
    cumulative = [{"metric": {"le": le}, "value": [0, count]} for le, count in
                  (("+Inf", "12"), ("0.5", "2"), ("60.5", "11.9"), ("60", "2"))]
    assert fleet._lifetimes(_Answers(cumulative), 1.8e9, 600, "").to_dict() == {0.5: 2, 60.0: 0, 60.5: 10,
                                                                                float("inf"): 0}
    series = [{"metric": {"workload": "a"}, "values": [[1.0, "1"], [2.0, "3"]]},
              {"metric": {"workload": "b"}, "values": [[2.0, "5"]]}]
    frame = fleet._over_time(series, "workload")
    assert frame.index.tolist() == [1.0, 2.0] and frame["a"].tolist() == [1, 3] and frame["b"].iloc[1] == 5
