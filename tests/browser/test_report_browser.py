"""report.html opened in a real headless browser (Debian's chromium): its sections are
there and every embedded plot decodes to a picture, with no network at all."""
import json
import re
import shutil
import subprocess

import pytest

from support.incidents import SMALL_RANGE, cli_report, incident_stream

pytestmark = pytest.mark.browser

# appended to a copy of the page: what the browser itself made of it
CHECK = """<script>
window.addEventListener("load", () => {
  const out = document.createElement("pre");
  out.id = "browser-check";
  out.textContent = JSON.stringify({
    sections: [...document.querySelectorAll("h2[id]")].map(h => h.id),
    images: [...document.images].map(i => ({id: i.id, ok: i.complete && i.naturalWidth > 100})),
    findings: document.querySelectorAll(".finding").length,
  });
  document.body.appendChild(out);
});
</script>"""


def browser():
    return shutil.which("chromium") or shutil.which("chromium-browser")


def test_the_report_opens_in_chromium_with_its_sections_and_plots(tmp_path):
    out = cli_report(tmp_path, *incident_stream(), started=0.5, ended=20.5, timewait="timers", sysctls=SMALL_RANGE)
    page = tmp_path / "checked.html"
    page.write_text((out / "report.html").read_text().replace("</body>", CHECK + "</body>"))
    result = subprocess.run(
        [browser(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000", "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=120)
    found = re.search(r'<pre id="browser-check">(.*?)</pre>', result.stdout, re.S)
    assert found, result.stderr[-2000:]
    check = json.loads(found.group(1).replace("&quot;", '"'))
    assert check["sections"][0] == "findings"
    assert {"timewait-over-time", "timewait-lifetimes", "closes", "churn", "ports", "close-wait",
            "unseen"} <= set(check["sections"])
    assert len(check["images"]) == 6 and all(image["ok"] for image in check["images"]), check["images"]
    assert check["findings"] >= 4
