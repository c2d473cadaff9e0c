"""The index and a comparison page rendered by a real browser (headless Chromium) fit a 1400 px window.

The page is measured by a small script added to a copy of it: the document's scroll width and the
rightmost edge of any element, written into the title, which ``--dump-dom`` prints. Skipped where no
Chromium is installed (Debian: ``apt-get install chromium``).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from pgolf_core.report.compare_page import write_compare
from pgolf_core.report.index import build_index
from tests.test_compare import make_run, make_three

BROWSER = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
WIDTH = 1400

pytestmark = pytest.mark.skipif(BROWSER is None, reason="no chromium binary on PATH")

_PROBE = """<script>addEventListener("load", () => {
  const edges = [...document.querySelectorAll("body *")].map(e => e.getBoundingClientRect().right);
  const right = Math.ceil(Math.max(0, ...edges));
  document.title = `probe ${document.documentElement.scrollWidth} ${right} ${innerWidth}`;
});</script></body>"""


def _start(page: Path, profile: Path) -> tuple[subprocess.Popen, Path]:
    probe = page.resolve().with_name(f"_probe_{page.name}")
    probe.write_text(page.read_text(encoding="utf-8").replace("</body>", _PROBE), encoding="utf-8")
    # its own profile folder: other Chromium processes on the machine never share (or lock) ours
    cmd = [
        BROWSER,
        "--headless",
        "--disable-gpu",
        "--no-sandbox",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        f"--window-size={WIDTH},1000",
        "--dump-dom",
        probe.as_uri(),
    ]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True), probe


def _measure(proc: subprocess.Popen) -> tuple[int, int, int]:
    try:
        out, _ = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail("chromium did not finish within 60 s")
    m = re.search(r"<title>probe (\d+) (\d+) (\d+)</title>", out)
    assert m, f"the probe did not run; chromium printed: {out[:300]!r}"
    return int(m[1]), int(m[2]), int(m[3])


def _wide_reports(root: Path) -> list[Path]:
    """The three comparison runs plus what made the table wide: an ablation run with long notes, a
    failed run with a long unbroken error, a long run id."""
    dirs = make_three(root)
    make_run(
        root,
        "ablation-" + "x" * 60,
        "t/ablation",
        1,
        {},
        extra={f"ablation stage {i}": 2.3 - i / 100 for i in range(6)},
        failing={"ablation stage 2": "T1"},
    )
    failed = make_run(root, "failed", "t/failed", 1, {"pre": 2.4})
    manifest = json.loads((failed / "manifest.json").read_text())
    manifest.update(status="failed", error="OSError: /very/long/" + "path" * 60 + " not found")
    (failed / "manifest.json").write_text(json.dumps(manifest))
    return dirs


def test_index_and_comparison_fit_the_window(tmp_path):
    root = tmp_path / "reports"
    _wide_reports(root)
    page, _ = write_compare(["t/a-s1", "t/a-s2", "t/b-s1"], root / "_compare" / "t.html", reports_root=root)
    index = build_index(root)
    procs = [_start(p, tmp_path / f"profile{i}") for i, p in enumerate((index, page))]
    for (proc, probe), name in zip(procs, ("index", "comparison"), strict=True):
        scroll, right, viewport = _measure(proc)
        probe.unlink()
        assert viewport == WIDTH, f"{name}: the window is {viewport} px wide, not {WIDTH}"
        assert scroll <= viewport and right <= viewport, (
            f"{name}: content {scroll} px wide, an element ends at {right} px, the window is {viewport} px"
        )
