"""What a line of a recording may hold: a recording is a file anyone can hand to `tcpclose
report`, so every value is checked for its type and range before anything is computed
from it, and a bad line is named (recording.read_recording), never a traceback."""
from __future__ import annotations

import math

from . import layout

NUMBERS = {  # column -> (lowest, highest) a value may be; None, null in JSON, is "not set"
    "skaddr": (0, 2**64 - 1), "pid": (0, 2**32 - 1), "tid": (0, 2**32 - 1), "cgroup_id": (0, 2**64 - 1),
    "lport": (0, 65535), "rport": (0, 65535), "states_raw": (0, 2**16 - 1), "flags_raw": (0, 255),
    "tw_timer": (0, 2**64 - 1), "tw_timeout_s": (0, 1e6), "fd": (0, 2**31), "inode": (0, 2**64 - 1),
    **{c: (0, 1e11) for c in ("opened_at", "estab_at", "close_wait_at", "fin_at", "event_at", "tw_start_at",
                              "tw_rearm_at")},  # epoch seconds: until the year 5138
}
# counts, ids and ports: whole numbers (written as 20.0 where pandas held the column as floats)
WHOLE = {"skaddr", "pid", "tid", "cgroup_id", "lport", "rport", "states_raw", "flags_raw", "tw_timer", "fd", "inode"}
TEXTS = {"comm": 64, "laddr": 64, "raddr": 64, "netns": 64, "thread_comm": 64, "cgroup": 4096}  # column -> longest
CHOICES = {
    "family": {"ipv4", "ipv6"},
    "owner_src": {*layout.OWNER_SRC_NAMES.values(), "snapshot", "fd_table"},
    "last_state": set(layout.TCP_STATE_NAMES.values()),
    "tw_end": {*layout.TW_END_NAMES.values()},
}
RUN_NUMBERS = ("started_at", "ended_at")
_LIFE = ("skaddr", "pid", "comm", "owner_src", "family", "laddr", "lport", "raddr", "rport", "states_raw",
         "last_state", "flags_raw")
SET = {  # kind -> the columns that cannot be null in it
    "life": (*_LIFE, "event_at"), "open": _LIFE, "existing": _LIFE, "seen_at_end": _LIFE,
    "reset_sent": ("skaddr", "event_at"), "tw_end": ("tw_timer", "event_at", "tw_end"), "tw_open": ("tw_timer",),
}


def _number_problem(value, low: float, high: float) -> str | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"is {type(value).__name__}, not a number"
    if isinstance(value, float) and not math.isfinite(value):
        return "is not a finite number"
    if not low <= value <= high:
        return f"is {value}, outside {low:g} to {high:g}"
    return None


def event_problem(row: dict) -> str | None:
    """What is wrong with one event line (a dict with a known kind), or None."""
    unset = [c for c in SET.get(row["kind"], ()) if row.get(c) is None]
    if unset:
        return f"{', '.join(unset)} not set in a {row['kind']} record"
    for column, (low, high) in NUMBERS.items():
        value = row.get(column)
        # nearly every value: none, or a number in range (a NaN or an infinity is not); a bool
        # is an int to Python, but not a number here: both go the long way
        if value is None or type(value) is int and low <= value <= high:
            continue
        if type(value) is float and low <= value <= high and (column not in WHOLE or value.is_integer()):
            continue
        if (why := _number_problem(value, low, high)):
            return f"{column} {why}"
        if column in WHOLE and isinstance(value, float) and not value.is_integer():
            return f"{column} is {value}, not a whole number"
    for column, longest in TEXTS.items():
        value = row.get(column)
        if value is not None and (not isinstance(value, str) or len(value) > longest):
            return f"{column} is not a name of at most {longest} characters"
    for column, allowed in CHOICES.items():
        value = row.get(column)
        if value is not None and (not isinstance(value, str) or value not in allowed):
            return f"{column} {str(value)[:40]!r} is none of {', '.join(sorted(allowed))}"
    return None


RUN_FIELDS = {  # run line key -> the types its value may have (None: null); the rest are read leniently
    "open_lives": (int,), "open_timewaits": (int,), "timewaits_swept": (int,), "hz": (int, None),
    "timewait_method": (str, None), "timewait_method_why": (str,), "netns": (str, None),
    "kernel_release": (str, None), "cut_short": (bool,), "rows_settled_early": (int,), "transitions": (dict, None),
    "analysis_skipped": (dict, None), "lives_pending": (int, None), "lives_carried": (int, None),
    "recording_stopped": (str, None), "counters": (dict,), "tcpext": (dict,),
    "sysctls": (dict,), "programs": (dict,), "aggregates": (list, None), "listen_queues": (list, None),
}
AGGREGATE_COUNTS = ("lives", "active", "passive", "simultaneous", "reset_local", "reset_remote", "never_established",
                    "timewait")


def _typed(value, types: tuple) -> bool:
    if value is None:
        return None in types
    if isinstance(value, bool) and bool not in types:
        return False
    return isinstance(value, tuple(t for t in types if t is not None))


def run_problem(run: dict) -> str | None:
    """What is wrong with a recording's run line, or None."""
    for column in RUN_NUMBERS:
        if (why := _number_problem(run.get(column), 0, 1e11)):
            return f"{column} {why}"
    if run["ended_at"] < run["started_at"]:
        return "ended_at is before started_at"
    for column, types in RUN_FIELDS.items():
        if column in run and not _typed(run[column], types):
            return f"{column} is {type(run[column]).__name__}"
    if any(_number_problem(v, 0, 2**64) for v in run.get("counters", {}).values()):
        return "counters are not all counts"
    if any(not isinstance(v, (str, type(None))) for v in run.get("sysctls", {}).values()):
        return "sysctls are not all text"
    for moment in run.get("tcpext", {}).values():
        if not isinstance(moment, dict) or any(
                not isinstance(ns, dict) or not isinstance(ns.get("counters", {}), dict)
                or any(_number_problem(v, 0, 2**64) for v in ns.get("counters", {}).values())
                for ns in moment.values()):
            return "tcpext is not counters per network namespace"
    for row in run.get("aggregates") or []:
        if not isinstance(row, dict) or not isinstance(row.get("comm", ""), str) or not _typed(row.get("pid"), (int, None)) \
                or any(_number_problem(row.get(k, 0), 0, 2**64) for k in AGGREGATE_COUNTS):
            return "aggregates are not counts per process"
    for row in run.get("listen_queues") or []:
        if not isinstance(row, dict):
            return "listen_queues are not listeners"
    return None
