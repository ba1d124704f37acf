"""Network namespaces a test makes for itself (bench.netns): sysctls set inside them never touch the host's."""
from __future__ import annotations

import subprocess
import sys
from contextlib import contextmanager

from bench.netns import Namespace


@contextmanager
def netns(**sysctls):
    """A network namespace of the test's own, loopback up, with these net.ipv4 sysctls set inside it."""
    with Namespace("tcpclose-test", **sysctls) as ns:
        yield ns.name


def in_ns(ns: str, *args: str, **popen) -> subprocess.Popen:
    """`python -m args...` started inside the namespace ns, its output as text."""
    return subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-m", *args], text=True, **popen)
