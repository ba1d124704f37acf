"""cgroup v2 directories a test makes for its own processes, named as container runtimes and
systemd name theirs, under a slice of the test's own; removed afterwards (the processes
moved there must have exited, or been released, by then)."""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

from agent.kernel import cgroups

CGROUP_V2 = Path("/sys/fs/cgroup/unified")  # this machine's v2 hierarchy, beside the v1 controllers


@contextmanager
def runtime_cgroups(*names: str):
    """Yields {name: the directory} for each name (docker-ID.scope, x.service, ...), made under
    /tcpclose-test-PID.slice; move a process with move(directory, pid)."""
    root = cgroups.mount_point() or CGROUP_V2
    slice_ = root / f"tcpclose-test-{os.getpid()}.slice"
    made = {name: slice_ / name for name in names}
    slice_.mkdir()
    try:
        for directory in made.values():
            directory.mkdir()
        yield made
    finally:
        for directory in [*made.values(), slice_]:
            if directory.exists():
                directory.rmdir()


def move(directory: Path, pid: int) -> None:
    (directory / "cgroup.procs").write_text(str(pid))


def path_of(directory: Path) -> str:
    """A test cgroup's path as /proc/PID/cgroup writes it."""
    return "/" + str(directory.relative_to(cgroups.mount_point() or CGROUP_V2))
