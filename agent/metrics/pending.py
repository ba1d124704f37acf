"""The TIME_WAITs alive that the agent follows: whose workload each is, and which ports they hold.

A TIME_WAIT's end comes in a later record than the life that made it, named by the same
timewait socket (its timer's address and when it was armed): the life's workload waits here
until then, so that what the agent holds is bounded by the timewait sockets alive in the
kernel, never by how long it runs.

A TIME_WAIT lives 60 s after at most 60 s in the FIN_WAIT2 substate (a longer
tcp_fin_timeout keeps the full socket instead), and its timer fires up to 2 s late: one not
ended 130 s after it was made lost its end record.  They are kept in two generations, a new
one begun every PENDING_FOR_S / 2, the older one's left given up as ended for an unknown
reason: each goes between 130 and 260 s after it was made, at a cost that does not grow with
how many are pending (a scan of them all per batch did, and made the agent fall behind).

A client's TIME_WAIT keeps its local port from connect()s to the same destination for as
long as it lives (analysis/ports.py): `held` counts them per destination.
"""
from __future__ import annotations

from collections import Counter
from operator import itemgetter
from typing import Iterable

import numpy as np
import pandas as pd

from ..analysis import rules
from ..record.decode import address_text

PENDING_FOR_S = 260.0
MAX_DESTINATION_NAMES = 100_000  # destinations named once and kept: the names are forgotten past this
OTHER = "other"
Destination = tuple[str, str]  # (local address, "remote address:port")
Key = tuple[int, int]  # (timer address, start in ns)
Entry = tuple[str, "Destination | None"]  # (workload, destination of a client's TIME_WAIT)


class Pending:
    def __init__(self):
        self._new: dict[Key, Entry] = {}  # made since the last generation began
        self._old: dict[Key, Entry] = {}  # made in the one before
        self._generation_at: float | None = None
        self.held: Counter = Counter()  # Destination -> client TIME_WAITs alive
        self._destination_names: dict[tuple, Destination] = {}  # raw (family, addresses, port) -> named

    def __len__(self) -> int:
        return len(self._old) + len(self._new)

    def entries(self) -> dict[Key, Entry]:
        return {**self._old, **self._new}

    def expire(self, now: float) -> list[Entry]:
        """Every PENDING_FOR_S / 2: the older generation's TIME_WAITs, whose end never came,
        are given up (returned); the newer becomes the older.  After PENDING_FOR_S with no
        call, both are."""
        if self._generation_at is None:
            self._generation_at = now
        half = PENDING_FOR_S / 2
        if now - self._generation_at < half:
            return []
        lost = list(self._old.values())
        if now - self._generation_at >= 2 * half:
            lost += self._new.values()
            self._new = {}
        self._old, self._new = self._new, {}
        self._generation_at = now
        self._release(lost)
        return lost

    def add(self, lives: np.ndarray, names: list[str]) -> None:
        """Lives that made a timewait socket (tw_timer set), with their workloads."""
        destinations, counts = self._destinations(lives)
        keys = zip(lives["tw_timer"].tolist(), lives["tw_start_ns"].tolist())
        self._new.update(zip(keys, zip(names, destinations)))
        self.held.update(counts)

    def end(self, ends: np.ndarray) -> list[Entry | None]:
        """The entries of these timewait end records (None: not followed: made before the
        agent started, or its life's record was lost), no longer pending."""
        new, old = self._new, self._old
        keys = zip(ends["tw_timer"].tolist(), ends["tw_start_ns"].tolist())
        found = [new.pop(key, None) or old.pop(key, None) for key in keys]
        self._release(f for f in found if f is not None)
        return found

    def busiest(self, top: int) -> dict:
        """The client TIME_WAITs alive per destination: the `top` busiest, and the rest summed
        under (OTHER, OTHER)."""
        out = dict(self.held.most_common(top))
        rest = sum(self.held.values()) - sum(out.values())
        if rest:
            out[(OTHER, OTHER)] = rest
        return out

    def _release(self, ended: Iterable[Entry]) -> None:
        """The ports these TIME_WAITs held are free."""
        gone = Counter(map(itemgetter(1), ended))
        gone.pop(None, None)
        for destination, n in gone.items():
            left = self.held[destination] - n
            if left > 0:
                self.held[destination] = left
            else:
                del self.held[destination]

    def _destinations(self, lives: np.ndarray) -> tuple[list[Destination | None], dict[Destination, int]]:
        """Each life's destination if it was the client (it connect()ed: its TIME_WAIT holds a
        local port towards that destination), else None, and how many lives each has; each
        distinct one named once.  Told apart by a 64-bit hash of its raw fields (family, both
        addresses, remote port): a batch has thousands of lives and a handful of destinations."""
        client = rules.entered(lives["states"], "SYN_SENT")
        if not client.any():
            return [None] * len(lives), {}
        local = np.ascontiguousarray(lives["saddr"]).view("<u8")
        remote = np.ascontiguousarray(lives["daddr"]).view("<u8")
        mixed = np.where(client, lives["family"].astype(np.uint64), np.uint64(0))
        for part in (local[:, 0], local[:, 1], remote[:, 0], remote[:, 1], lives["dport"].astype(np.uint64)):
            mixed = (mixed ^ part) * np.uint64(0x100000001B3)  # FNV-style: wraps modulo 2^64
        mixed[~client] = 0  # (a server's: one group, whatever its peer's port, named None once)
        codes, uniques = pd.factorize(mixed)
        at = np.zeros(len(uniques), dtype=np.int64)
        at[codes[::-1]] = np.arange(len(codes))[::-1]  # a life of each: its first
        if len(self._destination_names) > MAX_DESTINATION_NAMES:
            self._destination_names.clear()
        made = []
        for i in at.tolist():
            key = (int(lives["family"][i]) if client[i] else 0, *local[i].tolist(), *remote[i].tolist(),
                   int(lives["dport"][i]))
            made.append(self._destination_names.get(key) or self._destination(key))
        counts = np.bincount(codes, minlength=len(uniques)).tolist()
        return [made[code] for code in codes.tolist()], {d: n for d, n in zip(made, counts) if d is not None}

    def _destination(self, key: tuple) -> Destination | None:
        family, local_first, local_second, remote_first, remote_second, rport = key
        if not family:  # (not a client)
            return None
        laddr = address_text(family, local_first, local_second)
        raddr = address_text(family, remote_first, remote_second)
        name = (laddr, f"[{raddr}]:{rport}" if ":" in raddr else f"{raddr}:{rport}")
        self._destination_names[key] = name
        return name
