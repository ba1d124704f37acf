"""The test tiers, for the conftest.py of tests/ and bench/tests/: plain tests run anywhere;
`live` tests need root and BPF; `browser` tests need Debian's chromium; `slow` marks the
heavy plain tests (`make unit` leaves them out).

Where TCPCLOSE_REQUIRE_BPF=1 (make test sets it), a live test that cannot run
fails instead of skipping: on the development and CI machines BPF works, so a
skip there would hide a broken set-up (TCPCLOSE_REQUIRE_BROWSER=1 likewise).
"""
import functools
import os
import shutil

import pytest


@functools.lru_cache(maxsize=None)
def bpf_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "not root"
    try:
        import bcc  # noqa: F401
    except ImportError as exc:
        return f"bcc is not importable: {exc}"
    from agent.errors import TcpcloseError
    from agent.kernel import preflight

    try:
        preflight.check_tracepoints()
        preflight.check_headers()
    except TcpcloseError as exc:
        return exc.message
    return None


def pytest_runtest_setup(item):
    if "browser" in item.keywords and not (shutil.which("chromium") or shutil.which("chromium-browser")):
        # make test installs Debian's chromium and sets TCPCLOSE_REQUIRE_BROWSER=1
        if os.environ.get("TCPCLOSE_REQUIRE_BROWSER") == "1":
            pytest.fail("the report's browser test must run here (TCPCLOSE_REQUIRE_BROWSER=1) but chromium is missing")
        pytest.skip("no chromium: install Debian's chromium package")
    if "live" not in item.keywords or bpf_unavailable() is None:
        return
    if os.environ.get("TCPCLOSE_REQUIRE_BPF") == "1":
        pytest.fail(f"live BPF test must run here (TCPCLOSE_REQUIRE_BPF=1) but cannot: {bpf_unavailable()}")
    pytest.skip(f"live BPF test: {bpf_unavailable()}")
