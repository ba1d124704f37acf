"""What tcpclose agents reported to Prometheus over a time range, per workload: read back
through Prometheus' HTTP API (/api/v1/query), for `tcpclose report --prometheus`.

Counts over the range are the counters' increase; a series that began inside the range
(a workload's first close since its agent started) counts from 0, where Prometheus'
increase() would start from its first sample and miss it.  increase() extrapolates to the
range's edges, so counts are rounded.  The gauges are read at the range's end (CLOSE_WAITs
open) and at their worst within it (oldest CLOSE_WAIT, port headroom).  What report.html
plots over the range comes from range queries (/api/v1/query_range), POINTS steps of it;
the series are summed per workload (or destination) by Prometheus and the busiest chosen
here: no name read from Prometheus goes back into a query.
"""
from __future__ import annotations

import json
import re
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field

import pandas as pd

from ..analysis.rules import INITIATORS
from ..errors import PrometheusUnreadable

KINDS = [kind for kind in INITIATORS if kind != "open"]
REASONS = ("expired", "reused", "killed", "unknown")  # how the agents say TIME_WAITs ended
TIMEOUT_S = 30.0
DURATION = re.compile(r"^(\d+)(s|m|h|d)$")  # Prometheus' own way: 90s, 30m, 6h, 2d
SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
INSTANCE = re.compile(r"^[\w.:\[\]-]+$")  # HOST:PORT as Prometheus labels its targets
ADDRESS = re.compile(r"^https?://[^\s/]+")
POINTS = 240  # steps per plotted range


@dataclass
class Fleet:
    """The range read, and what the agents reported over it."""
    end: float  # epoch seconds
    seconds: int
    instances: list[str]
    workloads: pd.DataFrame  # one row per workload (processes.csv's counting columns, and the TIME_WAIT ones)
    headroom: pd.DataFrame  # the destinations with the least port headroom: instance, source, destination, headroom
    unseen: dict[str, int]
    overflows: int = 0  # TIME_WAITs the kernels did not make: tcp_max_tw_buckets reached
    # over the range, for report.html: a frame per figure, indexed by time (epoch s), a column per
    # workload or destination (OVER_TIME's keys)
    over_time: dict[str, pd.DataFrame] = field(default_factory=dict)
    lifetimes: pd.Series = None  # TIME_WAITs ended over the range per lifetime bucket (its upper bound, s)


class Prometheus:
    def __init__(self, url: str):
        """url: the server's address, http(s)://HOST:PORT (ADDRESS)."""
        self.url = url.rstrip("/")

    def query(self, expr: str, at: float) -> list[dict]:
        """An instant query's series: [{"metric": {labels}, "value": [t, "v"]}, ...]."""
        return self._ask("query", {"query": expr, "time": f"{at:.3f}"})

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[dict]:
        """A range query's series: [{"metric": {labels}, "values": [[t, "v"], ...]}, ...]."""
        return self._ask("query_range", {"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}",
                                         "step": f"{step:.3f}"})

    def _ask(self, api: str, arguments: dict) -> list[dict]:
        address = f"{self.url}/api/v1/{api}?" + urllib.parse.urlencode(arguments)
        try:
            with urllib.request.urlopen(address, timeout=TIMEOUT_S) as response:
                answer = json.loads(response.read(64 << 20))
        except urllib.error.HTTPError as exc:
            raise PrometheusUnreadable(f"Prometheus at {self.url} refused the query ({exc.code}): {exc.reason}") from None
        except (OSError, ValueError) as exc:
            raise PrometheusUnreadable(f"cannot read Prometheus at {self.url}: {exc}; is it the server's address "
                           "(http://HOST:9090)?") from None
        if not isinstance(answer, dict) or answer.get("status") != "success":
            raise PrometheusUnreadable(f"Prometheus at {self.url} answered: {str(answer)[:200]!r}")
        return answer["data"]["result"]


def _counted(metric: str, selector: str, seconds: int, by: str) -> str:
    """The increase of a counter over the range per `by`, a series born inside it counted from 0."""
    series = f"{metric}{selector}"
    return (f"sum by ({by}) ((increase({series}[{seconds}s]) and {series} offset {seconds}s) "
            f"or {series})")


def _rows(result: list[dict], keys: list[str]) -> pd.DataFrame:
    return pd.DataFrame([{**{k: r["metric"].get(k, "") for k in keys}, "value": float(r["value"][1])}
                         for r in result], columns=[*keys, "value"])


def _over_time(result: list[dict], label: str) -> pd.DataFrame:
    """A range query's series as one frame: a row per step (epoch s), a column per `label` value."""
    columns = {r["metric"].get(label, ""): pd.Series({float(t): float(v) for t, v in r["values"]}) for r in result}
    return pd.DataFrame(columns).sort_index() if columns else pd.DataFrame()


# what report.html plots over the range: name -> (query, with {sel} the selector and {window}
# rate()'s, the label that names a series)
OVER_TIME = {
    "active_closes": ("sum by (workload) (rate(tcpclose_closes_total{{kind=\"active\"{inner}}}[{window}s]))", "workload"),
    "close_waits": ("sum by (workload) (tcpclose_close_wait_sockets{sel})", "workload"),
    "headroom": ("min by (destination) (tcpclose_port_headroom_ratio{sel})", "destination"),
}


def _lifetimes(prometheus: Prometheus, end: float, seconds: int, selector: str) -> pd.Series:
    """The TIME_WAITs ended over the range per lifetime bucket (the buckets' upper bounds, the
    last +Inf), from the histogram's cumulative buckets."""
    found = prometheus.query(_counted("tcpclose_timewait_lifetime_seconds_bucket", selector, seconds, "le"), end)
    cumulative = pd.Series({float(r["metric"]["le"]): float(r["value"][1]) for r in found}, dtype=float).sort_index()
    return cumulative.diff().fillna(cumulative).clip(lower=0).round().astype(int)


def read(prometheus: Prometheus, end: float, seconds: int, instance: str | None = None) -> Fleet:
    """Every workload's figures over the `seconds` before `end`, on every instance or one
    (INSTANCE: checked by the caller, it goes into the queries)."""
    selector = f'{{instance="{instance}"}}' if instance else ""

    def ask(expr: str, keys: list[str]) -> pd.DataFrame:
        return _rows(prometheus.query(expr, end), keys)

    instances = sorted(ask(f"count by (instance) (tcpclose_last_update_timestamp_seconds{selector})",
                           ["instance"])["instance"])
    closes = ask(_counted("tcpclose_closes_total", selector, seconds, "workload, kind"), ["workload", "kind"])
    table = closes.pivot_table(index="workload", columns="kind", values="value", aggfunc="sum", fill_value=0.0)
    table = table.reindex(columns=KINDS, fill_value=0.0)

    def column(expr: str) -> pd.Series:
        found = ask(expr, ["workload"])
        return found.set_index("workload")["value"] if len(found) else pd.Series(dtype=float)

    out = pd.DataFrame({
        "connections": table.sum(axis=1),
        "active_closes": table["active"], "passive_closes": table["passive"],
        "simultaneous_closes": table["simultaneous"], "resets_local": table["reset_local"],
        "resets_remote": table["reset_remote"], "closes_unseen": table["close_unseen"],
    })
    wanted = {
        "timewait_count": _counted("tcpclose_timewaits_total", selector, seconds, "workload"),
        "timewait_unlinked": _counted("tcpclose_timewaits_unlinked_total", selector, seconds, "workload"),
        "close_wait_open": f"sum by (workload) (tcpclose_close_wait_sockets{selector})",
        "close_wait_max_age_s": f"max by (workload) (max_over_time(tcpclose_close_wait_oldest_seconds{selector}"
                                f"[{seconds}s]))",
    }
    for name, expr in wanted.items():
        out = out.join(column(expr).rename(name), how="outer")
    ends = ask(_counted("tcpclose_timewait_ends_total", selector, seconds, "workload, reason"), ["workload", "reason"])
    for reason in REASONS:
        mine = ends[ends["reason"] == reason].set_index("workload")["value"]
        out = out.join(mine.rename(f"timewait_{reason}"), how="outer")
    for name, q in (("timewait_p50_s", 0.5), ("timewait_p95_s", 0.95)):
        expr = f"histogram_quantile({q}, {_counted('tcpclose_timewait_lifetime_seconds_bucket', selector, seconds, 'le, workload')})"
        out = out.join(column(expr).rename(name), how="outer")
    counts = [c for c in out.columns if not c.endswith("_s")]
    out[counts] = out[counts].fillna(0.0).round().astype(int)
    out = out.rename_axis("comm").reset_index().sort_values(["connections", "comm"], ascending=[False, True])
    headroom = ask(f"bottomk(10, min by (instance, source, destination) (min_over_time("
                   f"tcpclose_port_headroom_ratio{selector}[{seconds}s])))", ["instance", "source", "destination"])
    unseen = ask(_counted("tcpclose_unseen_total", selector, seconds, "what"), ["what"])
    overflows = ask(_counted("tcpclose_timewait_overflows_total", selector, seconds, "instance"), ["instance"])
    step = max(seconds / POINTS, 1.0)
    window = int(max(2 * step, 60))  # rate() wants two scrapes in its window
    inner = f',instance="{instance}"' if instance else ""
    over_time = {name: _over_time(prometheus.query_range(expr.format(sel=selector, inner=inner, window=window),
                                                         end - seconds, end, step), label)
                 for name, (expr, label) in OVER_TIME.items()}
    return Fleet(end, seconds, instances, out.reset_index(drop=True),
                 headroom.rename(columns={"value": "headroom"}).sort_values("headroom").reset_index(drop=True),
                 {r.what: int(round(r.value)) for r in unseen.itertuples()},
                 int(round(overflows["value"].sum())), over_time, _lifetimes(prometheus, end, seconds, selector))
