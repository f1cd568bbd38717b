"""Screenshots of every dashboard page for the README, made from a real daemon, three demo
runs and a pipeline still running (so the Live page has something to show).

    python scripts/screenshots.py

writes docs/images/{live,runs,run,performance,logs,accuracy,failures,gallery,case-boxes,case,compare,
output}.png
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from _common import running_daemon
from dashboard import ARGS, CHROMIUM, dashboard

OUT = Path(__file__).resolve().parents[1] / "docs" / "images"
RUNNING = """
import sys, time, random, stagewatch
run = stagewatch.init(pipeline="perception-live", home=sys.argv[1], config={"camera": "front"})
for i in range(100000):
    for stage, ms in (("preprocessing", 8), ("detection", 30), ("postprocessing", 12)):
        try:
            with run.stage(stage, sample_id=f"frame_{i:05d}"):
                time.sleep(ms / 1000 * random.uniform(0.7, 1.6))
                if stage == "detection" and i % 37 == 36:
                    raise RuntimeError(f"frame_{i:05d}: detector returned NaN boxes")
        except RuntimeError:
            pass
"""


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    with running_daemon() as home:
        for _ in range(3):  # three runs: the trend charts get a point per run
            subprocess.run(
                [sys.executable, "-m", "stagewatch.cli", "demo", "--home", str(home), "--frames", "60", "--no-ui"],
                check=True,
                capture_output=True,
            )
        runs = sorted((home / "runs").iterdir(), key=lambda p: p.stat().st_mtime)
        first, failed = runs[0].name, runs[-1].name
        with dashboard(home) as (url, _):
            live = subprocess.Popen([sys.executable, "-c", RUNNING, str(home)])
            try:
                time.sleep(8)
                shoot(url, first, failed, failing_samples(home, failed))
            finally:
                live.kill()
                live.wait()


def failing_samples(home: Path, run_id: str) -> dict[str, str]:
    """Per stage, the most severe wrong sample of the run: the cases worth a screenshot."""
    from stagewatch.daemon.query._readmodels import read_table

    rows = read_table(home, "samples", None, None, ["run_id", "stage", "sample_id", "status", "severity"]).to_pylist()
    wrong = sorted((r for r in rows if r["run_id"] == run_id and r["status"] == "wrong"), key=lambda r: -r["severity"])
    return {
        stage: next(r["sample_id"] for r in wrong if r["stage"] == stage) for stage in ("detection", "segmentation")
    }


def shoot(url: str, first: str, run_id: str, samples: dict[str, str]) -> None:
    from playwright.sync_api import sync_playwright

    pages = {
        "live": "?page=live",
        "runs": "?page=runs",
        "run": f"?page=run&run={run_id}&sample=frame_047",
        "performance": "?page=performance&window=30d",
        "logs": "?page=logs&level=WARNING",
        "accuracy": f"?page=accuracy&run={run_id}",
        "failures": "?page=failures&stage=detection&kind=missed&class=pedestrian",
        "gallery": f"?page=failures&show=gallery&run={run_id}",
        "case-boxes": f"?page=case&run={run_id}&stage=detection&sample={samples['detection']}",
        "case": f"?page=case&run={run_id}&stage=segmentation&sample={samples['segmentation']}",
        "compare": f"?page=compare&a={first}&b={run_id}",
        "output": f"?page=run&run={run_id}&artifact=runs/{run_id}/stages/postprocessing/frame_048_overlay.png",
    }
    with sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1440, "height": 1000})
        page.set_default_timeout(60_000)
        for name, query in pages.items():
            page.goto(url + query)
            page.wait_for_function(
                "() => window.Bokeh && window.Bokeh.documents.length && window.Bokeh.documents[0].is_idle"
            )
            time.sleep(1.5)
            page.screenshot(path=str(OUT / f"{name}.png"))
            print(f"wrote {OUT / f'{name}.png'}")
        browser.close()


if __name__ == "__main__":
    main()
