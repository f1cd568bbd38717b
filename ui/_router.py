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
"""

from __future__ import annotations

import html
import logging
import urllib.parse
import weakref
from collections.abc import Callable
from functools import partial
from typing import Any

import panel as pn
import param
from bokeh.document import Document
from panel.io.callbacks import PeriodicCallback
from panel.io.state import set_curdoc

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

    def every(self, period_ms: int, callback: Callable[[], None]) -> None:
        # Not pn.state.add_periodic_callback: its session list keeps every callback (and through
        # it the page) until the session ends, stopped or not. `background`: a tick does not mark
        # the server busy; Panel's busy state is the server's, so each tick of each open page set
        # the busy indicator of every session twice (a patch to every browser): open pages cost
        # each other, growing with their square.
        periodic = PeriodicCallback(callback=partial(self._while_shown, callback), period=period_ms, background=True)
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
            self._while_shown(callback)

    def _while_shown(self, callback: Callable[[], None]) -> None:
        if self.active:
            callback()

    def write(self, parameter: str, value: str) -> None:
        """Put one parameter into the URL (the current history entry), if this page is still shown."""
        if self.active and not self.building and self.router is not None:
            self.router.write_query(parameter, value)

    def close(self, session_ended: bool = False) -> None:
        self.active = False
        for periodic in self.callbacks:
            periodic.stop()
            # A stopped callback's timer stays in the event loop until it was due (asyncio drops
            # cancelled timers late): without its callback it no longer holds the page left.
            periodic.callback = _nothing
        document = pn.state.curdoc
        if self.callbacks and not session_ended and document is not None and document.session_context is not None:
            # A start that Panel deferred to the next tick (the document was busy) would run after
            # this stop: stop them once more after it.
            document.add_next_tick_callback(partial(_stop_all, list(self.callbacks)))
        self.callbacks.clear()
        for cleanup in self.cleanups:
            try:
                cleanup()
            except Exception:  # one page's failing cleanup must not keep the next page from showing
                _log.exception("a page's cleanup failed")
        self.cleanups.clear()


def _nothing() -> None:
    pass


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


Build = Callable[[Arguments], tuple[str, list[Any]]]  # a query -> (the page's title, the main area's content)


class Router:
    """One a session: builds the page a query names into `main`, again at each navigation."""

    def __init__(self, build: Build) -> None:
        self.build = build
        self.main = pn.Column(sizing_mode="stretch_width", css_classes=["sw-main"])
        self.navigator = Navigator(self.navigate)
        self.document = pn.state.curdoc if pn.state.curdoc is not None else None
        self.sequence = 0
        self.arguments: Arguments = {}
        self.kept: Arguments = {}  # the document's parameters (the theme), set by the first page
        self.scope: PageScope | None = None
        self.builds = 0  # pages built in this session: one at the start, one a navigation (tests read it)
        if self.document is not None and self.document.session_context is not None:
            self.document.on_session_destroyed(self._leave)

    def _leave(self, _: Any) -> None:
        if self.scope is not None:
            self.scope.close(session_ended=True)
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
        if self.scope is not None:
            self.scope.close()
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
        self.main.objects = content
        self.navigator.title = title
