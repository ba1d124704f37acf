"""The Python mirror of bpf/tcpclose.h: the record dtype and the header's constants.

The constants are read from the header itself, so they exist in one place;
the dtypes are written out here and tests/unit/test_layout.py checks them against
the offsets a C compiler gives for the header.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

# The BPF sources: inside the package where it was installed from a wheel (agent/bpf,
# see pyproject.toml), else the source tree's bpf/ (a checkout, or an editable install).
_PACKAGE = Path(__file__).resolve().parents[1]
BPF_DIR = _PACKAGE / "bpf" if (_PACKAGE / "bpf" / "tcpclose.h").is_file() else _PACKAGE.parent / "bpf"
HEADER = BPF_DIR / "tcpclose.h"
PROGRAM = BPF_DIR / "tcpclose.bpf.c"


def _read_defines(path: Path) -> dict[str, int]:
    defines = {}
    for name, value in re.findall(r"^#define\s+(\w+)\s+(0x[0-9a-fA-F]+|\d+)\b", path.read_text(), re.M):
        defines[name] = int(value, 0)
    return defines


def _read_lists(path: Path) -> dict[str, tuple[int, ...]]:
    """The #defines of a list of numbers, NAME(X) X(n) X(n) ..., continued over lines with backslashes."""
    text = path.read_text().replace("\\\n", " ")
    return {name: tuple(int(v) for v in re.findall(r"X\((\d+)\)", values))
            for name, values in re.findall(r"^#define\s+(\w+)\(X\)((?:\s*X\(\d+\))+)", text, re.M)}


DEFINES = _read_defines(HEADER)  # EV_LIFE, FLAG_PARTIAL, TCP_CLOSE_WAIT, C_RINGBUF_DROPS, ...
LISTS = _read_lists(HEADER)  # TW_BOUNDS_US, DURATION_BOUNDS_US

# the owner's name and the socket's two ends, in the same place of both structs
_ENDS = [("comm", "S16"), ("saddr", "u1", (16,)), ("daddr", "u1", (16,)), ("sport", "<u2"), ("dport", "<u2"),
         ("family", "<u2")]
EVENT_DTYPE = np.dtype(
    [
        ("ts_ns", "<u8"),
        ("opened_ns", "<u8"),
        ("estab_ns", "<u8"),
        ("close_wait_ns", "<u8"),
        ("fin_ns", "<u8"),
        ("skaddr", "<u8"),
        ("cgroup_id", "<u8"),
        ("pid", "<u4"),
        ("tid", "<u4"),
        *_ENDS,
        ("states", "<u2"),
        ("kind", "u1"),
        ("owner_src", "u1"),
        ("last_state", "u1"),
        ("flags", "u1"),
        ("tw_timeout", "<u4"),
        ("tw_timer", "<u8"),
        ("tw_start_ns", "<u8"),
        ("tw_rearm_ns", "<u8"),
        ("tw_end", "u1"),
        ("pad", "u1", (7,)),
    ]
)

TRANSITION_DTYPE = np.dtype(
    [
        ("ts_ns", "<u8"),
        ("skaddr", "<u8"),
        ("pid", "<u4"),
        ("task_pid", "<u4"),
        *_ENDS,
        ("oldstate", "u1"),
        ("newstate", "u1"),
        ("owner_src", "u1"),
        ("pad", "u1", (7,)),
    ]
)
# what the agent's BPF side makes per owner (one per CPU: metrics.owners sums them)
FIGURES_DTYPE = np.dtype(
    [
        ("n", "<u8", (DEFINES["NR_AGGREGATES"],)),
        ("tw_followed", "<u8"),
        ("tw_end", "<u8", (DEFINES["NR_TW_ENDS"],)),
        ("tw_life", "<u8", (DEFINES["NR_TW_BOUNDS"] + 1,)),
        ("tw_life_us", "<u8"),
        ("duration", "<u8", (DEFINES["NR_DURATION_BOUNDS"] + 1,)),
        ("duration_us", "<u8"),
        ("cgroup_id", "<u8"),
        ("pid", "<u4"),
        ("comm", "S16"),
        ("pad", "<u4"),
    ]
)
HELD_DTYPE = np.dtype([("n", "<i8"), ("saddr", "u1", (16,)), ("daddr", "u1", (16,)), ("dport", "<u2"),
                       ("family", "<u2"), ("pad", "<u4")])
STRUCTS = {"tcpclose_event": EVENT_DTYPE, "tcpclose_transition": TRANSITION_DTYPE,
           "tcpclose_figures": FIGURES_DTYPE, "tcpclose_held": HELD_DTYPE}  # checked by tests/unit/test_layout.py

TCP_STATE_NAMES = {
    value: name[len("TCP_"):] for name, value in DEFINES.items() if name.startswith("TCP_")
}
KIND_NAMES = {
    DEFINES["EV_LIFE"]: "life", DEFINES["EV_OPEN"]: "open", DEFINES["EV_RESET_SENT"]: "reset_sent",
    DEFINES["EV_TW_END"]: "tw_end", DEFINES["EV_TW_OPEN"]: "tw_open",
}
TW_END_NAMES = {
    DEFINES["TW_EXPIRED"]: "expired", DEFINES["TW_CANCELLED"]: "cancelled", DEFINES["TW_REPLACED"]: "replaced",
    DEFINES["TW_REUSED"]: "reused",
}
OWNER_SRC_NAMES = {
    DEFINES["OWNER_NONE"]: "none",
    DEFINES["OWNER_SYSCALL"]: "syscall",
    DEFINES["OWNER_LISTENER"]: "listener",
    DEFINES["OWNER_AMBIGUOUS"]: "ambiguous",
}  # and, from the fd tables (/proc/PID/fd, kernel/diag.py): "snapshot" for a socket found at the
#    start of tracing, "fd_table" for one still open at its end
COUNTER_NAMES = {
    value: name[len("C_"):].lower() for name, value in DEFINES.items() if name.startswith("C_")
}
