"""Per-process figures from the connection rows (processes.csv), and from per-process counts."""
from __future__ import annotations


import pandas as pd

from .churn import CHURN_COLUMNS, DURATION_QUANTILES, with_churn
from .tally import TIMEWAIT_REASONS, Tally

PROCESS_COLUMNS = [
    "pid", "comm", "connections", "active_closes", "passive_closes", "simultaneous_closes",
    "resets_local", "resets_remote", "timewait_count", "timewait_p50_s", "timewait_p95_s",
    "timewait_max_s", "close_wait_open", "close_wait_max_age_s",
]
# after the contract's columns: how the TIME_WAITs ended, and those never made
EXTRA_PROCESS_COLUMNS = [*TIMEWAIT_REASONS, "timewait_overflow", "netns", "closes_unseen", "container", "unit"]


def open_close_waits(conns: pd.DataFrame, ended_at: float) -> pd.DataFrame:
    """Sockets still in CLOSE_WAIT when tracing ended: the peer closed, the owner has not."""
    cw = conns[conns["close_wait_open"].to_numpy(bool)].copy()
    cw["close_wait_age_s"] = ended_at - cw["close_wait_at"]
    return cw.sort_values("close_wait_age_s", ascending=False)


FOR_FINDINGS = ["servers", "tw_as_server"]  # (not in processes.csv) its lives as the server, and TIME_WAITs so
PER_PROCESS = ["pid", "comm"]  # processes.csv: one row per process (a pid and its name)
PER_COMM = ["comm"]  # workloads.csv and the summary: what people mean by "the application"
PER_WORKLOAD = ["workload"]  # the container, else the systemd unit, else the name (analysis.lives._place)
# of a row grouped by name: how many processes it folds, and a few of their pids
GROUP_COLUMNS = ["processes", "pids"]
PIDS_SHOWN = 5


def pid_examples(pids: pd.Series) -> str:
    """A few pids of a group, in order, '...' where there are more."""
    known = sorted(set(pids.dropna().astype(int)))
    return " ".join(map(str, known[:PIDS_SHOWN])) + (" ..." if len(known) > PIDS_SHOWN else "")


def processes(tally: Tally, ended_at: float, keys: list[str] = PER_PROCESS) -> pd.DataFrame:
    """One row per owning process (keys PER_PROCESS), or per process name (PER_COMM: the
    pids folded in, with their count and a few of them; pid is set where the name is one
    process's), or per workload (PER_WORKLOAD), sorted by connections; unknown owners have
    no pid.  With the churn columns (CHURN_COLUMNS) up to ended_at."""
    columns = PROCESS_COLUMNS + EXTRA_PROCESS_COLUMNS + GROUP_COLUMNS + CHURN_COLUMNS
    owners = tally.owners
    if not len(owners):
        return pd.DataFrame(columns=columns + FOR_FINDINGS)
    folded = {} if "pid" in keys else {"processes": ("pid", "nunique"), "pids": ("pid", pid_examples),
                                       "pid": ("pid", lambda s: s.iloc[0] if s.nunique() == 1 else pd.NA)}
    out = owners.summary(keys, {"timewait_p50_s": ("timewait", 0.5), "timewait_p95_s": ("timewait", 0.95),
                                **DURATION_QUANTILES}, ended_at, extra={
        **folded,  # the owner's network namespace, container and unit (first known; None: not known)
        **{c: (c, "first") for c in ("netns", "container", "unit") if c not in keys}})
    out["close_wait_max_age_s"] = ended_at - out["close_wait_since"]
    out = with_churn(out, ended_at - tally.started_at)
    if "comm" not in keys:  # (grouped by workload: its label is the name shown)
        out["comm"] = out[keys[0]].astype(str)
    if "pid" in keys:
        out["processes"] = out["pid"].notna().astype(int)
        out["pids"] = out["pid"].astype("Int64").astype(str).where(out["pid"].notna(), "")
    out["pid"] = out["pid"].astype("Int64")
    out = out.sort_values(["connections", keys[0]], ascending=[False, True], kind="stable")
    return out.reindex(columns=columns + FOR_FINDINGS + [k for k in keys if k not in columns]).reset_index(drop=True)


# --aggregates: the procs map's counts (bpf/tcpclose.h A_x) and the columns they fill
_FROM_COUNTS = {"active_closes": "active", "passive_closes": "passive", "simultaneous_closes": "simultaneous",
                "resets_local": "reset_local", "resets_remote": "reset_remote", "timewait_count": "timewait",
                "closes_unseen": "close_unseen"}


def from_counts(counts: list[dict], open_conns: pd.DataFrame, ended_at: float) -> pd.DataFrame:
    """processes.csv for a run that counted in BPF (--aggregates): the ended lives' counts
    per owner, plus the lives still open at the end (open_conns, from analysis.lives), which
    give the CLOSE_WAIT columns.  TIME_WAITs are counted, not timed: no percentiles."""
    ended = pd.DataFrame(counts, columns=["pid", "comm", "lives", *_FROM_COUNTS.values(), "never_established"])
    ended = ended.rename(columns={v: k for k, v in _FROM_COUNTS.items()}).rename(columns={"lives": "connections"})
    ended["pid"] = ended["pid"].astype("Int64")
    still_open = processes(Tally.of(open_conns, ended_at), ended_at)  # (their counts only: none opened here)
    merged = pd.concat([ended, still_open], ignore_index=True)
    numeric = ["connections", *_FROM_COUNTS, "close_wait_open"]
    out = merged.groupby(["pid", "comm"], dropna=False, sort=False).agg(
        **{c: (c, "sum") for c in numeric}, close_wait_max_age_s=("close_wait_max_age_s", "max")).reset_index()
    out[numeric] = out[numeric].astype(int)
    out = out.sort_values(["connections", "pid"], ascending=[False, True], kind="stable")
    return out.reindex(columns=PROCESS_COLUMNS + EXTRA_PROCESS_COLUMNS).reset_index(drop=True)
