"""What the tracer learns of each owner (a tgid) from /proc while it is alive: its network
namespace, its process name and its cgroup v2 path (its container or service).

The BPF side has the name of the thread that acted: a threaded server's worker threads are one
process, whatever they call themselves, so a record's comm is the process's where it is known."""
from __future__ import annotations

import numpy as np
import pandas as pd

from ..analysis import rules
from ..kernel import cgroups, procfs
from ..kernel import netns as namespaces
from ..record import decode

MAX_PIDS_KNOWN = 65536  # owners whose /proc entries are remembered; the oldest half go past it


class Owners:
    def __init__(self):
        self.netns_of: dict[int, str | None] = {}
        self.process_comm: dict[int, str | None] = {}
        self.cgroups = cgroups.Placer()

    def learn(self, raw: np.ndarray) -> None:
        """The owners of these records (raw) not met before: one readlink each, while they are
        alive (a process gone before this drain stays unknown)."""
        self.learn_pids(raw["pid"][np.isin(raw["owner_src"], rules.OWNER_CODES_KNOWN)])

    def learn_pids(self, owned: np.ndarray) -> None:
        """These owners (pids), those not met before: as learn()."""
        if len(self.netns_of) > MAX_PIDS_KNOWN:  # a long run meets millions of short-lived processes
            for known in (self.netns_of, self.process_comm):
                for pid in list(known)[:MAX_PIDS_KNOWN // 2]:  # the oldest half (dicts keep their order)
                    del known[pid]
            self.cgroups.forget(MAX_PIDS_KNOWN // 2)
        for pid in set(np.unique(owned).tolist()) - self.netns_of.keys():
            self.netns_of[pid] = namespaces.netns_id(pid)
            self.process_comm[pid] = procfs.process_comm(pid)
            self.cgroups.learn(pid)

    def workloads_of(self, pids: np.ndarray, cgroup_ids: np.ndarray) -> list[str | None]:
        """Owners' workloads: each one's container, else its systemd unit, else its process
        name, as read from /proc when it was first met (learnt now if it was not), or placed
        by its cgroup id (recorded by the BPF side) where its process was gone by then; None:
        neither is known."""
        self.learn_pids(pids[pids != 0])
        paths = self.cgroups.paths(pd.Series(pids, dtype=np.int64), pd.Series(cgroup_ids, dtype=np.uint64))
        placed = [cgroups.workload(path) for path in paths]
        return [(w.name if w else None) or self.process_comm.get(pid) for w, pid in zip(placed, pids.tolist())]

    def named(self, frame: pd.DataFrame) -> pd.DataFrame:
        """Decoded records with each owner's network namespace, cgroup path and process name
        (the thread's name kept in thread_comm where it differs).  Each distinct owner, and
        each distinct pair of an owner and a thread name, is looked at once (a batch of 50,000
        records has a few), and the columns made from those by their numbers."""
        codes, pids = pd.factorize(frame["pid"].to_numpy())
        pids = pids.tolist()
        frame["netns"] = decode.text_column(codes, [self.netns_of.get(pid) for pid in pids])
        frame["cgroup"] = self.cgroups.paths(frame["pid"], frame["cgroup_id"])
        threads, names = pd.factorize(frame["comm"])  # (decoded: never missing)
        width = max(len(names), 1)
        pairs, pair_of = np.unique(codes.astype(np.int64) * width + threads, return_inverse=True)
        process = [self.process_comm.get(pids[i]) for i in (pairs // width).tolist()]
        thread = [names[i] for i in (pairs % width).tolist()]
        other = [p is not None and p != t for p, t in zip(process, thread)]
        if any(other):
            frame["comm"] = decode.text_column(pair_of, [p if o else t for p, t, o in zip(process, thread, other)])
            thread_comm = np.array([t if o else None for t, o in zip(thread, other)], dtype=object)
            frame["thread_comm"] = pd.Series(thread_comm[pair_of], index=frame.index, dtype=object)  # (as decoded)
        return frame

    def known(self) -> dict:
        """What was learnt, for frozen() (JSON: keys as text)."""
        return {"netns": self.netns_of, "comm": self.process_comm, **self.cgroups.known()}

    @classmethod
    def frozen(cls, known: dict) -> "Owners":
        """Owners that name records as they were named when `known` was taken (`report DIR`, of
        records a killed run left): /proc and the cgroups of this host are not read, since
        their pids and cgroup ids may be others' by now.  An owner not known keeps the name
        the BPF side recorded."""
        owners = cls()
        owners.netns_of = {int(pid): ns for pid, ns in known.get("netns", {}).items()}
        owners.process_comm = {int(pid): comm for pid, comm in known.get("comm", {}).items()}
        owners.cgroups = cgroups.Placer.frozen(known)
        return owners

    def placed(self, snap: pd.DataFrame) -> pd.DataFrame:
        """Snapshot rows (decode.from_snapshot) with the cgroup of each socket's holder."""
        for pid in set(snap["pid"][snap["pid"] > 0].tolist()):
            self.cgroups.learn(int(pid))
        return snap.assign(cgroup=self.cgroups.paths(snap["pid"], snap["cgroup_id"]))

    def comm_of(self, pid: int) -> str | None:
        """The process name of `pid`: as learnt, else read now."""
        return self.process_comm.get(pid) or procfs.process_comm(pid)
