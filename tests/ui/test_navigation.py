"""One browser session, pages switched in place (ui/_router.py): the sidebar, the links between
pages and back/forward change the main area without loading the document again, the URL says
where you are, and a page's periodic callbacks stop when it is left.

A document that survives a navigation keeps `window.__marker`; a reload would lose it."""

from __future__ import annotations

import gc
import os
import socket
import time
import weakref
from collections.abc import Iterator
from pathlib import Path

import pytest
from bokeh.server.callbacks import PeriodicCallback

from tests.conftest import wait_for
from tests.ui import test_dashboard
from tests.ui.conftest import CHROMIUM
from tests.ui.test_dashboard import Ui, free_port, shown

served = test_dashboard.served  # the demo home, served (one a module)

pytest.importorskip("playwright.sync_api")
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed")


def _mark(page) -> None:
    page.evaluate("() => { window.__marker = 1; }")


def _same_document(page) -> bool:
    return page.evaluate("() => window.__marker") == 1


def _here(page) -> str:
    """The address bar now (Playwright's page.url lags history.replaceState)."""
    return page.evaluate("() => window.location.search")


def _in_sidebar(page, name: str):
    return page.locator(f"a.sw-nav-{name}")


def test_the_sidebar_and_links_between_pages_switch_in_place(served, page) -> None:
    _, _, ui, run_id = served
    page.goto(f"{ui.url}?page=runs")
    page.wait_for_selector(f".sw-table-runs a[title='{run_id}']")
    _mark(page)
    _in_sidebar(page, "logs").click()
    page.wait_for_selector(".sw-table-logs .tabulator-row")
    assert _here(page) == "?page=logs" and _same_document(page)
    assert page.title() == "stagewatch · Logs" or wait_for(lambda: page.title() == "stagewatch · Logs", 10)
    _in_sidebar(page, "runs").click()
    page.locator(f".sw-table-runs a[title='{run_id}']").click()  # a link in a table
    page.wait_for_selector(".sw-table-stages .tabulator-row")
    assert _here(page) == f"?page=run&run={run_id}" and _same_document(page)
    page.get_by_text("its failure cases").click()  # a link in a markdown pane: run -> its failures
    page.wait_for_selector(".sw-table-failures .tabulator-row")
    assert _here(page) == f"?page=failures&run={run_id}" and _same_document(page)
    assert page.locator(".sw-run input").input_value() == run_id  # the page read its filter from the link
    page.locator(".sw-table-failures a[href*='page=case']").first.click()  # Failures -> Case
    page.wait_for_selector("text=/This sample in the run|The run's page/")
    assert _here(page).startswith(f"?page=case&run={run_id}") and _same_document(page)
    assert _in_sidebar(page, "live").count() == 1 and not shown(page, "could not be shown")


def test_back_and_forward_step_through_the_pages_seen_without_a_reload(served, page) -> None:
    _, _, ui, run_id = served
    page.goto(f"{ui.url}?page=runs")
    page.wait_for_selector(f".sw-table-runs a[title='{run_id}']")
    _mark(page)
    page.locator(f".sw-table-runs a[title='{run_id}']").click()
    page.wait_for_selector(".sw-table-stages .tabulator-row")
    page.get_by_text("its log lines").click()
    page.wait_for_selector(".sw-table-logs .tabulator-row")
    assert _here(page) == f"?page=logs&run={run_id}"
    page.go_back()
    page.wait_for_selector(".sw-table-stages .tabulator-row")
    assert _here(page) == f"?page=run&run={run_id}" and page.locator(".sw-table-logs").count() == 0
    page.go_back()
    page.wait_for_selector(f".sw-table-runs a[title='{run_id}']")
    assert _here(page) == "?page=runs" and page.locator(".sw-table-stages").count() == 0
    page.go_forward()
    page.wait_for_selector(".sw-table-stages .tabulator-row")
    assert _here(page) == f"?page=run&run={run_id}"
    assert _same_document(page)


def test_a_filter_changed_after_an_in_place_switch_is_in_the_url_and_a_pasted_link_opens_it(served, page) -> None:
    _, _, ui, _ = served
    page.goto(f"{ui.url}?page=live")
    page.wait_for_selector("text=Runs")
    _mark(page)
    _in_sidebar(page, "runs").click()
    page.wait_for_selector(".sw-table-runs .tabulator-row")
    page.locator(".sw-failed-stage select").select_option(label="detection")
    wait_for(lambda: "failed_stage=detection" in _here(page), 20)
    assert _here(page).startswith("?page=runs&")  # the filter joined the page's own query
    wait_for(lambda: len(page.locator(".sw-table-runs a").all()) == 1, 20)
    (failed,) = page.locator(".sw-table-runs a").evaluate_all("links => links.map(link => link.title)")
    pasted = page.evaluate("() => window.location.href")
    other = page.context.new_page()  # the link pasted into another tab opens the same view
    other.goto(pasted)
    other.wait_for_selector(f".sw-table-runs a[title='{failed}']")
    assert len(other.locator(".sw-table-runs a").all()) == 1
    assert other.locator(".sw-failed-stage select").input_value() == "detection"
    page.go_back()  # the filter changed the entry it was made in: back leaves the Runs page
    page.wait_for_selector("text=No run is in progress")
    assert _here(page) == "?page=live" and _same_document(page)


def _links_without(page, parameter: str) -> list[str]:
    """The dashboard's own links on the page (`?…`, in every shadow root) that lack `parameter`."""
    hrefs = page.locator("a[href^='?']").evaluate_all("links => links.map(link => link.getAttribute('href'))")
    assert hrefs, "no link of the dashboard on the page"
    return [href for href in hrefs if parameter not in href]


def _follow(page, link, drawn: str) -> str:
    """Click `link`, wait for `drawn`, and return the address bar: the page's own links checked on the way."""
    link.click()
    page.wait_for_selector(drawn)
    assert _links_without(page, "theme=dark") == []
    return _here(page)


def test_the_theme_stays_in_every_link_and_in_the_url_across_pages(served, page) -> None:
    """A session opened with ?theme=dark keeps it in every link the pages make (sidebar, tables,
    markdown, the case's next/previous), in the URL after a switch in place, after back and
    forward, and after a navigation whose link lacked it (a chart's tap): a copied URL opens
    in the same theme. No other parameter of a page goes to the next."""
    _, _, ui, run_id = served
    page.goto(f"{ui.url}?page=runs&theme=dark")
    run_link = page.locator(f".sw-table-runs a[title='{run_id}']")
    run_link.wait_for()
    _mark(page)
    assert _links_without(page, "theme=dark") == []
    assert _follow(page, run_link, ".sw-table-stages .tabulator-row") == f"?page=run&run={run_id}&theme=dark"
    logs = page.get_by_text("its log lines")
    assert _follow(page, logs, ".sw-table-logs .tabulator-row") == f"?page=logs&run={run_id}&theme=dark"
    assert _follow(page, _in_sidebar(page, "live"), "text=No run is in progress") == "?page=live&theme=dark"
    page.go_back()
    page.wait_for_selector(".sw-table-logs .tabulator-row")
    assert _here(page) == f"?page=logs&run={run_id}&theme=dark"
    page.go_forward()
    page.wait_for_selector("text=No run is in progress")
    assert _here(page) == "?page=live&theme=dark"
    # Accuracy -> Failures -> Case -> its next case
    _follow(page, _in_sidebar(page, "accuracy"), ".sw-table-accuracy-kinds .tabulator-row")
    listed = page.locator(".sw-table-accuracy-kinds a").first
    assert "theme=dark" in _follow(page, listed, ".sw-table-failures .tabulator-row")
    case = page.locator(".sw-table-failures a[href*='page=case']").first
    assert _follow(page, case, ".sw-case-steps").startswith(f"?page=case&run={run_id}")
    assert _here(page).endswith("&theme=dark")
    # Performance: the exemplars' links
    _follow(page, _in_sidebar(page, "performance"), ".sw-table-window-stats a.sw-exemplar-max")
    exemplar = page.locator(".sw-table-window-stats a.sw-exemplar-max").first
    assert _follow(page, exemplar, ".sw-table-stages .tabulator-row").endswith("&theme=dark")
    # A link that lacks it (a chart's tap builds its own): the address bar still gets it.
    page.evaluate("href => window.stagewatch.navigate(href)", "?page=logs")
    page.wait_for_selector(".sw-table-logs .tabulator-row")
    assert wait_for(lambda: _here(page) == "?page=logs&theme=dark", 20), _here(page)
    assert _same_document(page)


def test_ctrl_click_on_a_link_still_opens_a_new_tab(served, page) -> None:
    _, _, ui, run_id = served
    page.goto(f"{ui.url}?page=runs")
    page.wait_for_selector(f".sw-table-runs a[title='{run_id}']")
    with page.context.expect_page() as opened:
        page.locator(f".sw-table-runs a[title='{run_id}']").click(modifiers=["Control"])
    tab = opened.value
    tab.wait_for_selector(".sw-table-stages .tabulator-row")
    assert f"run={run_id}" in tab.url
    assert _here(page) == "?page=runs" and page.locator(".sw-table-stages").count() == 0


def test_after_the_dashboard_restarts_a_link_loads_the_whole_page(served, page) -> None:
    home, _, _, run_id = served
    ui = Ui(home)
    try:
        page.goto(f"{ui.url}?page=runs")
        page.wait_for_selector(f".sw-table-runs a[title='{run_id}']")
        _mark(page)
        ui.stop()  # the session is gone with the server: a switch in place would wait forever
        page.wait_for_function("() => !window.stagewatch.connected()")
        ui = Ui(home, port=ui.port)
        _in_sidebar(page, "logs").click()
        page.wait_for_selector(".sw-table-logs .tabulator-row")  # a new document, a new session
        assert _here(page) == "?page=logs" and page.evaluate("() => window.__marker") is None
        _in_sidebar(page, "runs").click()  # and the new session switches in place again
        page.wait_for_selector(f".sw-table-runs a[title='{run_id}']")
        _mark(page)
        _in_sidebar(page, "live").click()
        page.wait_for_selector("text=No run is in progress")
        assert _same_document(page)
    finally:
        ui.stop()


# --- what a switch costs in the browser: each table drawn once, no bundle nobody uses

# Counts, per table (its `sw-table-*` class), the views Panel's Tabulator made (`built`) and the
# full redraws of a built table (`redrawn`: those Panel's `redraw` does not return from at once,
# each measuring every row again), for the views made from now on.
COUNT_TABLE_DRAWS = """() => {
  const View = window.Bokeh.Models.get("panel.models.tabulator.DataTabulator").prototype.default_view;
  window.__tables = {};
  window.__tableViews = [];
  const tallyOf = (name) => (window.__tables[name] ??= { built: 0, redrawn: 0, rowsAgain: 0 });
  const tally = (view) => tallyOf(view.model.css_classes.find((css) => css.startsWith("sw-table-")));
  // Tabulator's own second drawing of every row (RowManager.reRenderInPosition) while it builds
  // the table, before its tableBuilt event (a redraw of Panel's, counted above, comes after).
  const create = window.Tabulator.prototype._create;
  window.Tabulator.prototype._create = function (...args) {
    const table = this;
    let built = false;
    table.on("tableBuilt", () => { built = true; });
    const again = table.rowManager.reRenderInPosition;
    table.rowManager.reRenderInPosition = function (...inner) {
      if (!built) {
        const host = table.element.getRootNode().host;
        tallyOf([...host.classList].find((css) => css.startsWith("sw-table-"))).rowsAgain += 1;
      }
      return again.apply(this, inner);
    };
    return create.apply(this, args);
  };
  const render = View.prototype.render;
  View.prototype.render = function (...args) {
    window.__tableViews.push(this);
    tally(this).built += 1;
    return render.apply(this, args);
  };
  const redraw = View.prototype.redraw;
  View.prototype.redraw = function (...args) {
    if (!(this._building || this.tabulator == null || this._redrawing)) tally(this).redrawn += 1;
    return redraw.apply(this, args);
  };
}"""

# Resolves once every table on the page is built and has no redraw pending (Panel's resize redraw
# waits for the table's stylesheets and the document; a stylesheet's redraw comes a frame after
# its load), then three frames more: what any of those would have redrawn, it has by then.
TABLES_SETTLED = """async () => {
  const frame = () => new Promise((resolve) => requestAnimationFrame(resolve));
  const settled = (view) => !view.el.isConnected || view.tabulator == null || (
    view.tabulator.initialized && !view._building && !view._resize_pending && view._resize_flush === null);
  while (!window.__tableViews.every(settled)) await frame();
  for (let i = 0; i < 3; i += 1) await frame();
}"""


def test_a_switch_draws_each_table_of_the_page_once(served, page) -> None:
    """Panel's Tabulator built each table before its stylesheets had loaded, then redrew it in
    full twice (once they had, and once more when built, its size unchanged): three times a
    page's rows measured, most of a switch's time in the browser (docs/benchmarks.md)."""
    _, _, ui, run_id = served
    page.goto(f"{ui.url}?page=live")
    page.wait_for_selector("text=No run is in progress")
    page.wait_for_function("() => window.stagewatch && window.stagewatch.connected()")
    _mark(page)
    page.evaluate(COUNT_TABLE_DRAWS)
    tables = {"logs": ["logs"], "failures": ["failures"], f"run&run={run_id}": ["stages"], "runs": ["runs"]}
    for query, names in tables.items():
        page.evaluate("href => window.stagewatch.navigate(href)", f"?page={query}")
        page.wait_for_selector(f".sw-table-{names[0]} .tabulator-row")
        page.evaluate(TABLES_SETTLED)
    drawn = page.evaluate("() => window.__tables")
    assert _same_document(page)
    for name in (f"sw-table-{name}" for names in tables.values() for name in names):
        assert drawn[name]["built"] == 1 and drawn[name]["redrawn"] <= 1, (name, drawn)
        # Nor did Tabulator draw its rows a second time as the table grew to hold them.
        assert drawn[name]["rowsAgain"] == 0, (name, drawn)


def test_the_first_load_asks_for_no_mathjax_or_webgl_bundle(served, page) -> None:
    """No page renders TeX or draws a chart with Bokeh's WebGL: the first load fetched both
    bundles (the larger of them the largest script of the page), each time a Markdown pane was
    on the first page."""
    _, _, ui, _ = served
    asked: list[str] = []
    page.on("request", lambda request: asked.append(request.url))
    page.goto(f"{ui.url}?page=runs")
    page.wait_for_selector(".sw-table-runs .tabulator-row")
    page.wait_for_load_state("networkidle")
    scripts = [url for url in asked if ".js" in url]
    assert any("bokeh.min.js" in url for url in scripts), scripts  # the requests were seen
    assert not [url for url in scripts if "mathjax" in url or "bokeh-gl" in url]


# --- the server's side of it: served in this process, so the session's callbacks can be counted


@pytest.fixture
def in_process(served) -> Iterator[str]:
    """The dashboard's own app served by Panel in this process (a thread), on the demo home."""
    import panel as pn

    from stagewatch.ui import app

    home = served[0]
    previous = os.environ.get("STAGEWATCH_HOME")
    os.environ["STAGEWATCH_HOME"] = str(home)
    port = free_port()
    server = pn.serve(
        {"app": app.page},
        port=port,
        address="127.0.0.1",
        show=False,
        threaded=True,
        # A closed tab's session is dropped after a second (Bokeh's default: 15 s unused, checked
        # every 17 s), so that a test can see what it leaves behind.
        check_unused_sessions=500,
        unused_session_lifetime=1000,
    )
    wait_for(lambda: _listens(port), 30)
    try:
        yield f"http://127.0.0.1:{port}/app"
    finally:
        server.stop()
        if previous is None:
            os.environ.pop("STAGEWATCH_HOME", None)
        else:
            os.environ["STAGEWATCH_HOME"] = previous


def _listens(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def _periodic_callbacks() -> list[int]:
    """Per open session of this process's server: its periodic callbacks now running."""
    from stagewatch.ui import _router

    return [
        sum(isinstance(callback, PeriodicCallback) for callback in document.session_callbacks)
        for document in list(_router._SCOPES)
        if document.session_context is not None
    ]


def test_periodic_callbacks_do_not_pile_up_over_many_switches(in_process, page) -> None:
    page.goto(f"{in_process}?page=runs")
    page.wait_for_selector(".sw-table-runs .tabulator-row")
    (on_runs,) = wait_for(lambda: _periodic_callbacks() or None, 20)
    assert on_runs >= 1  # the Runs page looks for new runs every few seconds
    _mark(page)
    drawn = {"live": "text=No run is in progress", "logs": ".sw-table-logs .tabulator-row", "runs": ".sw-table-runs a"}
    for _ in range(4):  # pages that each start one: Live (the feed), Logs (its tail), Runs (new runs)
        for name, data in drawn.items():
            _in_sidebar(page, name).click()
            page.wait_for_selector(data)
    assert _here(page) == "?page=runs" and _same_document(page)
    assert wait_for(lambda: _periodic_callbacks() == [on_runs], 20), _periodic_callbacks()


def _routers() -> list:
    """The router of each open session of this process's server."""
    from stagewatch.ui import _router

    return [
        scope.router
        for document, scope in list(_router._SCOPES.items())
        if document.session_context is not None and scope.router is not None
    ]


def test_each_navigation_builds_its_page_once(served, in_process, page) -> None:
    """A click, back and forward each build the page they open once (a page built twice would
    leave a hidden copy of its content beside the drawn one), the Compare page included."""
    run_id = served[3]
    earlier = {id(router) for router in _routers()}  # sessions of the tests before, not yet collected
    page.goto(f"{in_process}?page=runs")
    page.wait_for_selector(".sw-table-runs .tabulator-row")
    (router,) = wait_for(lambda: [r for r in _routers() if id(r) not in earlier] or None, 20)
    assert router.builds == 1
    _mark(page)
    drawn = {"live": "text=No run is in progress", "logs": ".sw-table-logs .tabulator-row", "runs": ".sw-table-runs a"}
    for name, data in drawn.items():
        _in_sidebar(page, name).click()
        page.wait_for_selector(data)
    page.go_back()
    page.wait_for_selector(drawn["logs"])
    page.go_forward()
    page.wait_for_selector(drawn["runs"])
    page.evaluate("href => window.stagewatch.navigate(href)", f"?page=compare&b={run_id}")
    # the demo's run is the first of its pipeline
    wait_for(lambda: shown(page, "holds no finished run; give a second run"), 30)
    _in_sidebar(page, "live").click()  # behind this last one, any second build of those before has come
    page.wait_for_selector(drawn["live"])
    assert router.builds == 1 + 3 + 2 + 1 + 1 and _same_document(page)


def test_a_page_left_is_garbage_once_the_next_one_is_drawn(served, in_process, page) -> None:
    """A stopped periodic callback's timer stays in the event loop until it was due (asyncio
    drops cancelled timers late), and with its callback it held the page left (the Runs page's,
    every 3 s: its widgets, rows and scope) for that long: a collection right after the next page
    was drawn freed nothing. The callback is dropped when the page is left."""
    earlier = {id(router) for router in _routers()}
    page.goto(f"{in_process}?page=runs")  # it looks for new runs every 3 s: a periodic callback
    page.wait_for_selector(".sw-table-runs .tabulator-row")
    (router,) = wait_for(lambda: [r for r in _routers() if id(r) not in earlier] or None, 20)
    left = weakref.ref(router.scope)
    _in_sidebar(page, "failures").click()
    page.wait_for_selector(".sw-table-failures .tabulator-row")
    gc.collect()
    assert left() is None


def test_clicks_faster_than_the_server_builds_open_the_newest_page_once(served, in_process, page) -> None:
    """Twenty navigations at once: the one sent first is built, the others fold into the newest,
    built after it (each was built in turn: twenty pages, and a tab closed meanwhile left them
    queued for a session that was gone)."""
    earlier = {id(router) for router in _routers()}
    page.goto(f"{in_process}?page=runs")
    page.wait_for_selector(".sw-table-runs .tabulator-row")
    (router,) = wait_for(lambda: [r for r in _routers() if id(r) not in earlier] or None, 20)
    _mark(page)
    hrefs = [f"?page={name}" for name in ("live", "logs", "runs", "failures") * 5]
    page.evaluate("hrefs => hrefs.forEach(href => window.stagewatch.navigate(href))", hrefs)
    page.wait_for_selector(".sw-table-failures .tabulator-row")
    assert _here(page) == "?page=failures" and _same_document(page)
    assert wait_for(lambda: router.builds == 1 + 2, 20)  # the first page, the first click, the newest
    page.go_back()  # history keeps every entry: back is the click before the last
    page.wait_for_selector(".sw-table-runs .tabulator-row")
    assert _here(page) == "?page=runs" and router.builds == 1 + 2 + 1


def test_a_closed_session_leaves_nothing_behind_on_the_server(in_process, browser) -> None:
    """A session's router, its pages and what they hold go when Bokeh drops the session (a
    dashboard open for weeks serves thousands: each kept made the server grow by about a MB)."""
    kept = _weak_routers_of_new_sessions(in_process, browser, ("runs", "performance", "logs"))
    assert len(kept) == 3

    def freed() -> bool:
        gc.collect()
        return not any(ref() is not None for ref in kept)

    assert wait_for(freed, 60), [ref() for ref in kept]


def _weak_routers_of_new_sessions(url: str, browser, pages: tuple[str, ...]) -> list[weakref.ref]:
    """A session for each page, opened and closed: a weak reference to each one's router. Only
    weak references and ids are held here (Playwright keeps the caller's frames for its logs)."""
    seen = {id(router) for router in _routers()}  # the sessions earlier tests left on their servers
    kept: list[weakref.ref] = []
    for name in pages:
        context = browser.new_context()
        page = context.new_page()
        page.goto(f"{url}?page={name}")
        page.wait_for_selector(f".sw-table-{name if name != 'performance' else 'window-stats'} .tabulator-row")
        kept += [weakref.ref(router) for router in _routers() if id(router) not in seen]
        seen |= {id(ref()) for ref in kept}
        context.close()
    return kept


def test_open_pages_looking_for_news_do_not_set_the_busy_indicator_of_every_session(in_process, browser) -> None:
    """A page's periodic look for news (Live four times a second) ran as a foreground callback:
    each tick marked the whole server busy and then not, and Panel's busy state is the server's,
    so every tick of every open page set the busy indicator of every session (idle tabs cost each
    other with their square: eight open Live tabs kept the server at about a third of a core). Two
    open Live tabs leave the server's busy state alone."""
    import panel as pn

    context = browser.new_context()
    try:
        for _ in range(2):
            tab = context.new_page()
            tab.goto(f"{in_process}?page=live")
            tab.wait_for_selector("text=No run is in progress")
        time.sleep(1)
        changes = []
        watcher = pn.state.param.watch(lambda event: changes.append(event.new), "busy")
        try:
            time.sleep(3)
        finally:
            pn.state.param.unwatch(watcher)
        assert changes == [], f"the server's busy state changed {len(changes)} times in 3 s of idle tabs"
    finally:
        context.close()
