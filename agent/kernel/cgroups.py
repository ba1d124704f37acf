"""Which container or service a process belongs to, from its cgroup (v2).

A process's cgroup v2 path is the `0::` line of /proc/PID/cgroup.  The BPF side records
bpf_get_current_cgroup_id() of each owner: the inode number of that cgroup's directory
in the cgroup2 file system, so a process gone before its /proc entry was read is still
placed by walking the hierarchy once.  Container runtimes name the cgroups they make
after the container's id, which is how tcpclose tells containers apart without asking
any runtime's API:

  docker          /docker/ID, or docker-ID.scope under systemd
  containerd      cri-containerd-ID.scope (Kubernetes), or /kubepods/.../ID
  CRI-O           crio-ID.scope
  podman          libpod-ID.scope
A Kubernetes pod's cgroup holds its uid (kubepods-...-podUID.slice, or /kubepods/.../podUID).
Outside containers, systemd names the cgroup after the unit (nginx.service).
"""
from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from . import pods

_RUNTIMES = [  # (runtime, pattern of a path component holding the container id)
    ("docker", re.compile(r"^docker-([0-9a-f]{64})\.scope$")),
    ("containerd", re.compile(r"^cri-containerd-([0-9a-f]{64})\.scope$")),
    ("cri-o", re.compile(r"^crio-([0-9a-f]{64})\.scope$")),
    ("podman", re.compile(r"^libpod-([0-9a-f]{64})\.scope$")),
]
_BARE_ID = re.compile(r"^([0-9a-f]{64})$")  # cgroupfs driver: /docker/ID, /kubepods/besteffort/podUID/ID
_POD = re.compile(r"pod([0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12})")
_UNIT = re.compile(r"^[^/]+\.service$")
ID_SHOWN = 12  # a container id as docker ps shows it
MAX_PODS_KNOWN = 10_000


@dataclass(frozen=True)
class Workload:
    """Where a cgroup path puts a process: its container (runtime:id, the id cut to 12) and
    pod uid where a runtime made the cgroup, else the systemd unit, else neither."""
    cgroup: str
    container: str | None = None
    pod: str | None = None
    unit: str | None = None
    container_id: str | None = None  # the container's full id, as its runtime keeps it

    @property
    def name(self) -> str | None:
        """The workload label: the container, else the unit (None: neither)."""
        return self.container or self.unit


def workload(path: str | None) -> Workload | None:
    """The container, pod and unit a cgroup v2 path names (None for no path)."""
    if path is None:
        return None
    parts = [part for part in path.split("/") if part]
    container = pod = unit = full_id = None
    for index, part in enumerate(parts):
        for runtime, pattern in _RUNTIMES:
            if (match := pattern.match(part)):
                full_id = match.group(1)
                container = f"{runtime}:{full_id[:ID_SHOWN]}"
        if container is None and (match := _BARE_ID.match(part)) and index > 0:
            runtime = "docker" if parts[index - 1] == "docker" else "containerd"
            full_id = match.group(1)
            container = f"{runtime}:{full_id[:ID_SHOWN]}"
        if (match := _POD.search(part)):
            pod = match.group(1).replace("_", "-")
        if _UNIT.match(part):
            unit = part
    return Workload(path, container, pod, unit if container is None else None, full_id)


def cgroup_of(pid: int, proc: Path = Path("/proc")) -> str | None:
    """The cgroup v2 path of a live process; None where it is gone or has none."""
    try:
        text = (proc / str(pid) / "cgroup").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("0::"):
            return line[3:] or "/"
    return None


def mount_point(mountinfo: Path = Path("/proc/self/mountinfo")) -> Path | None:
    """Where the cgroup2 file system is mounted (/sys/fs/cgroup, or /sys/fs/cgroup/unified
    beside the v1 controllers); None without one."""
    try:
        lines = mountinfo.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split(" - ")
        if len(fields) == 2 and fields[1].split()[0] == "cgroup2":
            return Path(fields[0].split()[4])
    return None


def paths_by_id(root: Path | None = None) -> dict[int, str]:
    """cgroup id -> cgroup v2 path, for every cgroup now (the id is the directory's inode)."""
    root = root or mount_point()
    if root is None:
        return {}
    found = {}
    for directory, _, _ in os.walk(root, followlinks=False):
        relative = os.path.relpath(directory, root)
        try:
            found[os.stat(directory, follow_symlinks=False).st_ino] = "/" if relative == "." else "/" + relative
        except OSError:  # removed meanwhile
            continue
    return found


class Placer:
    """The cgroup path of each owner a run meets: read from /proc while the process lives
    (learn), else found by the cgroup id the BPF side recorded, from a walk of the hierarchy
    made when an id is not yet known, at most every REWALK_S."""
    REWALK_S = 10.0

    def __init__(self):
        self._of_pid: dict[int, str | None] = {}
        self._of_id: dict[int, str] = {}
        self._walked_at = -self.REWALK_S
        # container (runtime:id) -> its Kubernetes pod, "namespace/name" (kernel.pods), read
        # while the container runs: its runtime removes what it kept once it stops
        self.pods: dict[str, str] = {}

    def known(self) -> dict:
        """What was learnt, for frozen()."""
        return {"cgroup_of_pid": self._of_pid, "cgroup_of_id": self._of_id}

    @classmethod
    def frozen(cls, known: dict) -> "Placer":
        """A Placer that knows what known() said, and walks no hierarchy (it may not be the one the ids were of)."""
        placer = cls()
        placer._of_pid = {int(pid): path for pid, path in known.get("cgroup_of_pid", {}).items()}
        placer._of_id = {int(cid): path for cid, path in known.get("cgroup_of_id", {}).items()}
        placer._walked_at = float("inf")  # (paths() walks REWALK_S after the last walk: never)
        return placer

    def _note_pod(self, path: str | None) -> None:
        placed = workload(path)
        if placed is None or placed.container is None or placed.container in self.pods:
            return
        found = pods.pod_of(placed.container.split(":", 1)[0], placed.container_id)
        if found is not None:
            if len(self.pods) >= MAX_PODS_KNOWN:  # an agent's weeks of container churn: the oldest go
                for container in list(self.pods)[:MAX_PODS_KNOWN // 2]:
                    del self.pods[container]
            self.pods[placed.container] = found

    def forget(self, count: int) -> None:
        """Forget the `count` processes learnt first."""
        for pid in list(self._of_pid)[:count]:
            del self._of_pid[pid]

    def path_of(self, pid: int) -> str | None:
        return self._of_pid.get(pid)

    def learn(self, pid: int) -> None:
        if pid and pid not in self._of_pid:
            self._of_pid[pid] = cgroup_of(pid)
            self._note_pod(self._of_pid[pid])

    def paths(self, pids: pd.Series, cgroup_ids: pd.Series) -> np.ndarray:
        """The cgroup path of each row: its pid's, else its cgroup id's (None: neither known)."""
        found = pids.map(self._of_pid).astype(object)
        missing = found.isna().to_numpy() & (cgroup_ids.to_numpy(np.uint64) != 0)
        if missing.any():
            ids = cgroup_ids[missing].astype(np.uint64)
            if (set(ids.unique().tolist()) - self._of_id.keys()
                    and time.monotonic() - self._walked_at >= self.REWALK_S):
                self._walked_at = time.monotonic()
                walked = paths_by_id()
                for path in set(walked.values()) - set(self._of_id.values()):
                    self._note_pod(path)
                self._of_id.update(walked)
            found[missing] = ids.map(self._of_id).to_numpy(object)
        return found.where(found.notna(), None).to_numpy(object)
