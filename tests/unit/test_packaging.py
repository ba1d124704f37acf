"""The wheel holds the BPF sources (a non-editable install must trace) and no developer tools."""
import zipfile

from support.package import build_wheel


def test_the_wheel_holds_the_bpf_sources_inside_the_package_and_not_the_bench(tmp_path):
    names = zipfile.ZipFile(build_wheel(tmp_path)).namelist()
    assert "agent/bpf/tcpclose.bpf.c" in names and "agent/bpf/tcpclose.h" in names
    for package in ("cli", "kernel", "record", "run", "analysis", "output", "host", "demo"):
        assert f"agent/{package}/__init__.py" in names
    assert not [n for n in names if n.startswith(("bench/", "tests/"))]
