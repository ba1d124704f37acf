"""A Kubernetes container's pod (namespace/name), from its runtime's own state on the host.

No API server is asked: the kubelet hands the pod's namespace and name to the container
runtime, which keeps them beside each container it runs:

  containerd  the OCI bundle's config.json, annotations io.kubernetes.cri.sandbox-namespace
              and io.kubernetes.cri.sandbox-name (/run/containerd, or /run/k3s/containerd)
  CRI-O       the OCI bundle's config.json, annotations io.kubernetes.pod.namespace and
              io.kubernetes.pod.name (/run/containers/storage/overlay-containers/ID/userdata)
  docker      config.v2.json, labels io.kubernetes.pod.namespace and io.kubernetes.pod.name
              (cri-dockerd; /var/lib/docker/containers/ID)

The container's full id comes from its cgroup (kernel.cgroups).  Where the host's file
system is elsewhere (tcpclose in a container with the host's / mounted at /host), the
environment variable TCPCLOSE_HOST_ROOT says where.  These files are root's,
in directories only root writes; each is still opened without following a link, read up
to MAX_STATE_BYTES, and a name that is not a Kubernetes name is not taken.
"""
from __future__ import annotations

import json
import os
import re
import stat
from functools import lru_cache
from pathlib import Path

STATE_FILES = {  # runtime (as kernel.cgroups names it) -> where its state of container {id} is
    "containerd": ("run/containerd/io.containerd.runtime.v2.task/k8s.io/{id}/config.json",
                   "run/k3s/containerd/io.containerd.runtime.v2.task/k8s.io/{id}/config.json"),
    "cri-o": ("run/containers/storage/overlay-containers/{id}/userdata/config.json",),
    "docker": ("var/lib/docker/containers/{id}/config.v2.json",),
}
KEYS = (("io.kubernetes.cri.sandbox-namespace", "io.kubernetes.cri.sandbox-name"),
        ("io.kubernetes.pod.namespace", "io.kubernetes.pod.name"))
MAX_STATE_BYTES = 4 << 20  # an OCI config.json is tens of kB
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")  # a DNS subdomain, as Kubernetes names are
_ID = re.compile(r"^[0-9a-f]{64}$")


def _read(path: Path) -> bytes | None:
    """A regular file's bytes, not through a link at its name; None if it is not one."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_STATE_BYTES:
            return None
        with os.fdopen(os.dup(fd), "rb") as file:
            return file.read(MAX_STATE_BYTES + 1)
    except OSError:
        return None
    finally:
        os.close(fd)


def _labels(state: dict) -> dict:
    """The annotations of an OCI bundle's config.json, or a docker container's labels."""
    found = state.get("annotations")
    if not isinstance(found, dict):
        config = state.get("Config")
        found = config.get("Labels") if isinstance(config, dict) else None
    return found if isinstance(found, dict) else {}


def host_root() -> Path:
    return Path(os.environ.get("TCPCLOSE_HOST_ROOT") or "/")


@lru_cache(maxsize=4096)
def pod_of(runtime: str, container_id: str, root: Path | None = None) -> str | None:
    """"namespace/name" of the pod the container runs in, as its runtime keeps it under
    `root` (default host_root()); None when not in a pod, not readable, or not a Kubernetes name."""
    root = host_root() if root is None else root
    if not _ID.match(container_id):
        return None
    for template in STATE_FILES.get(runtime, ()):
        data = _read(root / template.format(id=container_id))
        if data is None or len(data) > MAX_STATE_BYTES:
            continue
        try:
            state = json.loads(data)
        except ValueError:
            continue
        labels = _labels(state) if isinstance(state, dict) else {}
        for namespace_key, name_key in KEYS:
            namespace, name = labels.get(namespace_key), labels.get(name_key)
            if isinstance(namespace, str) and isinstance(name, str) and _NAME.match(namespace) and _NAME.match(name):
                return f"{namespace}/{name}"
    return None
