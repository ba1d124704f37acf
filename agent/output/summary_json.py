"""summary.json: the facts of summary.txt and report.html for machines (NaN becomes null)."""
from __future__ import annotations

import json

import pandas as pd

from ..analysis.accounting import unseen
from ..analysis.pipeline import Analysis
from ..analysis import sketches
from ..analysis.processes import FOR_FINDINGS, open_close_waits
from ..analysis.reconcile import reconcile

MAX_ROWS = 200  # peers and CLOSE_WAITs listed; the counts say how many there were


def _records(frame: pd.DataFrame, columns: list[str] | None = None) -> list[dict]:
    frame = frame if columns is None else frame[columns]
    return json.loads(frame.head(MAX_ROWS).to_json(orient="records", double_precision=6))


def _timewait(a: Analysis) -> dict:
    procs, tally = a.procs, a.tally
    ended = tally.owners.sketch("timewait")  # (percentiles: analysis.sketches)
    count = int(ended.count) if ended is not None else 0
    quantile = lambda q: sketches.quantile(ended, q) if count else None  # noqa: E731
    return {
        "method": a.run.timewait_method, "made": int(procs["timewait_count"].sum()),
        "ended": count, "p50_s": quantile(0.5), "p95_s": quantile(0.95),
        "max_s": float(procs["timewait_max_s"].max()) if count else None,
        # the most common first (not in the order the rows happened to bring them)
        "end_reasons": {k: int(v) for k, v in sorted(tally.end_reasons.items(), key=lambda kv: (-kv[1], kv[0]))},
        "never_made_overflow": int(procs["timewait_overflow"].sum()),
        "fin_wait2_substate": tally.fin_wait2()[0],
    }


def build(a: Analysis) -> dict:
    run = a.run
    cw = open_close_waits(a.tally.close_waits(), run.ended_at)
    return {
        "run": {k: getattr(run, k) for k in ("started_at", "ended_at", "timewait_method", "kernel_release",
                                              "sysctls", "netns")}
               | {"traced_s": run.traced_s},
        "findings": a.findings,
        "totals": {"socket_lives": a.tally.lives, "processes": len(a.procs), "peers": len(a.peers),
                   "close_wait_open": len(cw)},
        "processes": _records(a.procs.drop(columns=FOR_FINDINGS)),
        "peers": _records(a.peers),
        "port_pressure": _records(a.pressure),
        "timewait": _timewait(a),
        "close_wait_open": _records(cw, ["pid", "comm", "fd", "laddr", "lport", "raddr", "rport",
                                         "close_wait_age_s", "partial"]),
        "kernel_counters": reconcile(a.tally, run),
        "not_seen": unseen(run),
        "owner_src": {k: int(v) for k, v in a.tally.owner_src.items()},  # how owners were learnt
    }
