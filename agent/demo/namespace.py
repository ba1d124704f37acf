"""A network namespace of tcpclose's own (the demo's, the bench's or a test's), with loopback
up: sysctls set inside it (a short tcp_fin_timeout, a small port range) never touch the
host's, and a churn's TIME_WAITs stay out of the host's table."""
from __future__ import annotations

import itertools
import os
import subprocess
import sys

from ..kernel.procfs import netstat

_names = itertools.count()


class Namespace:
    def __init__(self, prefix: str, **sysctls):
        """A new namespace named PREFIX-PID-N, with these net.ipv4 sysctls set inside it."""
        self.name = f"{prefix}-{os.getpid()}-{next(_names)}"
        subprocess.run(["ip", "netns", "add", self.name], check=True)
        try:
            self.run("ip", "link", "set", "lo", "up")
            for key, value in sysctls.items():
                self.run("sysctl", "-qw", f"net.ipv4.{key}={value}")
        except BaseException:
            self.delete()
            raise

    def run(self, *args: str) -> str:
        """A command inside the namespace; its output."""
        return subprocess.run(["ip", "netns", "exec", self.name, *args], capture_output=True, text=True,
                              check=True).stdout

    def popen(self, *args, **kwargs) -> subprocess.Popen:
        """`python ARGS...` started inside the namespace (exec: the pid is the program's own)."""
        return subprocess.Popen(["ip", "netns", "exec", self.name, sys.executable, *args], **kwargs)

    def tcp_ext(self) -> dict[str, int]:
        """The namespace's TcpExt counters (/proc/net/netstat is per network namespace)."""
        return netstat(self.run("cat", "/proc/net/netstat")).get("TcpExt", {})

    def delete(self):
        subprocess.run(["ip", "netns", "del", self.name], check=False)

    def __enter__(self) -> "Namespace":
        return self

    def __exit__(self, *exc) -> None:
        self.delete()
