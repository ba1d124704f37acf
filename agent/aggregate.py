"""Per-process figures from the connection rows (pandas)."""
from __future__ import annotations

import numpy as np
import pandas as pd

PROCESS_COLUMNS = [
    "pid", "comm", "connections", "active_closes", "passive_closes", "simultaneous_closes",
    "resets_local", "resets_remote", "timewait_count", "timewait_p50_s", "timewait_p95_s",
    "timewait_max_s", "close_wait_open", "close_wait_max_age_s",
]
# after the contract's columns: how the TIME_WAITs ended, and those never made
TIMEWAIT_REASON_COLUMNS = {
    "timewait_expired": "expired", "timewait_reused": "reused", "timewait_killed": "killed",
    "timewait_open": "open", "timewait_unknown": "unknown",
}
EXTRA_PROCESS_COLUMNS = [*TIMEWAIT_REASON_COLUMNS, "timewait_overflow"]
ENDED_TIMEWAIT = ("expired", "reused", "killed")
_CLOSE_COUNTS = {
    "active_closes": "active", "passive_closes": "passive", "simultaneous_closes": "simultaneous",
    "resets_local": "reset_local", "resets_remote": "reset_remote",
}


def open_close_waits(conns: pd.DataFrame, ended_at: float) -> pd.DataFrame:
    """Sockets still in CLOSE_WAIT when tracing ended: the peer closed, the owner has not."""
    cw = conns[(conns["initiator"] == "open") & (conns["last_state"] == "CLOSE_WAIT")].copy()
    cw["close_wait_age_s"] = ended_at - cw["close_wait_at"]
    return cw.sort_values("close_wait_age_s", ascending=False)


def processes(conns: pd.DataFrame, ended_at: float) -> pd.DataFrame:
    """One row per owning process, sorted by connections; unknown owners have no pid."""
    if not len(conns):
        return pd.DataFrame(columns=PROCESS_COLUMNS + EXTRA_PROCESS_COLUMNS)
    reason = conns["tw_end_reason"]
    frame = conns.assign(
        **{column: conns["initiator"] == initiator for column, initiator in _CLOSE_COUNTS.items()},
        **{column: reason == value for column, value in TIMEWAIT_REASON_COLUMNS.items()},
        made_tw=conns["tw_start"].notna(),
        # percentiles over the TIME_WAITs whose end was seen, not the ages of open ones
        tw_ended_s=conns["tw_s"].where(reason.isin(ENDED_TIMEWAIT)),
        close_wait_open=(conns["initiator"] == "open") & (conns["last_state"] == "CLOSE_WAIT"),
    )
    frame["close_wait_age_s"] = np.where(frame["close_wait_open"], ended_at - frame["close_wait_at"], np.nan)
    grouped = frame.groupby(["pid", "comm"], dropna=False, sort=False)
    out = grouped.agg(
        connections=("initiator", "size"),
        **{column: (column, "sum") for column in _CLOSE_COUNTS},
        timewait_count=("made_tw", "sum"),
        timewait_p50_s=("tw_ended_s", lambda s: s.quantile(0.5)),
        timewait_p95_s=("tw_ended_s", lambda s: s.quantile(0.95)),
        timewait_max_s=("tw_ended_s", "max"),
        close_wait_open=("close_wait_open", "sum"),
        close_wait_max_age_s=("close_wait_age_s", "max"),
        **{column: (column, "sum") for column in TIMEWAIT_REASON_COLUMNS},
        timewait_overflow=("tw_overflow", "sum"),
    ).reset_index()
    out = out.sort_values(["connections", "pid"], ascending=[False, True], kind="stable")
    return out[PROCESS_COLUMNS + EXTRA_PROCESS_COLUMNS].reset_index(drop=True)
