"""Network namespaces a test makes for itself: sysctls set inside them never touch the host's."""
from __future__ import annotations

import itertools
import os
import subprocess
import sys
from contextlib import contextmanager

_names = itertools.count()


@contextmanager
def netns(**sysctls):
    """A network namespace of the test's own, loopback up, with these net.ipv4 sysctls set inside it."""
    name = f"tcpclose-test-{os.getpid()}-{next(_names)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"], check=True)
        for key, value in sysctls.items():
            subprocess.run(["ip", "netns", "exec", name, "sysctl", "-qw", f"net.ipv4.{key}={value}"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def in_ns(ns: str, *args: str, **popen) -> subprocess.Popen:
    """`python -m args...` started inside the namespace ns, its output as text."""
    return subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-m", *args], text=True, **popen)
