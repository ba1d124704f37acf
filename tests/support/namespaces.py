"""Network namespaces a test makes for itself (agent.demo.namespace): sysctls set inside them never touch the host's."""
from __future__ import annotations

import subprocess
import sys
from contextlib import contextmanager

from agent.demo.namespace import Namespace


@contextmanager
def netns(**sysctls):
    """A network namespace of the test's own, loopback up, with these net.ipv4 sysctls set inside it."""
    with Namespace("tcpclose-test", **sysctls) as ns:
        yield ns.name


def in_ns(ns: str, *args: str, **popen) -> subprocess.Popen:
    """`python -m args...` started inside the namespace ns, its output as text."""
    return subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-m", *args], text=True, **popen)


@contextmanager
def two_hosts(prefix: str = "10.231.0"):
    """Two test hosts of the test's own: namespaces joined by a veth pair, PREFIX.1 and
    PREFIX.2 (/24), so that packets cross a real device and are received in softirq, not
    in the sender's syscall as on loopback.  Yields (server namespace, client namespace)."""
    with netns() as server, netns() as client:
        left, right = f"tcv{server[-6:]}a"[-15:], f"tcv{server[-6:]}b"[-15:]
        subprocess.run(["ip", "link", "add", left, "netns", server, "type", "veth", "peer", "name", right,
                        "netns", client], check=True)
        for ns, dev, addr in ((server, left, f"{prefix}.1/24"), (client, right, f"{prefix}.2/24")):
            subprocess.run(["ip", "-n", ns, "addr", "add", addr, "dev", dev], check=True)
            subprocess.run(["ip", "-n", ns, "link", "set", dev, "up"], check=True)
        yield server, client
