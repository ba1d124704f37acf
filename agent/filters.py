"""What the user asked to see, turned into the BPF program's defines and map contents."""
from __future__ import annotations

from dataclasses import dataclass, field

AF_INET, AF_INET6 = 2, 10


@dataclass(frozen=True)
class Filters:
    pid: int | None = None
    comm: str | None = None
    local_ports: frozenset[int] = field(default_factory=frozenset)
    remote_ports: frozenset[int] = field(default_factory=frozenset)
    family: int | None = None  # AF_INET or AF_INET6

    def cflags(self) -> list[str]:
        """-D defines: integers for the single numbers; the port lists go into port_filter and the
        comm into comm_filter (Probe fills both), so no text the user gave is ever C source."""
        flags = []
        if self.family is not None:
            flags.append(f"-DFILTER_FAMILY={self.family}")
        if self.local_ports:
            flags.append("-DFILTER_LPORTS")
        if self.remote_ports:
            flags.append("-DFILTER_RPORTS")
        if self.pid is not None:
            flags.append(f"-DFILTER_TGID={self.pid}")
        if self.comm is not None:
            flags.append("-DFILTER_COMM")
        return flags

    def port_filter(self) -> dict[int, int]:
        """port -> bits for the port_filter map: 1 local port listed, 2 remote port listed."""
        bits: dict[int, int] = {}
        for port in self.local_ports:
            bits[port] = bits.get(port, 0) | 1
        for port in self.remote_ports:
            bits[port] = bits.get(port, 0) | 2
        return bits

    def keeps_socket(self, family: str, lport: int, rport: int) -> bool:
        """The address filters the BPF side applies, for sockets found by a snapshot."""
        if self.family is not None and family != {AF_INET: "ipv4", AF_INET6: "ipv6"}[self.family]:
            return False
        if self.local_ports and lport not in self.local_ports:
            return False
        return not self.remote_ports or rport in self.remote_ports

    def keeps_owner(self, pid: int | None, comm: str) -> bool:
        """The owner filter the BPF side applies at ->CLOSE, for lives read at the end."""
        if self.pid is not None and pid != self.pid:
            return False
        return self.comm is None or comm == self.comm
