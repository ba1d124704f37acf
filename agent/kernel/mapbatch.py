"""A whole BPF map read into numpy in a few syscalls (BPF_MAP_LOOKUP_BATCH, Linux 5.6+),
where bcc's items() makes two syscalls and two ctypes objects per entry: the timewaits
followed are hundreds of thousands of entries, read during tracing (Probe.sweep_timewaits)."""
from __future__ import annotations

import ctypes
import errno
import os

import numpy as np


def read_map(table) -> tuple[np.ndarray, np.ndarray]:
    """Every (key, value) of a bcc hash table or array, as two numpy arrays of its Key and Leaf
    types (numpy takes a ctypes Structure's fields and offsets: the layout is bcc's, not written
    twice).  An array gives all of its entries.

    Entries added or removed while it reads may be in or out: each bucket is read whole, once."""
    from bcc.libbcc import lib

    room = table.max_entries
    keys = np.zeros(room, np.dtype(table.Key))
    values = np.zeros(room, np.dtype(table.Leaf))
    token, count, total = ctypes.c_uint32(0), ctypes.c_uint32(0), 0
    while total < room:
        count.value = room - total
        res = lib.bpf_lookup_batch(table.map_fd, ctypes.byref(token) if total else None, ctypes.byref(token),
                                   keys[total:].ctypes.data, values[total:].ctypes.data, ctypes.byref(count))
        err = ctypes.get_errno()
        total += count.value
        if res != 0:
            if err == errno.ENOENT:  # the last bucket was read
                break
            raise OSError(err, f"BPF_MAP_LOOKUP_BATCH: {os.strerror(err)}")
        if count.value == 0:
            break
    return keys[:total], values[:total]
