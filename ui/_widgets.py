"""Pieces every page uses: the navigation, tables, banners, the URL's state."""

from __future__ import annotations

import html
import logging
import operator
import weakref
from collections.abc import Callable
from typing import Any

import pandas as pd
import panel as pn
import param
from bokeh.models import CustomJS

from stagewatch.daemon.query._sql import Homes, homes_of, skipped_files
from stagewatch.ui import _data, _router

_log = logging.getLogger(__name__)


def navigation(current: str, pages: dict[str, str]) -> str:
    """The sidebar's links (page name -> what it is called), the current page in bold."""
    return "".join(
        f'<a href="{_router.href(f"?page={name}")}" class="sw-nav-{name}" '
        'style="display:block;padding:6px 4px;font-size:15px;'
        f'{"font-weight:700;" if name == current else ""}">{html.escape(title)}</a>'
        for name, title in pages.items()
    )


def run_link(run_id: str, text: str | None = None) -> str:
    safe = html.escape(run_id, quote=True)
    href = _router.href(f"?page=run&run={run_id}")
    return f'<a href="{href}" title="{safe}">{html.escape(text or run_id[:8])}</a>'


def table(frame: pd.DataFrame, name: str, html_columns: tuple[str, ...] = (), **options: Any) -> pn.widgets.Tabulator:
    """A read-only table; `html_columns` hold markup we made (links, times with hover), never user text."""
    formatters = {column: {"type": "html"} for column in html_columns}
    formatters.update(options.pop("formatters", {}))
    return pn.widgets.Tabulator(
        frame,
        disabled=True,
        show_index=False,
        name=name,
        css_classes=[f"sw-table-{name}"],
        formatters=formatters,
        sizing_mode="stretch_width",
        # Sorting happens on the server (a page sorted alone in the browser would mislead).
        configuration={"columnDefaults": {"headerSort": False}},
        **options,
    )


class Part(pn.custom.JSComponent):
    """An invisible mark at the top of a part of a page that a link opens with `#name` (an
    exemplar's `#waterfall`, a flip's `#side-by-side`): drawn while the URL says that name, it
    scrolls the page to itself, so a part far below the fold is seen opened, not left out of
    view. Drawn anew whenever its part is (a new page, a flip opened), it scrolls again then."""

    name_of_part = param.String(doc="the #name of links to this part")

    _esm = """
export function render({ model }) {
  const mark = document.createElement("span");
  if (window.location.hash === "#" + model.name_of_part) {
    requestAnimationFrame(() => mark.scrollIntoView({ block: "start" }));  // once laid out
  }
  return mark;
}
"""

    def __init__(self, name: str) -> None:
        super().__init__(
            name_of_part=name, height=0, margin=0, sizing_mode="stretch_width", css_classes=[f"sw-at-{name}"]
        )


class TablesDrawnOnce(pn.custom.JSComponent):
    """Never shown: the class carries tables_drawn_once.js (each table of a page drawn once, not
    three times, in the browser) into every page's head, where Panel puts the `__javascript__` of
    each custom component class (served by the dashboard itself, at /components/...). The script
    installs itself once the head's scripts, Panel's bundle among them, have run."""

    __javascript__ = ["tables_drawn_once.js"]  # beside this module


def fitted(widths: dict[str, int], wrapped: tuple[str, ...]) -> dict[str, Any]:
    """Options of a table that fits the page at 1,280 px (the sidebar beside it), in either theme:
    the columns of `widths` that wide, the others sharing what is left, and the headings and the
    `wrapped` columns' text wrapping (a long word, a path or a logger name broken anywhere) where
    it was cut at the column's edge. A value that cannot wrap holds its whole text on hover (a run
    link's title). A wrapped cell stops growing at WRAPPED_MAX_HEIGHT and scrolls within itself (a
    60,000-character log message made one row of the page 9,000 px tall)."""
    cells = ", ".join(f'.tabulator-cell[tabulator-field="{column}"]' for column in wrapped)
    # !important: Tabulator's own rule for every cell (nowrap, cut with an ellipsis) is as specific.
    wrap = "white-space: normal !important; overflow-wrap: anywhere"
    return {
        "layout": "fit_columns",
        "widths": widths,
        "stylesheets": [
            f".tabulator-col-title {{ {wrap} }}",
            f"{cells} {{ {wrap}; max-height: {WRAPPED_MAX_HEIGHT}; overflow-y: auto !important }}",
        ],
    }


WRAPPED_MAX_HEIGHT = "10.5em"  # seven lines of a wrapped cell; the rest scrolls within it


def chart(plot: Any, name: str) -> pn.Column:
    """A Bokeh figure or HoloViews element across the page, in a column marked `sw-chart-{name}`
    for the tests and benchmarks that wait for it (a Bokeh pane's own classes go to the figure,
    not to an element of the page)."""
    pane = pn.panel(plot, sizing_mode="stretch_width", name=name)
    return pn.Column(pane, sizing_mode="stretch_width", css_classes=[f"sw-chart-{name}"])


# A button group whose pressed buttons are filled and readable (with the default style a layer
# shown and one hidden looked alike; the outline style's pressed text stayed dark on dark blue).
BUTTON_GROUP: dict[str, Any] = {
    "button_type": "primary",
    "button_style": "outline",
    "stylesheets": [".bk-btn.bk-active{color:#fff !important}"],
}


def damage_alerts(damaged: list[str]) -> list[pn.pane.Alert]:
    """What a table shows above its rows when a damaged data file its query read was left out
    (`skipped_files`): that rows are missing, which file, and how to get them back. None when
    no file was left out."""
    if not damaged:
        return []
    files = ", ".join(f"`{path}`" for path in damaged)
    return [
        pn.pane.Alert(
            f"**Rows are missing:** the damaged data file{'s' if len(damaged) > 1 else ''} {files} could not be "
            "read, and what it held is not shown. The event log still holds those rows: stop the daemon and run "
            "`stagewatch rebuild` to write the tables again (`stagewatch doctor` lists every damaged file).",
            alert_type="warning",
            css_classes=["sw-damaged"],
        )
    ]


def filter_bar(*widgets: Any, width: int = 185) -> pn.FlexBox:
    """Filters side by side, wrapping on a narrow screen."""
    for widget in widgets:
        widget.param.update(width=width, sizing_mode=None, css_classes=[css_name(widget.name)])
    return pn.FlexBox(*widgets, flex_wrap="wrap", gap="4px 12px", sizing_mode="stretch_width")


# What a time filter takes, in the form and not as a date that is soon past.
SINCE_HINT = "7d, 24h, 30m or YYYY-MM-DD[Thh:mm]"
UNTIL_HINT = "YYYY-MM-DD[Thh:mm] or 1d (ago)"


class PagedQuery:
    """Filters above a table answered a page at a time on the server, with a pager: the shape
    of the Runs, Logs and Failures pages. A changed filter goes back to page 1; the filters,
    the page size and the page are in the URL.

    `query(offset, limit)` returns a `_data.Page` or raises ValueError / RunNotFound (said in
    words above the table); `display` turns its rows into what people read; `empty()` says
    what to do when nothing matches; `changed()` runs after each filter change. The pager
    turns to the previous and next page (of whichever sort: "newer" would be wrong for the
    slowest first); `table_options` go to the table (its layout, its wrapping columns).

    A damaged data file the query left out is said above the table (`damage_alerts`); `missing`
    keeps of those the files whose rows the table would have shown (all, by default)."""

    def __init__(
        self,
        name: str,
        noun: str,
        filters: dict[str, Any],
        query: Callable[[int, int], Any],
        display: Callable[[pd.DataFrame], pd.DataFrame],
        empty: Callable[[], str],
        html_columns: tuple[str, ...] = (),
        page_size: int = 25,
        turns: tuple[str, str] = ("◀ previous", "next ▶"),
        changed: Callable[[], None] | None = None,
        missing: Callable[[list[str]], list[str]] = list,
        **table_options: Any,
    ) -> None:
        self.noun, self.filters, self.query, self.display, self.empty = noun, filters, query, display, empty
        self.changed, self.missing = changed, missing
        self.size = pn.widgets.Select(name="Rows a page", options=list(_data.PAGE_SIZES), value=page_size)
        self.page = pn.widgets.IntInput(name="Page", value=1, start=1)
        self.previous, self.next = pn.widgets.Button(name=turns[0]), pn.widgets.Button(name=turns[1])
        self.count = pn.pane.Markdown("")
        self.message = pn.Column()
        self.table = table(pd.DataFrame(), name, html_columns=html_columns, **table_options)
        # The link's values first: restored before the watchers, they do not each redraw the
        # table (the page draws it once, `refresh`).
        self.url_problems = url_alert(sync_url({**filters, "size": self.size, "p": self.page}))
        for widget in [*filters.values(), self.size]:
            widget.param.watch(self._filters_changed, "value")
        self.page.param.watch(lambda _: self.refresh(), "value")
        self.previous.on_click(lambda _: self._turn(-1))
        self.next.on_click(lambda _: self._turn(1))

    def layout(self, shown: list[Any], *between: Any) -> pn.Column:
        """The filter widgets in `shown` order, anything `between` them and the table, the pager."""
        return pn.Column(
            self.url_problems,
            filter_bar(*shown, self.size),
            *between,
            self.message,
            pager(self.previous, self.page, self.next, self.count),
            self.table,
        )

    def refresh(self) -> None:
        limit = int(self.size.value)
        try:
            with skipped_files() as skipped:
                found = self.query((self.page.value - 1) * limit, limit)
        except (ValueError, _data.RunNotFound) as error:
            # The rows of the filters before would read as the answer to these: none are shown.
            self.message.objects = [pn.pane.Alert(str(error), alert_type="warning")]
            self.count.object = f"no {self.noun}: a filter above is not valid"
            self.table.value = self.table.value.iloc[0:0]
            return
        self.count.object = f"{self.noun} {found.label}"
        self.message.objects = [
            *damage_alerts(self.missing(skipped)),
            *([] if found.total else [pn.pane.Alert(self.empty(), alert_type="info")]),
        ]
        self.table.value = self.display(found.rows)

    def _filters_changed(self, _: Any) -> None:
        if self.page.value != 1:
            self.page.value = 1  # which refreshes
        else:
            self.refresh()
        if self.changed is not None:
            self.changed()

    def _turn(self, step: int) -> None:
        self.page.value = max(1, self.page.value + step)


def css_name(label: str) -> str:
    """`Failed stage` -> `sw-failed-stage`: a class to find a widget by in a browser (and in tests)."""
    return "sw-" + "-".join("".join(c if c.isalnum() else " " for c in label.lower()).split())


def pager(previous: Any, number: Any, following: Any, count: Any) -> pn.Row:
    for widget in (previous, following):
        widget.param.update(width=90, sizing_mode=None, align="end")
    number.param.update(width=90, sizing_mode=None)
    count.param.update(width=300, sizing_mode=None, align="end", css_classes=["sw-count"])
    return pn.Row(previous, number, following, count)


def choices(values: list[str], anything: str = "any") -> dict[str, str]:
    """A menu's options with "any" (the empty value: no filter) first."""
    return {anything: "", **{value: value for value in values}}


def banners(home: Homes) -> list[pn.pane.Alert]:
    """The daemon's state and disk warnings, in words (of each home's daemon)."""
    shown = []
    homes = homes_of(home)
    for one in homes:
        problem = _data.daemon_problem(one)
        if problem:
            shown.append(pn.pane.Alert(problem, alert_type="warning"))
        for partial in _data.tables_not_whole(one):  # being rebuilt or gone: partial rows meanwhile
            shown.append(pn.pane.Alert(partial[0].upper() + partial[1:] + ".", alert_type="warning"))
        disk = _data.disk_problems(one)
        if disk:
            whose = f" of {one}" if len(homes) > 1 else ""
            shown.append(pn.pane.Alert(f"**Disk{whose}:** " + "; ".join(disk), alert_type="warning"))
    return shown


def host_filter(home: Homes) -> pn.widgets.Select:
    """The host menu of a page (Runs, Performance, Logs, Failures), shown when the homes hold runs
    of more than one host (several hosts' homes read as one). A link's host is checked as every
    menu's value is: one the homes do not know is said to be ignored (`sync_url`), not taken."""
    hosts = _data.facets(home)["host"]
    return pn.widgets.Select(name="Host", options=choices(hosts), visible=len(hosts) > 1)


def failure(what: str, error: BaseException) -> pn.pane.Alert:
    """An error in words, never a stack trace."""
    return pn.pane.Alert(f"**{what}:** {type(error).__name__}: {str(error)[:500]}", alert_type="danger")


def sync_url(widgets: dict[str, Any]) -> list[str]:
    """The URL's query holds these widgets' values (parameter name -> widget): read once when
    the session starts, written on every change. One way each, so a late echo of the URL from
    the browser can never undo a choice just made. Returns the parameters it refused."""
    refused = []
    arguments = _router.session_arguments()
    scope = _router.current_scope()
    for parameter, widget in widgets.items():
        if parameter in arguments:
            text = arguments[parameter][0]
            if not _restore(widget, text):
                refused.append(f"{parameter}={text[:80]}")
        if scope is not None:
            widget.param.watch(lambda event, name=parameter: scope.write(name, _query_text(event.new)), "value")
    return refused


def url_alert(refused: list[str]) -> pn.pane.Alert:
    """Says which parts of the link were ignored (hidden when none were)."""
    text = f"Ignored from the link (not a value this page takes): {', '.join(refused)}" if refused else ""
    return pn.pane.Alert(text, alert_type="warning", visible=bool(refused))


def _restore(widget: Any, text: str) -> bool:
    """Set a widget from its URL text; False (and unchanged) if the text is not a value it takes."""
    if isinstance(widget, pn.widgets.Checkbox):
        value: Any = text.lower() in ("true", "1", "yes")
    elif isinstance(widget, pn.widgets.IntInput):
        if not text.isdigit() or len(text) > 9:
            return False
        value = int(text)
    elif isinstance(widget, pn.widgets.RangeSlider):
        value = _range(text, widget.start, widget.end)
        if value is None:
            return False
    elif isinstance(widget, pn.widgets.Select):
        options = widget.options.values() if isinstance(widget.options, dict) else widget.options
        value = next((option for option in options if str(option) == text), None)
        if value is None:
            return False
    else:
        value = text
    widget.value = value
    return True


def _range(text: str, start: float, end: float) -> tuple[float, float] | None:
    """'low,high' within [start, end], low <= high; None if it is not that."""
    try:
        low, high = (float(part) for part in text.split(","))
    except ValueError:
        return None
    return (low, high) if start <= low <= high <= end else None


def _query_text(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(f"{part:g}" for part in value)
    return "" if value is None else str(value)


def every(period_ms: int, callback: Callable[[], None]) -> None:
    """A periodic callback of the page being built, stopped when the session leaves the page
    (none outside a server, as in tests)."""
    scope = _router.current_scope()
    if scope is not None:
        scope.every(period_ms, callback)


_PENDING: weakref.WeakKeyDictionary[pn.Column, object] = weakref.WeakKeyDictionary()


def soon(callback: Callable[[], None]) -> None:
    """`callback` on the next tick, after what the page drew so far (see fill_soon); at once
    outside a server."""
    scope = _router.current_scope()
    if scope is None:
        callback()
    else:
        scope.soon(callback)


def fill_soon(column: pn.Column, rest: Callable[[], list[Any]], now: list[Any] | None = None) -> None:
    """`column` shows `now` at once and `rest()` below it on the next tick, once `now` has gone to
    the browser: a page's table is drawn before its charts are built, sent and laid out (the
    charts cost most of a switch). A later fill, or anything else put into the column, wins
    over a fill still pending.
    Outside a server (as in tests) all at once."""
    now = list(now or [])
    scope = _router.current_scope()
    if scope is None:
        column.objects = [*now, *rest()]
        return
    column.objects = now
    token = _PENDING[column] = object()

    def draw_rest() -> None:
        unchanged = len(column.objects) == len(now) and all(map(operator.is_, column.objects, now))
        if _PENDING.get(column) is not token or not unchanged:
            return  # filled again, or set to something else (a message) meanwhile
        try:
            column.objects = [*now, *rest()]
        except Exception as error:  # the table above stays; the rest says why it is missing
            _log.exception("a page's lower part failed")
            column.objects = [*now, pn.pane.Alert(f"This part could not be drawn: {error}", alert_type="danger")]

    scope.soon(draw_rest)


def show_now(column: pn.Column, objects: list[Any]) -> None:
    """`objects` into `column` at once, a fill still pending there dropped."""
    _PENDING.pop(column, None)
    column.objects = objects


def table_first(column: pn.Column, parts: list[Any]) -> None:
    """`parts` into `column`: up to and including the first table now, what follows on the next tick."""
    first = next((i + 1 for i, part in enumerate(parts) if isinstance(part, pn.widgets.Tabulator)), len(parts))
    fill_soon(column, lambda: parts[first:], parts[:first])


def refill(column: pn.Column, parts: list[Any]) -> None:
    """`parts` into `column` (the table first, as `table_first`), unless the column shows parts of
    the same kinds already: then each takes the new one's value in place, and the browser patches
    its tables' rows instead of building every table and chart again (a page redrawn each second
    while a run streams)."""
    shown = list(column.objects)
    if len(shown) != len(parts) or not all(map(_same_kind, shown, parts)):
        table_first(column, parts)
        return
    for old, new in zip(shown, parts, strict=True):
        if isinstance(old, pn.widgets.Tabulator):
            old.value = new.value
        elif old.object != new.object:
            old.object = new.object


def _same_kind(old: Any, new: Any) -> bool:
    if type(old) is not type(new):
        return False
    if isinstance(old, pn.widgets.Tabulator):
        return old.name == new.name
    if isinstance(old, pn.pane.Alert):
        return old.alert_type == new.alert_type
    return isinstance(old, pn.pane.Markdown | pn.pane.HTML)


def on_leave(cleanup: Callable[[], None]) -> None:
    """Run `cleanup` when the session leaves the page being built (another page, or the tab closed)."""
    scope = _router.current_scope()
    if scope is not None:
        scope.cleanups.append(cleanup)


def tap_opens(url: str) -> CustomJS:
    """A chart's tap that opens a page of the dashboard in place, as a link does: `url` names the
    tapped point's columns as `@column` (Bokeh's OpenURL, which would reload the whole page)."""
    return CustomJS(
        args={"url": _router.link(url)},
        code="""
const source = cb_data.source;
const index = source.selected.indices[0];
if (index === undefined) return;
const href = url.replace(/@(\\w+)/g, (_, column) => encodeURIComponent(String(source.data[column][index])));
if (window.stagewatch) window.stagewatch.navigate(href); else window.location.href = href;
""",
    )
