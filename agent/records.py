"""Decoding: raw ring-buffer records -> a frame of decoded events, and JSONL recordings.

This is the one boundary between kernel encodings and the rest of tcpclose.
Records arrive in batches and are decoded vectorised (a numpy structured view
of the bytes straight into pandas): there is no Python object per record.
Column names follow bpf/tcpclose.h; monotonic `_ns` times become epoch
seconds in `_at` columns, raw bitmasks keep a `_raw` suffix.
"""
from __future__ import annotations

import ipaddress
import json
import struct
from pathlib import Path
from typing import Iterable, TextIO

import numpy as np
import pandas as pd

from . import layout
from .errors import BadRecording, open_for_writing

# every recording has these; columns added later are read as empty from older recordings
REQUIRED_COLUMNS = [
    "kind", "skaddr", "pid", "tid", "comm", "cgroup_id", "owner_src",
    "family", "laddr", "lport", "raddr", "rport",
    "states_raw", "last_state", "flags_raw",
    "opened_at", "estab_at", "close_wait_at", "fin_at", "event_at",
]
EVENT_COLUMNS = [
    *REQUIRED_COLUMNS,
    "tw_timer", "tw_start_at", "tw_rearm_at", "tw_timeout_s", "tw_end",
    "netns",  # the owner's network namespace, filled in by the tracer (None: not known)
    "fd", "inode",  # sock_diag snapshots only: the owner's file descriptor and the socket's inode
]
# rows made from sock_diag snapshots (agent/sockets.py), not from BPF records:
#   existing     a connection that was there when tracing started (a life begun before it)
#   seen_at_end  a CLOSE_WAIT still there when tracing ended, with its owner's fd
SNAPSHOT_KINDS = ("existing", "seen_at_end")
_TIMES = {"opened_ns": "opened_at", "estab_ns": "estab_at", "close_wait_ns": "close_wait_at",
          "fin_ns": "fin_at", "ts_ns": "event_at", "tw_start_ns": "tw_start_at", "tw_rearm_ns": "tw_rearm_at"}
# records that describe a timewait socket, not a socket life: only their tw_* fields and time mean anything
_TIMEWAIT_KINDS = ("tw_end", "tw_open")
FAMILY_NAMES = {2: "ipv4", 10: "ipv6"}


def empty_events() -> pd.DataFrame:
    return pd.DataFrame({name: pd.Series(dtype=object) for name in EVENT_COLUMNS})


def addresses(raw: np.ndarray, family: np.ndarray) -> np.ndarray:
    """16-byte address fields -> text, converting each distinct address once.

    The bytes are viewed as two u64 and factorized by hashing: a batch holds
    thousands of records but only a handful of distinct addresses.
    """
    halves = np.ascontiguousarray(raw).view("<u8")
    keys = pd.MultiIndex.from_arrays([family, halves[:, 0], halves[:, 1]])
    codes, uniques = keys.factorize()
    text = []
    for fam, first, second in uniques:
        packed = struct.pack("<QQ", first, second)
        text.append(str(ipaddress.IPv6Address(packed)) if fam == 10 else str(ipaddress.IPv4Address(packed[:4])))
    return np.array(text, dtype=object)[codes]


def _comms(raw: np.ndarray) -> np.ndarray:
    """Task names -> text, decoding each distinct name once (and sharing its str between rows)."""
    codes, uniques = pd.factorize(raw)
    return np.array([name.decode("utf-8", "replace") for name in uniques], dtype=object)[codes]


def decode(raw: bytes | np.ndarray, monotonic_to_epoch_ns: int, hz: int | None = None) -> pd.DataFrame:
    """Decode struct tcpclose_event records: concatenated bytes, or an array of EVENT_DTYPE.

    monotonic_to_epoch_ns: epoch ns minus CLOCK_MONOTONIC ns (what bpf_ktime_get_ns reads).
    hz: the kernel's jiffies per second, for the timewait timeout (None: unknown).
    """
    if isinstance(raw, np.ndarray):
        rec = raw
    else:
        size = layout.EVENT_DTYPE.itemsize
        if len(raw) % size:
            raise ValueError(f"{len(raw)} bytes is not a whole number of {size}-byte records")
        rec = np.frombuffer(raw, dtype=layout.EVENT_DTYPE)
    if len(rec) == 0:
        return empty_events()
    out = {
        "kind": pd.Series(rec["kind"]).map(layout.KIND_NAMES).to_numpy(object),
        "skaddr": rec["skaddr"].astype(np.uint64),
        "pid": rec["pid"].astype(np.int64),
        "tid": rec["tid"].astype(np.int64),
        "comm": _comms(rec["comm"]),
        "cgroup_id": rec["cgroup_id"].astype(np.uint64),
        "owner_src": pd.Series(rec["owner_src"]).map(layout.OWNER_SRC_NAMES).to_numpy(object),
        "family": pd.Series(rec["family"]).map(FAMILY_NAMES).to_numpy(object),
        "laddr": addresses(rec["saddr"], rec["family"]),
        "lport": rec["sport"].astype(np.int64),
        "raddr": addresses(rec["daddr"], rec["family"]),
        "rport": rec["dport"].astype(np.int64),
        "states_raw": rec["states"].astype(np.int64),
        "last_state": pd.Series(rec["last_state"]).map(layout.TCP_STATE_NAMES).to_numpy(object),
        "flags_raw": rec["flags"].astype(np.int64),
        "tw_timer": rec["tw_timer"].astype(np.uint64),
        "tw_timeout_s": np.where(rec["tw_timer"] > 0, rec["tw_timeout"] / hz, np.nan) if hz else np.nan,
        "tw_end": pd.Series(rec["tw_end"]).map(layout.TW_END_NAMES).to_numpy(object),
        "netns": None,
        "fd": np.nan,
        "inode": np.nan,
    }
    for field, column in _TIMES.items():
        ns = rec[field].astype(np.int64)
        out[column] = np.where(ns > 0, (ns + monotonic_to_epoch_ns) / 1e9, np.nan)
    frame = pd.DataFrame(out, columns=EVENT_COLUMNS)
    # a reset record carries only its socket and time, a timewait record only its tw_* fields
    bare = frame["kind"].isin(("reset_sent", *_TIMEWAIT_KINDS)).to_numpy()
    frame.loc[bare, ["family", "laddr", "raddr", "last_state", "owner_src"]] = None
    return frame


def from_snapshot(snap: pd.DataFrame, kind: str, at: float, netns: str | None) -> pd.DataFrame:
    """Event rows for the sockets of a snapshot taken at `at` (epoch seconds).

    A CLOSE_WAIT's age since the peer's FIN is not in sock_diag; the last ACK
    received is: the FIN came at or before it, so close_wait_at is a bound the
    real start is earlier than or equal to (flagged partial, like any life
    begun before tracing)."""
    if not len(snap):
        return empty_events()
    owned = snap["pid"].notna().to_numpy()
    state = snap["state"].to_numpy(object)
    codes = np.array([layout.DEFINES["TCP_" + s] for s in state], dtype=np.int64)
    frame = pd.DataFrame({
        "kind": kind, "skaddr": np.uint64(0),
        "pid": snap["pid"].fillna(0).astype(np.int64), "tid": snap["pid"].fillna(0).astype(np.int64),
        "comm": snap["comm"], "cgroup_id": snap["cgroup_id"].astype(np.uint64),
        "owner_src": np.where(owned, "snapshot", "none"),
        "family": snap["family"], "laddr": snap["laddr"], "lport": snap["lport"].astype(np.int64),
        "raddr": snap["raddr"], "rport": snap["rport"].astype(np.int64),
        "states_raw": np.left_shift(1, codes), "last_state": state,
        "flags_raw": layout.DEFINES["FLAG_PARTIAL"],
        "opened_at": np.nan, "estab_at": np.nan,
        "close_wait_at": np.where(state == "CLOSE_WAIT", at - snap["since_ack_s"].astype(float), np.nan),
        "fin_at": np.nan, "event_at": at,
        "tw_timer": np.uint64(0), "tw_start_at": np.nan, "tw_rearm_at": np.nan, "tw_timeout_s": np.nan,
        "tw_end": None, "netns": netns, "fd": snap["fd"].astype(float), "inode": snap["inode"].astype(float),
    }, columns=EVENT_COLUMNS)
    return frame


def from_timewait_watch(rows: list[dict], kind: str, at: float) -> pd.DataFrame:
    """tw_end rows (kind "tw_end": end, how) or tw_open rows from sock_diag sightings
    (agent/sockets.TimewaitWatch): named by their 4-tuple, with no timer address."""
    if not rows:
        return empty_events()
    snap = pd.DataFrame(rows)
    n = len(snap)
    frame = pd.DataFrame({column: [None] * n for column in EVENT_COLUMNS})
    for column in ("family", "laddr", "lport", "raddr", "rport"):
        frame[column] = snap[column].to_numpy()
    frame["kind"] = kind
    frame["tw_timer"] = np.uint64(0)
    frame["tw_start_at"] = snap["first_seen"].astype(float).to_numpy()
    frame["event_at"] = snap["end"].astype(float).to_numpy() if kind == "tw_end" else at
    frame["tw_end"] = snap["how"].to_numpy() if kind == "tw_end" else None
    return frame


class Recorder:
    """Writes the decoded event stream as JSONL, one event a line, then one `run` line."""

    def __init__(self, path: Path):
        self._file: TextIO = open_for_writing(path, "recording")

    def write(self, events: pd.DataFrame) -> None:
        if len(events):
            self._file.write(events.to_json(orient="records", lines=True, double_precision=15))
            self._file.flush()

    def finish(self, run: dict) -> None:
        self._file.write(json.dumps({"kind": "run", **run}) + "\n")
        self._file.close()


def read_recording(path: Path) -> tuple[pd.DataFrame, dict]:
    """Events and the run line of a recording; BadRecording names the first bad line.
    A recording cut short (no run line) is bounded by the times of its events."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise BadRecording(f"cannot read recording {path}: {exc}") from None
    rows, run = [], None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise BadRecording(f"{path}:{number}: not JSON ({exc.msg}); is this a tcpclose --record file?") from None
        if not isinstance(row, dict) or "kind" not in row:
            raise BadRecording(f"{path}:{number}: not a tcpclose event (no 'kind'); is this a tcpclose --record file?")
        if row["kind"] == "run":
            run = row
            continue
        missing = [c for c in REQUIRED_COLUMNS if c not in row]
        if missing or row["kind"] not in (*layout.KIND_NAMES.values(), *SNAPSHOT_KINDS):
            raise BadRecording(f"{path}:{number}: not a tcpclose event (missing {', '.join(missing) or 'a known kind'})")
        rows.append(row)
    events = pd.DataFrame(rows, columns=EVENT_COLUMNS) if rows else empty_events()
    if run is None:  # the tracer was killed before it could finish the file: bound the run by its events
        if not rows:
            raise BadRecording(f"{path} holds no events and no run: record again with 'tcpclose trace --record'")
        times = events[["opened_at", "event_at"]].astype(float)
        run = {"kind": "run", "cut_short": True, "started_at": times.min().min(), "ended_at": times.max().max()}
    return events, run


def concat(frames: Iterable[pd.DataFrame]) -> pd.DataFrame:
    frames = [f for f in frames if len(f)]
    return pd.concat(frames, ignore_index=True) if frames else empty_events()
