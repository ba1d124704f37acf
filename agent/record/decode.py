"""Decoding: raw ring-buffer records and sock_diag snapshots -> one frame of decoded events.

This is the one boundary between kernel encodings and the rest of tcpclose.
Records arrive in batches and are decoded vectorised (a numpy structured view
of the bytes straight into pandas): there is no Python object per record.
Column names follow bpf/tcpclose.h; monotonic `_ns` times become epoch
seconds in `_at` columns, raw bitmasks keep a `_raw` suffix.
"""
from __future__ import annotations

import ipaddress
import struct
from typing import Iterable

import numpy as np
import pandas as pd

from . import layout

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
    "thread_comm",  # the name of the owner's thread that made the transition, where it is not the process's
    "fd", "inode",  # sock_diag snapshots only: the owner's file descriptor and the socket's inode
    "cgroup",  # the owner's cgroup v2 path, filled in by the tracer (kernel.cgroups; None: not known)
]
# rows made from sock_diag snapshots (agent/kernel/diag.py), not from BPF records:
#   existing     a connection that was there when tracing started (a life begun before it)
#   seen_at_end  a socket still there when tracing ended (any namespace), with the process holding it and its fd
SNAPSHOT_KINDS = ("existing", "seen_at_end")
_TIMES = {"opened_ns": "opened_at", "estab_ns": "estab_at", "close_wait_ns": "close_wait_at",
          "fin_ns": "fin_at", "ts_ns": "event_at", "tw_start_ns": "tw_start_at", "tw_rearm_ns": "tw_rearm_at"}
# records that describe a timewait socket, not a socket life: only their tw_* fields and time mean anything
_TIMEWAIT_KINDS = ("tw_end", "tw_open")
FAMILY_NAMES = {2: "ipv4", 10: "ipv6"}


def empty_events() -> pd.DataFrame:
    """No events, with every column (a copy: the caller may change it).  A step with nothing
    new asks for several: made once, since building one takes a hundred times its copy."""
    return _NO_EVENTS.copy()


_NO_EVENTS = pd.DataFrame({name: pd.Series(dtype=object) for name in EVENT_COLUMNS})


def addresses(raw: np.ndarray, family: np.ndarray) -> np.ndarray:
    """16-byte address fields -> text, converting each distinct address once."""
    codes, names = _address_codes(raw, family)
    return np.array(names, dtype=object)[codes]


def _address_codes(raw: np.ndarray, family: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """16-byte address fields -> a number each, and each number's address as text.

    The bytes are viewed as two u64, mixed with the family into one u64 and factorized by
    hashing that: a batch holds thousands of records but only a handful of distinct
    addresses.  Each row is then checked to be its group's first, field by field; two
    addresses that mixed alike (never seen) are told apart by all three fields instead.
    """
    halves = np.ascontiguousarray(raw).view("<u8")
    family = np.asarray(family).astype(np.uint64)
    mixed = family
    for part in (halves[:, 0], halves[:, 1]):
        mixed = (mixed ^ part) * np.uint64(0x100000001B3)  # FNV-style: wraps modulo 2^64
    codes, uniques = pd.factorize(mixed)
    first = _first_of_each(codes)
    if not ((halves[first[codes]] == halves).all(axis=1) & (family[first[codes]] == family)).all():
        codes, uniques = pd.MultiIndex.from_arrays([family, halves[:, 0], halves[:, 1]]).factorize()
        first = _first_of_each(codes)
    return codes, [address_text(int(family[i]), int(halves[i, 0]), int(halves[i, 1])) for i in first.tolist()]


def _first_of_each(codes: np.ndarray) -> np.ndarray:
    """The first row of each group, in the order of their numbers: factorize numbers the
    groups 0, 1, ... as it first meets them, so a group's first row is where the running
    highest number grows."""
    highest = np.maximum.accumulate(codes)
    return np.flatnonzero(np.r_[len(codes) > 0, highest[1:] > highest[:-1]][:len(codes)])


def address_text(family: int, first: int, second: int) -> str:
    """A 16-byte address field, given as two little-endian u64, as text (family: AF_INET6 10, else IPv4)."""
    packed = struct.pack("<QQ", first, second)
    return str(ipaddress.IPv6Address(packed)) if family == 10 else str(ipaddress.IPv4Address(packed[:4]))


# what pandas makes of a column of text (str under pandas 3, object before): decode builds
# each text column in it from a row's number into its few distinct values (TEXT.take), not
# from an array of Python strings, which costs 7 times as much to convert
TEXT = pd.DataFrame({"text": np.array(["x"], dtype=object)})["text"].dtype


def text_column(codes: np.ndarray, names: list, bare: np.ndarray | None = None):
    """The column whose row i is names[codes[i]], None where `bare` (the record has no such
    field)."""
    values = pd.array(np.array([*names, None], dtype=object), dtype=TEXT)
    if bare is not None and bare.any():
        codes = np.where(bare, len(names), codes)
    return values.take(codes)


def _comm_codes(raw: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Task names -> a number each, and each number's name as text (each decoded once)."""
    codes, uniques = pd.factorize(raw)
    return codes, [name.decode("utf-8", "replace") for name in uniques]


def time_outside(raw: np.ndarray, monotonic_to_epoch_ns: int, low: float, high: float) -> tuple[int, str] | None:
    """Of records read back from a file (not from the BPF side: anyone's bytes), the first
    whose time set lies outside low..high (epoch seconds), and that time's name; or None."""
    for field in _TIMES:
        at = (raw[field].astype(np.float64) + monotonic_to_epoch_ns) / 1e9
        outside = (raw[field] != 0) & ~((at >= low) & (at <= high))
        if outside.any():
            return int(np.flatnonzero(outside)[0]), field
    return None


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
    kinds, kind_names = _codes(rec["kind"], layout.KIND_NAMES)
    # a reset record carries only its socket and time, a timewait record only its tw_* fields
    bare = np.isin(kinds, [i for i, name in enumerate(kind_names) if name in ("reset_sent", *_TIMEWAIT_KINDS)])
    out = {
        "kind": text_column(kinds, kind_names),
        "skaddr": rec["skaddr"].astype(np.uint64),
        "pid": rec["pid"].astype(np.int64),
        "tid": rec["tid"].astype(np.int64),
        "comm": text_column(*_comm_codes(rec["comm"])),
        "cgroup_id": rec["cgroup_id"].astype(np.uint64),
        "owner_src": text_column(*_codes(rec["owner_src"], layout.OWNER_SRC_NAMES), bare),
        "family": text_column(*_codes(rec["family"], FAMILY_NAMES), bare),
        "laddr": text_column(*_address_codes(rec["saddr"], rec["family"]), bare),
        "lport": rec["sport"].astype(np.int64),
        "raddr": text_column(*_address_codes(rec["daddr"], rec["family"]), bare),
        "rport": rec["dport"].astype(np.int64),
        "states_raw": rec["states"].astype(np.int64),
        "last_state": text_column(*_codes(rec["last_state"], layout.TCP_STATE_NAMES), bare),
        "flags_raw": rec["flags"].astype(np.int64),
        "tw_timer": rec["tw_timer"].astype(np.uint64),
        "tw_timeout_s": np.where(rec["tw_timer"] > 0, rec["tw_timeout"] / hz, np.nan) if hz else np.nan,
        "tw_end": text_column(*_codes(rec["tw_end"], layout.TW_END_NAMES)),
        "netns": None,
        "thread_comm": None,
        "fd": np.nan,
        "inode": np.nan,
    }
    for field, column in _TIMES.items():
        ns = rec[field].astype(np.int64)
        out[column] = np.where(ns > 0, (ns + monotonic_to_epoch_ns) / 1e9, np.nan)
    return pd.DataFrame(out, columns=EVENT_COLUMNS)


def _codes(codes: np.ndarray, names: dict) -> tuple[np.ndarray, list]:
    """Small codes (a record's u8 or u16 field) -> a number each into the list of their names
    (None for a code that has none, as Series.map gives NaN)."""
    top = int(codes.max()) + 1 if len(codes) else 1
    if top > 256:  # (a u16 field: its values found, not every value up to the highest)
        uniques, numbers = np.unique(codes, return_inverse=True)
        return numbers.ravel(), [names.get(int(code)) for code in uniques]
    return codes.astype(np.intp), [names.get(code) for code in range(top)]


def from_snapshot(snap: pd.DataFrame, kind: str, at: float, netns: str | None) -> pd.DataFrame:
    """Event rows for the sockets of a snapshot taken at `at` (epoch seconds), in network
    namespace `netns` unless the snapshot has a netns column (kernel.diag.snapshot_everywhere).

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
        "tw_end": None, "netns": snap["netns"] if "netns" in snap else netns, "thread_comm": None,
        "fd": snap["fd"].astype(float),
        "inode": snap["inode"].astype(float),
    }, columns=EVENT_COLUMNS)
    return frame


def _timewait_rows(n: int, kind, at, tw_end) -> pd.DataFrame:
    """Rows that describe timewait sockets, not lives: only kind, event_at and the tw_* and
    address columns are filled (the end joins read those, analysis.timewait)."""
    frame = pd.DataFrame({column: [None] * n for column in EVENT_COLUMNS})
    frame["kind"], frame["event_at"], frame["tw_end"] = kind, at, tw_end
    frame["tw_timer"] = np.uint64(0)
    return frame


def from_timewait_watch(rows: list[dict], kind: str, at: float) -> pd.DataFrame:
    """tw_end rows (kind "tw_end": end, how) or tw_open rows from sock_diag sightings
    (kernel.diag.TimewaitWatch): named by their 4-tuple, with no timer address."""
    if not rows:
        return empty_events()
    snap = pd.DataFrame(rows)
    ended = kind == "tw_end"
    frame = _timewait_rows(len(snap), kind, snap["end"].astype(float).to_numpy() if ended else at,
                           snap["how"].to_numpy() if ended else None)
    for column in ("family", "laddr", "lport", "raddr", "rport"):
        frame[column] = snap[column].to_numpy()
    frame["tw_start_at"] = snap["first_seen"].astype(float).to_numpy()
    return frame


FOLLOWED_COLUMNS = ("kind", "event_at", "tw_end", "tw_timer", "tw_start_at", "tw_rearm_at", "tw_timeout_s")


def from_followed_timewaits(states: np.ndarray, monotonic_to_epoch_ns: int, hz: int | None,
                            at: float) -> pd.DataFrame:
    """The timewait sockets the BPF side still followed when tracing ended (struct tw_state
    entries of tw_slots and tws): a tw_open row each, or a tw_end row for one whose cancel
    nothing explained before the end: reused (the BPF side saw a connect() take it), else
    cancelled.  Only the columns they fill, FOLLOWED_COLUMNS (widened() gives them the
    others): a busy host follows a few hundred thousand, and a row with every column costs
    some 330 bytes, more again once joined to the lives' records (Stream.finish_parts)."""
    if not len(states):
        return empty_events()
    epoch = lambda ns: np.where(ns > 0, (ns.astype(np.int64) + monotonic_to_epoch_ns) / 1e9, np.nan)  # noqa: E731
    cancelled = states["cancel_ns"] != 0
    how = np.where(states["reused"] != 0, "reused", "cancelled") if "reused" in states.dtype.names else "cancelled"
    return pd.DataFrame(dict(zip(FOLLOWED_COLUMNS, (
        np.where(cancelled, "tw_end", "tw_open").astype(object),  # kind
        np.where(cancelled, epoch(states["cancel_ns"]), at),  # event_at
        np.where(cancelled, how, None).astype(object),  # tw_end
        states["timer"].astype(np.uint64),
        epoch(states["start_ns"]),
        epoch(states["rearm_ns"]),
        states["timeout"] / hz if hz else np.full(len(states), np.nan)))))


def widened(frame: pd.DataFrame) -> pd.DataFrame:
    """Events with only some columns (from_followed_timewaits) with every column of a decoded
    event, in its order, None where they have none (and their own others after them)."""
    if all(column in frame.columns for column in EVENT_COLUMNS):
        return frame
    return pd.DataFrame({**{column: frame[column].to_numpy() if column in frame.columns
                            else np.full(len(frame), None, dtype=object) for column in EVENT_COLUMNS},
                         **{column: frame[column].to_numpy() for column in frame.columns
                            if column not in EVENT_COLUMNS}})


def concat(frames: Iterable[pd.DataFrame]) -> pd.DataFrame:
    """The frames one after the other, numbered from 0 (one alone: itself, renumbered; pandas
    copies it only where it is written to: copy on write)."""
    frames = [f for f in frames if len(f)]
    if len(frames) == 1:
        return frames[0].reset_index(drop=True)
    return pd.concat(frames, ignore_index=True) if frames else empty_events()
