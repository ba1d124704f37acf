"""A Kubernetes container's pod, from the state its runtime keeps on the host (kernel.pods),
and the cgroup path that names the container (kernel.cgroups)."""
import json
import os

import pytest

from agent.kernel import cgroups, pods

ID = "ab12" * 16


def state(root, runtime: str, content: bytes | dict, container_id: str = ID):
    path = root / pods.STATE_FILES[runtime][0].format(id=container_id)
    path.parent.mkdir(parents=True)
    path.write_bytes(content if isinstance(content, bytes) else json.dumps(content).encode())
    return path


@pytest.fixture(autouse=True)
def fresh_cache():
    pods.pod_of.cache_clear()
    yield
    pods.pod_of.cache_clear()


@pytest.mark.parametrize("runtime, content", [
    ("containerd", {"ociVersion": "1.1.0", "annotations": {"io.kubernetes.cri.sandbox-namespace": "shop",
                                                          "io.kubernetes.cri.sandbox-name": "web-7d9f"}}),
    ("cri-o", {"annotations": {"io.kubernetes.pod.namespace": "shop", "io.kubernetes.pod.name": "web-7d9f"}}),
    ("docker", {"Config": {"Labels": {"io.kubernetes.pod.namespace": "shop", "io.kubernetes.pod.name": "web-7d9f"}}}),
])
def test_each_runtime_says_the_pod_in_its_own_file(tmp_path, runtime, content):
    state(tmp_path, runtime, content)
    assert pods.pod_of(runtime, ID, tmp_path) == "shop/web-7d9f"
    assert pods.pod_of(runtime, "cd34" * 16, tmp_path) is None  # another container: nothing kept


def test_a_container_outside_kubernetes_has_no_pod(tmp_path):
    state(tmp_path, "docker", {"Config": {"Labels": {"maintainer": "someone"}}})
    assert pods.pod_of("docker", ID, tmp_path) is None


@pytest.mark.parametrize("content", [
    b"{not json", b"[]", b'{"annotations": []}',
    json.dumps({"annotations": {"io.kubernetes.pod.namespace": "shop",
                                "io.kubernetes.pod.name": "web\n10864  FAKE\x1b["}}).encode(),  # not a name
    json.dumps({"annotations": {"io.kubernetes.pod.namespace": "shop"}}).encode(),
])
def test_what_is_not_a_pod_name_is_not_taken(tmp_path, content):
    state(tmp_path, "cri-o", content)
    assert pods.pod_of("cri-o", ID, tmp_path) is None


def test_a_link_or_a_huge_file_in_place_of_the_state_is_not_read(tmp_path):
    target = tmp_path / "elsewhere.json"
    target.write_text(json.dumps({"annotations": {"io.kubernetes.pod.namespace": "a", "io.kubernetes.pod.name": "b"}}))
    path = tmp_path / pods.STATE_FILES["cri-o"][0].format(id=ID)
    path.parent.mkdir(parents=True)
    os.symlink(target, path)
    assert pods.pod_of("cri-o", ID, tmp_path) is None
    other = "cd34" * 16
    big = state(tmp_path, "cri-o", b" " * (pods.MAX_STATE_BYTES + 1), other)
    assert big.stat().st_size > pods.MAX_STATE_BYTES and pods.pod_of("cri-o", other, tmp_path) is None
    assert pods.pod_of("cri-o", "../../etc", tmp_path) is None  # an id is 64 hex digits, never a path


def test_the_placer_keeps_the_pods_of_the_containers_it_meets(tmp_path, monkeypatch):
    state(tmp_path, "containerd", {"annotations": {"io.kubernetes.cri.sandbox-namespace": "shop",
                                                   "io.kubernetes.cri.sandbox-name": "web-7d9f"}})
    monkeypatch.setenv("TCPCLOSE_HOST_ROOT", str(tmp_path))
    path = f"/kubepods.slice/kubepods-pod0a1b2c3d_0000_4000_8000_000000000001.slice/cri-containerd-{ID}.scope"
    placed = cgroups.workload(path)
    assert placed.container == "containerd:" + ID[:12] and placed.container_id == ID
    monkeypatch.setattr(cgroups, "cgroup_of", lambda pid: path)
    placer = cgroups.Placer()
    placer.learn(4242)
    assert placer.pods == {"containerd:" + ID[:12]: "shop/web-7d9f"}
