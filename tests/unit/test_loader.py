"""How the program's sizes are derived from the options (no BPF is loaded)."""
from __future__ import annotations

from agent.kernel import probe


def test_the_sockets_followed_are_shared_half_and_half_between_slots_and_map():
    def room(max_socks):
        flags = dict(f[2:].split("=") for f in probe.socket_room(max_socks))
        return 1 << int(flags["SOCK_SLOT_BITS"]), int(flags["MAX_SOCKS"])

    assert room(128) == (64, 64)
    assert room(100) == (32, 68)  # a power of two for the slots, the rest to the map
    assert room(64) == (32, 32)   # --max-sockets' least
    assert room(131072) == (65536, 65536)
    assert room(1 << 24) == (1 << probe.MAX_SOCK_SLOT_BITS, (1 << 24) - (1 << probe.MAX_SOCK_SLOT_BITS))
