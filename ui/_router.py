"""One browser session, pages switched in place.

The document (Bokeh, Panel, Tabulator and the template) loads once. After that a click on a
link of the dashboard (`?page=…`, in the sidebar, a table, a markdown pane or a chart's tap)
and the browser's back/forward reach the server as a navigation message, and the `Router`
swaps the content of the template's main area. The URL still says where you are: a link
click pushes a history entry, a filter change replaces the current one, so a pasted link
opens the same view and back/forward step through the pages seen.

Each page is built inside a `PageScope`: what it starts (periodic callbacks, cleanups) is
stopped when the session leaves it, so a session that switched pages 200 times runs the
callbacks of one page, not of 200.

A session keeps the pages it has seen, one per page name (`Router.slot_of`), in a `PageDeck`:
the browser keeps their views and shows one at a time, the others detached from the document
(so nothing of a hidden page is found in the page, clicked or laid out). Opening a kept page
again with the same query shows it again (its periodic callbacks resume, each run once at
once) instead of building it: building the page's widgets and models on the server and their
views in the browser is most of what a switch costs. A kept page is built again when the home's
data moved since it was built (`Router.freshness`), when it is older than `KEPT_FRESH_S`, or
when the query differs.
"""

from __future__ import annotations

import html
import logging
import time
import urllib.parse
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import panel as pn
import param
from bokeh.document import Document
from panel.io.callbacks import PeriodicCallback
from panel.io.state import set_curdoc
from panel.viewable import Children

_log = logging.getLogger(__name__)

Arguments = dict[str, list[str]]  # the URL's query as parse_qs gives it


class PageScope:
    """What one page of one session started, and the URL's query it was opened with."""

    def __init__(self, router: Router | None, arguments: Arguments) -> None:
        self.router = router
        self.arguments = arguments
        self.building = True  # widgets restored from the URL while building do not write it back
        self.active = True
        self.callbacks: list[Any] = []
        self.cleanups: list[Callable[[], None]] = []
        self.missed: list[Callable[[], None]] = []  # `soon` work that came while the page was hidden
        self.closed = False

    def every(self, period_ms: int, callback: Callable[[], None]) -> None:
        # Not pn.state.add_periodic_callback: its session list keeps every callback (and through
        # it the page) until the session ends, stopped or not.
        periodic = PeriodicCallback(callback=partial(self._while_shown, callback), period=period_ms)
        self.callbacks.append(periodic)
        periodic.start()

    def soon(self, callback: Callable[[], None]) -> None:
        """Run `callback` on the next tick, once what the page changed so far has gone to the
        browser, unless the session has left the page by then."""
        document = self.router.document if self.router is not None else None
        if document is None:
            callback()
            return
        document.add_next_tick_callback(partial(self._soon, document, callback))

    def _soon(self, document: Document, callback: Callable[[], None]) -> None:
        with set_curdoc(document):
            if self.active:
                callback()
            elif not self.closed:
                self.missed.append(callback)  # the page was left before its charts came: drawn when shown again

    def pause(self) -> None:
        """The session shows another page and keeps this one: its periodic callbacks stop until `resume`."""
        self.active = False
        _stop_all(self.callbacks)
        self._stop_again_next_tick()

    def resume(self) -> None:
        """This kept page is shown again: each periodic callback runs once now (what it would have
        redrawn meanwhile), then on its period again; work left undone while hidden is done."""
        self.active = True
        for periodic in self.callbacks:
            periodic.start()
        for periodic in self.callbacks:
            periodic.callback()
        missed, self.missed = self.missed, []
        for callback in missed:
            self.soon(callback)

    def _while_shown(self, callback: Callable[[], None]) -> None:
        if self.active:
            callback()

    def write(self, parameter: str, value: str) -> None:
        """Put one parameter into the URL (the current history entry), if this page is still shown."""
        if self.active and not self.building and self.router is not None:
            self.router.write_query(parameter, value)

    def close(self, session_ended: bool = False) -> None:
        self.active = False
        self.closed = True
        self.missed.clear()
        _stop_all(self.callbacks)
        if not session_ended:
            self._stop_again_next_tick()
        self.callbacks.clear()
        for cleanup in self.cleanups:
            try:
                cleanup()
            except Exception:  # one page's failing cleanup must not keep the next page from showing
                _log.exception("a page's cleanup failed")
        self.cleanups.clear()

    def _stop_again_next_tick(self) -> None:
        # A start that Panel deferred to the next tick (the document was busy) would run after
        # this stop: stop them once more after it, unless the page is shown again by then.
        document = pn.state.curdoc
        if self.callbacks and document is not None and document.session_context is not None:
            document.add_next_tick_callback(partial(self._stop_if_hidden, list(self.callbacks)))

    def _stop_if_hidden(self, callbacks: list[PeriodicCallback]) -> None:
        if not self.active:
            _stop_all(callbacks)


def _stop_all(callbacks: list[PeriodicCallback]) -> None:
    for periodic in callbacks:
        periodic.stop()


_SCOPES: weakref.WeakKeyDictionary[Document, PageScope] = weakref.WeakKeyDictionary()


def current_scope() -> PageScope | None:
    """The scope of the page this session shows (None outside a server session, as in tests)."""
    document = pn.state.curdoc
    if document is None or document.session_context is None:
        return None
    return _SCOPES.get(document)


def session_arguments() -> Arguments:
    """The query of the page being built or shown: the navigation's, else the session's first URL."""
    scope = current_scope()
    if scope is not None:
        return scope.arguments
    if pn.state.curdoc is None:
        return {}
    return {key: [value.decode(errors="replace") for value in values] for key, values in pn.state.session_args.items()}


# Parameters of the document, not of a page: the template is drawn once with them (the theme),
# so they hold for every page the session shows, and every link and URL the dashboard makes
# carries them (a link pasted elsewhere opens in the same theme). No other parameter of a page
# goes to the next.
DOCUMENT_PARAMETERS = {"theme": "default"}  # each with its default value, which a link need not say


def document_arguments(arguments: Arguments) -> Arguments:
    """The document's own parameters among a URL's query (the theme it was drawn in), those that
    differ from their default."""
    return {
        key: arguments[key][:1]
        for key, default in DOCUMENT_PARAMETERS.items()
        if arguments.get(key) and arguments[key][0] != default
    }


def link(query: str) -> str:
    """A link of the dashboard (`?page=…`) as this session writes it: with the parameters its
    document was drawn with (`&theme=dark`). Outside a session (tests, the CLI) unchanged."""
    scope = current_scope()
    kept = scope.router.kept if scope is not None and scope.router is not None else {}
    missing = [(key, values[0]) for key, values in kept.items() if key not in parse_query(query)]
    if not missing:
        return query
    joiner = "&" if query.lstrip("?") else ""
    return "?" + query.lstrip("?") + joiner + urllib.parse.urlencode(missing)


def href(query: str) -> str:
    """`link(query)` as an HTML attribute's value (escaped): what a page's `<a href="…">` holds."""
    return html.escape(link(query), quote=True)


def parse_query(search: str) -> Arguments:
    return urllib.parse.parse_qs(search.lstrip("?"), keep_blank_values=True)


def encode_query(arguments: Arguments) -> str:
    return "?" + urllib.parse.urlencode([(key, value) for key, values in arguments.items() for value in values])


class Navigator(pn.custom.JSComponent):
    """The browser half of the router: turns clicks on the dashboard's own links and back/forward
    into messages to the server, and applies the server's URL updates to the history.

    A click is taken over only while the session is connected, and when it would have opened
    this page of this server in the same tab: a plain left click (Ctrl, Shift, Alt, Meta or the
    middle button still open a new tab or window), on a link without `target` or `download`, to
    the same origin and path. Each navigation carries a number, and the server's URL updates
    name the navigation they belong to: an update of a page already left never lands in the
    next page's history entry. One navigation is built at a time: those that come while the
    server builds one fold into the newest, sent when the server says it has built the last."""

    _esm = """
export function render({ model, view }) {
  let sequence = 0;
  let connected = true;  // without the server (it stopped, the session expired) links load whole pages
  view.model.document.on_event("connection_lost", () => { connected = false; });
  // One navigation at a time on the server: clicks that come while it builds a page are folded
  // into the newest, sent once it says "built" (twenty fast clicks built twenty pages, one
  // after another, and a tab closed meanwhile left them queued for a session that was gone).
  // A "built" that never comes (a lost message) holds the next one back BUILT_WAIT_MS at most.
  const BUILT_WAIT_MS = 5000;
  let sentAt = null;
  let waiting = false;
  const send = () => {
    waiting = false;
    sentAt = Date.now();
    model.send_msg({ search: window.location.search, sequence });
  };
  const navigate = (href, push) => {
    const target = new URL(href, window.location.href);
    if (!connected) {
      if (push) window.location.href = target.href;
      else window.location.reload();
      return;
    }
    if (push && target.href !== window.location.href) {
      window.history.pushState({ stagewatch: true }, "", target.href);
    }
    sequence += 1;
    if (sentAt !== null && Date.now() - sentAt < BUILT_WAIT_MS) waiting = true;
    else send();
    if (push) window.scrollTo(0, 0);
  };
  const ours = (link) => {
    if (link.target && link.target !== "_self") return false;
    if (link.hasAttribute("download")) return false;
    if (link.origin !== window.location.origin || link.pathname !== window.location.pathname) return false;
    return !(link.hash && link.search === window.location.search);  // an anchor within this page
  };
  const onClick = (event) => {
    if (event.defaultPrevented || event.button !== 0) return;
    if (event.ctrlKey || event.metaKey || event.shiftKey || event.altKey) return;
    // Panel draws inside shadow roots: the composed path reaches the link the click is in.
    const link = event.composedPath().find((node) => node instanceof HTMLAnchorElement && node.href);
    if (!link || !ours(link) || !connected) return;
    event.preventDefault();
    navigate(link.href, true);
  };
  const onPopState = () => navigate(window.location.href, false);
  document.addEventListener("click", onClick);
  window.addEventListener("popstate", onPopState);
  window.stagewatch = { navigate: (href) => navigate(href, true), connected: () => connected };
  model.on("msg:custom", (message) => {
    if (message.built !== undefined) {
      sentAt = null;
      if (waiting) send();
      return;
    }
    if (message.sequence !== sequence) return;  // about a page the browser has left
    if (message.replace !== undefined && message.replace !== window.location.search) {
      const url = window.location.pathname + message.replace + window.location.hash;
      window.history.replaceState(window.history.state, "", url);
    }
  });
  const showTitle = () => {
    if (model.title) document.title = model.title;
  };
  showTitle();
  model.on("title", showTitle);
  model.on("remove", () => {
    document.removeEventListener("click", onClick);
    window.removeEventListener("popstate", onPopState);
  });
  const element = document.createElement("span");
  element.className = "sw-navigator";
  return element;
}
"""

    title = param.String(default="", doc="the browser tab's title: the page shown")

    def __init__(self, on_navigate: Callable[[str, int], None], **params: Any) -> None:
        super().__init__(height=0, margin=0, sizing_mode="fixed", width=0, **params)
        self._on_navigate = on_navigate

    def _handle_msg(self, data: Any) -> None:
        if not isinstance(data, dict) or not isinstance(data.get("search"), str):
            return
        sequence = data.get("sequence") if isinstance(data.get("sequence"), int) else 0
        try:
            self._on_navigate(data["search"], sequence)
        finally:
            self._send_msg({"built": sequence})  # the browser's next navigation may come

    def replace(self, sequence: int, search: str) -> None:
        """The current history entry's query becomes `search`, unless the browser has left navigation `sequence`."""
        self._send_msg({"sequence": sequence, "replace": search})


class PageDeck(pn.custom.JSComponent):
    """The main area: the session's kept pages, one shown. The browser builds each page's views
    once and keeps them; the pages not shown are detached from the document (not hidden in it),
    so they cost no layout and nothing of them is found or clicked in the page.

    Which page is shown goes to the browser as a message (`show`), not as a parameter: Panel
    walks every model of a component with children at each change of any of its parameters,
    which grew a switch with every page kept. `shown` is sent with `objects` only (a page added
    or replaced), for the browser's first render of them."""

    objects = Children(doc="the kept pages, each a Column")
    shown = param.Integer(default=-1, doc="the index in `objects` of the page shown when they last changed")

    _esm = """
export function render({ model, el, view }) {
  const show = () => {
    const page = model.get_child("objects")[view.swShown ?? model.shown];
    if (!page) {
      el.replaceChildren();  // its view is still being built: shown once it is (a new render)
      return;
    }
    // A page attached again re-inserts the <link> stylesheets of its every view, each of which
    // fires "load" again, and Panel redrew each table once per load (a storm of full table
    // redraws): those views have their stylesheets already, so they stop listening for them.
    const pageView = view.child_views.find((child) => child.el === page);
    if (pageView && view.swDrawn?.has(page)) {
      const quiet = (one) => {
        one._stylesheets_watcher?.abort();
        one._stylesheets_watcher = null;
        for (const child of one.child_views ?? []) quiet(child);
      };
      quiet(pageView);
    }
    el.replaceChildren(page);
    view.swDrawn = view.swDrawn ?? new WeakSet();
    if (!view.swDrawn.has(page)) {
      view.swDrawn.add(page);
      view.render_children();  // a page attached for the first time is drawn now (once: it walks every page)
    }
  };
  show();
  model.on("msg:custom", (message) => {
    view.swShown = message.shown;
    show();
  });
}
"""

    def __init__(self, **params: Any) -> None:
        super().__init__(sizing_mode="stretch_width", css_classes=["sw-main"], **params)

    def show(self, pages: list[pn.Column], index: int) -> None:
        """`pages` kept (the browser builds the new ones), `pages[index]` shown."""
        if len(pages) != len(self.objects) or not all(map(_is, pages, self.objects)):
            self.param.update(objects=pages, shown=index)
        self._send_msg({"shown": index})


Build = Callable[[Arguments], tuple[str, list[Any]]]  # a query -> (the page's title, the main area's content)
Revisit = Callable[[Arguments, list[Any]], str]  # a kept page shown again -> its title (the frame redrawn)

KEPT_FRESH_S = 600.0  # a kept page older than this is built again (its relative times, "5 min ago")


@dataclass
class KeptPage:
    """A page the session has built: shown again while its query and the home's data are the same."""

    scope: PageScope
    content: pn.Column
    title: str
    freshness: Any
    built_at: float


def _same_query(one: Arguments, other: Arguments) -> bool:
    return sorted(one.items()) == sorted(other.items())


class Router:
    """One a session: shows the page a query names in `main`, built, or kept from before."""

    def __init__(
        self,
        build: Build,
        slot_of: Callable[[Arguments], str | None] = lambda _: None,
        revisit: Revisit | None = None,
        freshness: Callable[[], Any] = lambda: None,
    ) -> None:
        self.build = build
        self.slot_of = slot_of  # the name a page is kept under (one a name), None: not kept
        self.revisit = revisit
        self.freshness = freshness  # changes when the home's data moved: kept pages are built again
        self.main = PageDeck()
        self.pages: dict[str | None, KeptPage] = {}  # None: the page shown, not kept once left
        self.navigator = Navigator(self.navigate)
        self.document = pn.state.curdoc if pn.state.curdoc is not None else None
        self.sequence = 0
        self.arguments: Arguments = {}
        self.kept: Arguments = {}  # the document's parameters (the theme), set by the first page
        self.scope: PageScope | None = None
        self.builds = 0  # pages built in this session (tests read it)
        self.shows = 0  # pages shown: one at the start, one a navigation
        if self.document is not None and self.document.session_context is not None:
            self.document.on_session_destroyed(self._leave)

    def _leave(self, _: Any) -> None:
        for page in self.pages.values():
            page.scope.close(session_ended=True)
        self.pages.clear()
        # The scope holds this router, which holds the document: left in the map, its weak key
        # would never die, and every closed session's pages would stay in the server's memory.
        _SCOPES.pop(self.document, None)

    def start(self, arguments: Arguments) -> None:
        """The session's first page, from the URL it was opened with."""
        self.kept = document_arguments(arguments)
        self._show(arguments)

    def navigate(self, search: str, sequence: int) -> None:
        """A navigation from the browser: a link click, back or forward."""
        if sequence < self.sequence:
            return  # an older navigation arriving after a newer one
        self.sequence = sequence
        arguments = {**parse_query(search), **self.kept}  # the document's theme, whatever the link said
        with set_curdoc(self.document):
            self._show(arguments)
        if encode_query(arguments) != encode_query(parse_query(search)):
            # A link that lacked them (a chart's tap, a link of user text): the address bar gets them.
            self.navigator.replace(sequence, encode_query(self.arguments))

    def write_query(self, parameter: str, value: str) -> None:
        self.arguments[parameter] = [value]
        self.navigator.replace(self.sequence, encode_query(self.arguments))

    def _show(self, arguments: Arguments) -> None:
        self.shows += 1
        self._leave_shown()
        slot = self.slot_of(arguments)
        freshness = self.freshness()
        kept = self.pages.get(slot) if slot is not None else None
        if kept is not None and self._still_good(kept, arguments, freshness):
            self._enter(kept)
            title = self.revisit(kept.scope.arguments, kept.content.objects) if self.revisit else kept.title
        else:
            if kept is not None:
                kept.scope.close()
            kept = self.pages[slot] = self._built(arguments, freshness)
            title = kept.title
        self._display(kept)
        self.navigator.title = title

    def _still_good(self, kept: KeptPage, arguments: Arguments, freshness: Any) -> bool:
        return (
            _same_query(kept.scope.arguments, arguments)
            and kept.freshness == freshness
            and time.monotonic() - kept.built_at < KEPT_FRESH_S
        )

    def _leave_shown(self) -> None:
        """The page shown is left: kept (paused), or closed if it is not kept."""
        if self.scope is None:
            return
        transient = self.pages.get(None)
        if transient is not None and transient.scope is self.scope:
            del self.pages[None]
            self.scope.close()
        else:
            self.scope.pause()

    def _enter(self, page: KeptPage) -> None:
        self.arguments = page.scope.arguments
        self.scope = page.scope
        if self.document is not None:
            _SCOPES[self.document] = page.scope
        page.scope.resume()

    def _built(self, arguments: Arguments, freshness: Any) -> KeptPage:
        self.arguments = dict(arguments)
        scope = PageScope(self, self.arguments)
        self.scope = scope
        if self.document is not None:
            _SCOPES[self.document] = scope
        self.builds += 1
        try:
            title, content = self.build(arguments)
        finally:
            scope.building = False
        return KeptPage(scope, pn.Column(*content, sizing_mode="stretch_width"), title, freshness, time.monotonic())

    def _display(self, page: KeptPage) -> None:
        """The deck holds the kept pages (a page dropped or replaced leaves it) and shows `page`."""
        contents = [kept.content for kept in self.pages.values()]
        self.main.show(contents, contents.index(page.content))


def _is(one: Any, other: Any) -> bool:
    return one is other
