"""The dashboard: query answers at a million runs, the Performance page rendered in Chromium,
live latency (stage end -> the page's DOM), page switches in place against full page loads,
and the server's memory over many sessions and over many page switches in one session.

    python benchmarks/dashboard.py --keep /tmp/sw-hist          [homes built once by history.py's builder]
    python benchmarks/dashboard.py --keep /tmp/sw-hist --only queries|render|live|navigation|memory

Homes: generated runs replayed through the daemon's own ingest (benchmarks/history.py: 4
stages a run, 3% failing at detection, one log line a run, starts over 30 days), 100, 10k
and 1M runs. References, in the same run: for queries, the obvious way (the whole table read
into pandas, filtered, sorted, the first page taken); for rendering and latency, the issue's
targets; for page switches, the same page opened by a full load (what every click cost before
pages switched in place) and the issue's targets; for memory, the server's RSS after 20
sessions (switches) against after 200.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil

sys.path.insert(0, os.path.dirname(__file__))
from _common import answers_not_kept, median_ms, print_table, running_daemon
from history import prepared_home

from stagewatch.daemon import Filters, parse_time
from stagewatch.daemon.query._readmodels import read_table
from stagewatch.ui import _data

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]


def naive_runs(home: Path, keep: Callable) -> object:
    frame = read_table(home, "runs").to_pandas()
    return frame[keep(frame)].sort_values("start_time", ascending=False).head(25)


def naive_logs(home: Path, keep: Callable) -> object:
    frame = read_table(home, "logs").to_pandas()
    return frame[keep(frame)].sort_values("time", ascending=False).head(50)


def queries(home: Path, runs: int) -> list[list[object]]:
    week = parse_time("7d")
    cases = [
        (
            "runs: first page, no filter",
            lambda: _data.runs_page(home, Filters()),
            lambda: naive_runs(home, lambda f: f["run_id"].notna()),
        ),
        (
            "runs: failed at detection, last 7 days",
            lambda: _data.runs_page(home, Filters(failed_stage="detection", since=week)),
            lambda: naive_runs(home, lambda f: (f["failed_stage"] == "detection") & (f["start_time"] >= week)),
        ),
        (
            "runs: error text 'nan pixels'",
            lambda: _data.runs_page(home, Filters(grep="nan pixels")),
            lambda: naive_runs(home, lambda f: f["error_message"].str.contains("nan pixels", case=False, na=False)),
        ),
        (
            "logs: first page, no filter",
            lambda: _data.logs_page(home, Filters()),
            lambda: naive_logs(home, lambda f: f["message"].notna()),
        ),
        (
            "logs: INFO+, text 'done', last 7 days",
            lambda: _data.logs_page(home, Filters(level="INFO", grep="done", since=week)),
            lambda: naive_logs(home, lambda f: f["message"].str.contains("done", case=False) & (f["time"] >= week)),
        ),
    ]
    rows = []
    for name, ours, reference in cases:
        with answers_not_kept():  # each a read of the tables, not an answer kept from the last one
            mine = median_ms(ours, warm=True)
        theirs = median_ms(reference, 3, warm=True)
        rows.append([f"{runs:,}", name, f"{mine:.0f}", f"{theirs:.0f}", f"{theirs / mine:.1f}x"])
    return rows


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _listens(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


@contextlib.contextmanager
def dashboard(home: Path) -> Iterator[tuple[str, psutil.Process]]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "stagewatch.cli", "ui", "--home", str(home), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/app"
    try:
        deadline = time.monotonic() + 120
        # Listening is enough: a GET of the app would build a whole session, slow on a busy machine.
        while not _listens(port):
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError("the dashboard did not start")
            time.sleep(0.2)
        server = next(
            p
            for p in [psutil.Process(process.pid), *psutil.Process(process.pid).children(True)]
            if "panel" in " ".join(p.cmdline())
        )
        yield url, server
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)


@contextlib.contextmanager
def chromium() -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield browser
        finally:
            browser.close()


def performance_render_s(browser: object, url: str) -> float:
    """Navigation start until the page is drawn whole: its last chart (the memory trend, drawn
    after the stats table and the duration trend), timed in the page (WATCH)."""
    context = watched_context(browser, {"performance": WHOLE["performance"]})
    page = context.new_page()
    page.set_default_timeout(120_000)
    page.goto(f"{url}?page=performance&window=30d")
    (elapsed,) = drawn_ms(page, "load")
    context.close()
    return elapsed / 1000


OPEN_TABS = 8  # Live pages left open beside the one timed: other people's dashboards on the server


def render(homes: dict[int, Path]) -> list[list[object]]:
    """The Performance page's full load on each home, and on the 10k home beside OPEN_TABS open
    Live pages (each looks for news four times a second), with the server's CPU while they idle."""
    targets = {100: 5.0, 10_000: 2.0}
    rows = []
    with chromium() as browser:
        for runs, target in targets.items():
            with dashboard(homes[runs]) as (url, server):
                performance_render_s(browser, url)  # the server's first session pays for imports
                seconds = statistics.median(performance_render_s(browser, url) for _ in range(5))
                rows.append(
                    [f"{runs:,} runs over 30 days", f"{seconds:.2f}", f"{target:.1f}", f"{seconds / target:.2f}"]
                )
                if runs != 10_000:
                    continue
                tabs = browser.new_context()
                for _ in range(OPEN_TABS):
                    tabs.new_page().goto(f"{url}?page=live")
                time.sleep(5)
                before = sum(server.cpu_times()[:2])
                time.sleep(10)
                idle = (sum(server.cpu_times()[:2]) - before) / 10
                seconds = statistics.median(performance_render_s(browser, url) for _ in range(5))
                label = f"{runs:,} runs, {OPEN_TABS} Live tabs open (server CPU while idle {idle:.0%})"
                rows.append([label, f"{seconds:.2f}", f"{target:.1f}", f"{seconds / target:.2f}"])
                tabs.close()
    return rows


TICKER = """
import sys, time, stagewatch
run = stagewatch.init(pipeline="ticker", home=sys.argv[1])
print(run.id, flush=True)
with open(sys.argv[2], "w") as ends:
    for i in range(int(sys.argv[3])):
        with run.stage("tick", sample_id=f"t{i}"):
            time.sleep(0.005)
        ends.write(f"{time.time_ns()}\\n")
        ends.flush()
        time.sleep(0.2)
run.finish()
run.flush(10)
"""

LOAD = """
import sys, time, stagewatch
run = stagewatch.init(pipeline="load", home=sys.argv[1])
deadline, n = time.monotonic() + float(sys.argv[2]), 0
while time.monotonic() < deadline:
    started = time.monotonic()
    for _ in range(100):  # 100 stages = 200 events every 100 ms: 2,000 events/s
        with run.stage("busy", sample_id=f"s{n}"):
            n += 1
    time.sleep(max(0.0, 0.1 - (time.monotonic() - started)))
run.finish()
"""


def live_latency(load: bool, ticks: int = 60) -> list[object]:
    """Stage end in the pipeline -> the new count in the Live page's DOM, per execution."""
    with running_daemon() as home, dashboard(home) as (url, _), chromium() as browser:
        page = browser.new_page()
        page.set_default_timeout(60_000)
        page.goto(f"{url}?page=live")
        page.wait_for_selector("text=No run is in progress")
        loader = None
        if load:
            loader = subprocess.Popen([sys.executable, "-c", LOAD, str(home), str(ticks * 0.21 + 15)])
            time.sleep(3)
        ends_file = home.parent / f"{home.name}-ends"
        ticker = subprocess.Popen(
            [sys.executable, "-c", TICKER, str(home), str(ends_file), str(ticks)], stdout=subprocess.PIPE, text=True
        )
        ticker.stdout.readline()
        seen: dict[int, int] = {}  # count -> when the page first showed it (ns)
        deadline = time.monotonic() + ticks * 0.25 + 30
        while time.monotonic() < deadline and len(seen) < ticks:
            count = _shown_count(page, "tick")
            now = time.time_ns()
            if count:
                for k in range(1, count + 1):
                    seen.setdefault(k, now)
        ticker.wait(60)
        if loader is not None:
            loader.kill()
            loader.wait()
        ends = [int(line) for line in ends_file.read_text().split()]
        latencies = sorted((seen[k + 1] - end) / 1e6 for k, end in enumerate(ends) if k + 1 in seen)
        ends_file.unlink()
    p50 = statistics.median(latencies)
    p95 = latencies[int(0.95 * (len(latencies) - 1))]
    name = "with 2,000 events/s from another pipeline" if load else "one pipeline"
    return [name, len(latencies), f"{p50:.0f}", f"{p95:.0f}", "1000", f"{p95 / 1000:.2f}"]


def _shown_count(page: object, stage: str) -> int | None:
    rows = page.locator(".sw-table-live-stages .tabulator-row").evaluate_all(
        """rows => rows.map(row => [row.querySelector("[tabulator-field=stage]")?.innerText,
                                    row.querySelector("[tabulator-field=done]")?.innerText])"""
    )
    done = dict(rows).get(stage)
    return int(done.replace(",", "")) if done else None


# Each page and what shows that its data is drawn (a table's rows, or the page's words for none).
PAGES = {
    "live": ("?page=live", "text=No run is in progress"),
    "runs": ("?page=runs", ".sw-table-runs .tabulator-row"),
    "run": ("?page=run&run={run}", ".sw-table-stages .tabulator-row"),
    "performance": ("?page=performance", ".sw-table-window-stats .tabulator-row"),
    "logs": ("?page=logs", ".sw-table-logs .tabulator-row"),
    "accuracy": (
        "?page=accuracy&run={run}",
        ".sw-table-accuracy-stages .tabulator-row, text=No sample of this run has been judged",
    ),
    "failures": ("?page=failures", ".sw-table-failures .tabulator-row"),
}
# The part a page draws a tick after its table (ui/_widgets.fill_soon): its last chart.
WHOLE = {
    "run": ".sw-chart-durations canvas",
    "performance": ".sw-chart-memory canvas",
    "logs": ".sw-chart-histogram canvas",
    "accuracy": ".sw-chart-accuracy-trend canvas, text=No run has been judged yet",
}
CLICK = """(href) => {
    const link = document.createElement("a");  // a link of the page, clicked as a person would
    link.href = href;
    document.body.appendChild(link);
    link.click();
    link.remove();
}"""

# When the page's data is drawn, timed in the page itself: each animation frame looks for what
# shows it (through Panel's shadow roots, as Playwright's selectors do: CSS "outer inner" or
# text=, a visible box) and notes performance.now() the first time it is there. Waiting with
# Playwright's locators instead timed when Playwright next looked: it looks again after 0, 20,
# 50, 100, 100 and then every 500 ms, so a page drawn at 280 ms read as 800.
WATCH = """
(() => {
  const inside = (node) => [...(node.shadowRoot ? node.shadowRoot.children : []), ...node.children];
  const below = (top, css) => {
    const found = [];
    for (const stack = [top]; stack.length; ) {
      const node = stack.pop();
      if (node !== top && node.matches(css)) found.push(node);
      stack.push(...inside(node));
    }
    return found;
  };
  const shown = (element) => {
    const box = element.getBoundingClientRect();
    return box.width > 0 && box.height > 0;
  };
  const hasText = (text) => {
    for (const stack = [document.documentElement]; stack.length; ) {
      const node = stack.pop();
      for (const child of node.childNodes) {
        if (child.nodeType === Node.TEXT_NODE && child.data.includes(text) && shown(node)) return true;
      }
      stack.push(...inside(node));
    }
    return false;
  };
  const drawn = (shows) => shows.some((part) => {
    if (part.startsWith("text=")) return hasText(part.slice(5));
    const [outer, inner] = part.split(" ");
    return below(document.documentElement, outer).some(
      (host) => (inner ? below(host, inner) : [host]).some(shown));
  });
  window.__drawnAt = {};
  // Notes in __drawnAt[key] the ms from `since` until `shows` (alternatives) is drawn.
  window.__watch = (shows, key, since) => {
    delete window.__drawnAt[key];
    const look = () => {
      if (drawn(shows)) window.__drawnAt[key] = performance.now() - since;
      else requestAnimationFrame(look);
    };
    requestAnimationFrame(look);
  };
  // A page loaded whole: from the navigation's start (performance.now() counts from it).
  const shows = TARGETS[new URLSearchParams(location.search).get("page")];
  if (shows) window.__watch(shows, "load", 0);
})();
"""
SWITCH = """([href, shows, whole]) => {
    const clicked = performance.now();
    window.__watch(shows, "switch", clicked);
    window.__watch(whole, "whole", clicked);
""" + CLICK.split("=> {", 1)[1]


def watched_context(browser: object, pages: dict[str, str] | None = None) -> object:
    """A browser context whose documents time their own drawing (WATCH); a document loaded whole
    watches for the page of its URL among `pages` (name -> what shows it drawn)."""
    targets = {name: shows.split(", ") for name, shows in (pages or {}).items()}
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    context.add_init_script(WATCH.replace("TARGETS", json.dumps(targets)))
    return context


def drawn_ms(page: object, *keys: str) -> list[float]:
    """The ms the document noted for each of `keys` (WATCH), once it has noted all of them."""
    found = "keys => keys.every(key => window.__drawnAt[key] !== undefined)"
    page.wait_for_function(found, arg=list(keys))
    return page.evaluate("keys => keys.map(key => window.__drawnAt[key])", list(keys))


def _drawn(page: object, shows: str) -> None:
    """Wait until `shows` (CSS, or text=) is on the page; a comma joins alternatives."""
    found = None
    for part in shows.split(", "):
        locator = page.locator(part)
        found = locator if found is None else found.or_(locator)
    found.first.wait_for()


@contextlib.contextmanager
def demo_home() -> Iterator[Path]:
    """`stagewatch demo` (its default frames) on a fresh home: the demo home."""
    with running_daemon() as home:
        subprocess.run(
            [sys.executable, "-m", "stagewatch.cli", "demo", "--home", str(home), "--no-ui"],
            check=True,
            capture_output=True,
            timeout=600,
        )
        yield home


def newest_run(home: Path) -> str:
    return str(_data.runs_page(home, Filters()).rows["run_id"].iloc[0])


def page_switches(browser: object, url: str, run_id: str, repeats: int = 5) -> list[list[object]]:
    """Per page: a full load (goto, warm cache: what a click cost before) against a switch in place
    (a link clicked in an open session), navigation -> the page's data drawn (timed in the page,
    WATCH), median of `repeats`."""
    context = watched_context(browser, {name: shows for name, (_, shows) in PAGES.items()})
    page = context.new_page()
    page.set_default_timeout(120_000)
    full: dict[str, list[float]] = {name: [] for name in PAGES}
    switch: dict[str, list[float]] = {name: [] for name in PAGES}
    whole: dict[str, list[float]] = {name: [] for name in PAGES}
    page.goto(f"{url}?page=live")  # the server's first session pays for imports, the browser's cache fills
    drawn_ms(page, "load")
    for _ in range(repeats):
        for name, (query, _) in PAGES.items():
            page.goto(url + query.format(run=run_id))
            full[name] += drawn_ms(page, "load")
    # The router's half in the browser renders after the page's table: a click before it is a
    # full load (what a person clicking that fast gets), which would end the session measured.
    page.wait_for_function("() => window.stagewatch && window.stagewatch.connected()")
    page.evaluate("() => { window.__marker = 1; }")
    for _ in range(repeats):
        for name, (query, shows) in PAGES.items():  # consecutive pages differ: no old table to match
            page.evaluate(SWITCH, [query.format(run=run_id), shows.split(", "), WHOLE.get(name, shows).split(", ")])
            drawn, complete = drawn_ms(page, "switch", "whole")
            switch[name].append(drawn)
            whole[name].append(complete)
    assert page.evaluate("() => window.__marker") == 1, "a switch reloaded the document"
    context.close()
    rows = []
    for name in PAGES:
        before, after = statistics.median(full[name]), statistics.median(switch[name])
        complete = statistics.median(whole[name])
        rows.append([name, f"{before:.0f}", f"{after:.0f}", f"{before / after:.1f}x", f"{complete:.0f}"])
    return rows


def first_load_s(browser: object, url: str) -> float:
    """A new browser context (empty cache) opening the Runs page until its rows are drawn (timed
    in the page from the navigation's start, WATCH)."""
    context = watched_context(browser, {"runs": PAGES["runs"][1]})
    page = context.new_page()
    page.set_default_timeout(120_000)
    page.goto(f"{url}?page=runs")
    (elapsed,) = drawn_ms(page, "load")
    context.close()
    return elapsed / 1000


SWITCH_TARGETS_MS = {"demo home": 300, "10,000 runs": 500}


def navigation(label: str, home: Path) -> tuple[list[list[object]], list[object]]:
    """Page switches in place against full loads on one home, and its first load."""
    with chromium() as browser, dashboard(home) as (url, _):
        first_load_s(browser, url)  # the server's first session pays for imports
        first = [label, f"{statistics.median(first_load_s(browser, url) for _ in range(5)):.2f}", "1.5"]
        switches = [[label, *row, SWITCH_TARGETS_MS[label]] for row in page_switches(browser, url, newest_run(home))]
    return switches, first


def memory_over_switches(home: Path, switches: int = 200) -> list[list[object]]:
    """The server's RSS after 20 page switches in one session, against after `switches`."""
    readings = {}
    run_id = newest_run(home)
    order = list(PAGES.values())
    with dashboard(home) as (url, server), chromium() as browser:
        page = browser.new_page()
        page.set_default_timeout(120_000)
        page.goto(f"{url}?page=live")
        _drawn(page, PAGES["live"][1])
        for i in range(1, switches + 1):
            query, shows = order[i % len(order)]
            page.evaluate(CLICK, query.format(run=run_id))
            _drawn(page, shows)
            if i in (20, switches):
                time.sleep(10)
                readings[i] = server.memory_info().rss / 2**20
    ratio = readings[switches] / readings[20]
    return [
        ["after 20 switches", f"{readings[20]:.0f}", ""],
        [f"after {switches}", f"{readings[switches]:.0f}", f"{ratio:.3f}"],
    ]


def memory(home: Path, sessions: int = 200) -> list[list[object]]:
    """The server's RSS after 20 sessions opened and closed, against after `sessions`."""
    readings = {}
    with dashboard(home) as (url, server), chromium() as browser:
        for i in range(1, sessions + 1):
            context = browser.new_context()
            page = context.new_page()
            page.set_default_timeout(60_000)
            page.goto(f"{url}?page={('runs', 'run', 'performance', 'logs', 'live')[i % 5]}")
            page.wait_for_function(
                "() => window.Bokeh && window.Bokeh.documents.length && window.Bokeh.documents[0].is_idle"
            )
            context.close()
            if i in (20, sessions):
                time.sleep(40)  # Bokeh drops a closed session's document after it has been unused 15 s
                readings[i] = server.memory_info().rss / 2**20
    ratio = readings[sessions] / readings[20]
    return [
        ["after 20 sessions", f"{readings[20]:.0f}", ""],
        [f"after {sessions}", f"{readings[sessions]:.0f}", f"{ratio:.3f}"],
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keep", type=Path, help="build the homes there once and reuse them")
    parser.add_argument("--large", type=int, default=1_000_000, help="runs in the large home (1,000,000)")
    parser.add_argument("--only", choices=["queries", "render", "live", "navigation", "memory"])
    args = parser.parse_args()
    sizes = {"queries": [args.large], "render": [100, 10_000], "memory": [10_000], "live": [], "navigation": [10_000]}
    wanted = [args.only] if args.only else list(sizes)
    homes = {n: prepared_home(n, args.keep)[0] for part in wanted for n in sizes[part]}
    if "queries" in wanted:
        print_table(
            "Runs and logs pages: first page answered on the server (median of 7, ms)",
            ["runs", "query", "stagewatch", "pandas: read all, filter, sort", "ratio"],
            queries(homes[args.large], args.large),
        )
    if "render" in wanted:
        print_table(
            "Performance page fully rendered in Chromium (median of 5, s)",
            ["home", "stagewatch", "target", "ratio"],
            render(homes),
        )
    if "live" in wanted:
        print_table(
            "Live page: stage end -> count in the DOM (ms)",
            ["load", "executions", "p50", "p95", "target p95", "ratio"],
            [live_latency(False), live_latency(True)],
        )
    if "navigation" in wanted:
        with demo_home() as demo:
            for label, home in (("demo home", demo), ("10,000 runs", homes[10_000])):
                switches, first = navigation(label, home)  # printed home by home: the second takes long
                print_table(
                    "A click on a link -> the page's data drawn: full load against a switch in place (median of 5, ms)",
                    ["home", "page", "full load", "switch in place", "ratio", "whole page drawn", "target"],
                    switches,
                )
                print_table("First load, empty browser cache (median of 5, s)", ["home", "s", "target"], [first])
    if "memory" in wanted:
        print_table("Dashboard server memory over sessions (RSS, MB)", ["", "RSS MB", "ratio"], memory(homes[10_000]))
        print_table(
            "Dashboard server memory over page switches in one session (RSS, MB)",
            ["", "RSS MB", "ratio"],
            memory_over_switches(homes[10_000]),
        )


if __name__ == "__main__":
    main()
