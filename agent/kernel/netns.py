"""Network namespaces: the id of a process's, every one on the host, and running a reader
inside one without moving the rest of tcpclose."""
from __future__ import annotations

import ctypes
import os
import threading
from pathlib import Path

PROC = Path("/proc")
RUN_NETNS = Path("/run/netns")  # where `ip netns add` names namespaces
CLONE_NEWNET = 0x40000000


def netns_id(pid: int | str = "self") -> str | None:
    """The network namespace of a process, as the kernel names it (net:[4026531840])."""
    try:
        return os.readlink(PROC / str(pid) / "ns" / "net")
    except OSError:
        return None


def namespaces() -> dict[str, tuple[Path, str]]:
    """Every network namespace on the host: id -> (a path that opens it, a name for people).

    Found through the processes in them and the names `ip netns add` gives.
    """
    found: dict[str, tuple[Path, str]] = {}
    if RUN_NETNS.is_dir():
        for path in sorted(RUN_NETNS.iterdir()):
            try:
                found[f"net:[{path.stat().st_ino}]"] = (path, path.name)
            except OSError:
                continue
    for entry in PROC.iterdir():
        if entry.name.isdigit():
            ns = netns_id(entry.name)
            if ns and ns not in found:
                found[ns] = (entry / "ns" / "net", "")
    return found


def in_netns(ns_path: Path | None, fn):
    """fn() run inside another network namespace: in a thread of its own that setns()
    into it and then ends, so that the rest of tcpclose never moves.  None: right here.

    Sockets fn() opens stay in that namespace (a netlink socket belongs to the
    namespace it was made in), whichever thread uses them later."""
    if ns_path is None:
        return fn()
    result: list = []
    errors: list[BaseException] = []

    def inside():
        try:
            fd = os.open(ns_path, os.O_RDONLY)
            try:
                if ctypes.CDLL(None, use_errno=True).setns(fd, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), f"setns({ns_path}) failed")
                result.append(fn())
            finally:
                os.close(fd)
        except BaseException as exc:  # handed to the caller's thread
            errors.append(exc)

    thread = threading.Thread(target=inside)
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
    return result[0]


def named_netns(name: str) -> Path | None:
    """The path of a namespace made by `ip netns add NAME`, if there is one."""
    path = RUN_NETNS / name
    return path if path.exists() else None


def netns_id_of(path: Path) -> str:
    return f"net:[{os.stat(path).st_ino}]"
