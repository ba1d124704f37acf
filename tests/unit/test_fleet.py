"""tcpclose report --prometheus: its arguments, and the fleet's summary (metrics.fleet,
output.fleet_summary); tests/live/test_live_agent.py reads a real Prometheus."""
import pandas as pd
import pytest
from click.testing import CliRunner

from agent.cli import main
from agent.metrics.fleet import Fleet
from agent.output import fleet_summary


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


def test_the_summary_speaks_of_each_workload_and_escapes_names():
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
    text = fleet_summary.render(Fleet(1.8e9, 3600, ["web1:9864"], rows, headroom, {"ringbuf_drops": 0}, overflows=4),
                                "http://p:9090")
    assert "\x1b" not in text and "web\\x1b[2J" in text
    assert "in the 1 h to" in text
    assert "fetcher closed first on 8 of 8 closes: 8 TIME_WAITs on its side" in text
    assert ("fetcher: 5 expired, 2 reused; median 60.8 s; 1 due and not seen made (tcp_max_tw_buckets, or a timer "
            "event missed)") in text
    assert "The kernels made 4 TIME_WAITs fewer than due" in text
    assert "web\\x1b[2J: 3 sockets in CLOSE_WAIT, the oldest 400 s old" in text
    assert "web1:9864: 10.0.0.9 -> 10.0.0.1:5432: 15% of the range free at the lowest" in text
