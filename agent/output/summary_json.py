"""summary.json: the facts of summary.txt and report.html for machines (NaN becomes null)."""
from __future__ import annotations

import json

import pandas as pd

from ..analysis.accounting import unseen
from ..analysis.pipeline import Analysis
from ..analysis.processes import open_close_waits
from ..analysis.reconcile import reconcile

MAX_ROWS = 200  # peers and CLOSE_WAITs listed; the counts say how many there were


def _records(frame: pd.DataFrame, columns: list[str] | None = None) -> list[dict]:
    frame = frame if columns is None else frame[columns]
    return json.loads(frame.head(MAX_ROWS).to_json(orient="records", double_precision=6))


def _timewait(a: Analysis) -> dict:
    conns = a.conns
    made = conns["tw_made"]
    ended = conns["tw_s"].where(conns["tw_ended"]).dropna()
    quantile = lambda q: float(ended.quantile(q)) if len(ended) else None  # noqa: E731
    return {
        "method": a.run.timewait_method, "made": int(made.sum()),
        "ended": len(ended), "p50_s": quantile(0.5), "p95_s": quantile(0.95), "max_s": quantile(1.0),
        "end_reasons": {k: int(v) for k, v in conns.loc[made, "tw_end_reason"].value_counts().items()},
        "never_made_overflow": int(conns["tw_overflow"].sum()),
        "fin_wait2_substate": int(conns["tw_fin_wait2_s"].notna().sum()),
    }


def build(a: Analysis) -> dict:
    run = a.run
    cw = open_close_waits(a.conns, run.ended_at)
    return {
        "run": {k: getattr(run, k) for k in ("started_at", "ended_at", "timewait_method", "kernel_release",
                                              "sysctls", "netns")}
               | {"traced_s": run.traced_s},
        "findings": a.findings,
        "totals": {"socket_lives": len(a.conns), "processes": len(a.procs), "peers": len(a.peers),
                   "close_wait_open": len(cw)},
        "processes": _records(a.procs),
        "peers": _records(a.peers),
        "port_pressure": _records(a.pressure),
        "timewait": _timewait(a),
        "close_wait_open": _records(cw, ["pid", "comm", "fd", "laddr", "lport", "raddr", "rport",
                                         "close_wait_age_s", "partial"]),
        "kernel_counters": reconcile(a.conns, run),
        "not_seen": unseen(run),
        "owner_src": {k: int(v) for k, v in a.conns["owner_src"].value_counts().items()},  # how owners were learnt
    }
