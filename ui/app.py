"""The stagewatch dashboard, served by `panel serve` (`stagewatch ui` starts it on 127.0.0.1).

    STAGEWATCH_HOME=output panel serve "$(python -c 'import stagewatch.ui.app as m; print(m.__file__)')" \\
        --address 127.0.0.1 --port 5006

One FastListTemplate (Panel's own: no extra dependency, a sidebar for the navigation, fast to
load), one module per page under ui/pages, data access in ui/_data and ui/_trends. The page
and its filters are in the URL (`?page=runs&status=failed&failed_stage=detection&since=7d`),
so any view can be pasted into a ticket. Read-only: nothing here writes to the home.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import holoviews as hv
import panel as pn
from panel.theme import THEMES, Fast
from panel.viewable import Viewable

from stagewatch.daemon.query._sql import Homes, homes_of
from stagewatch.ui import _bundles, _router, _widgets
from stagewatch.ui._serve import configured_homes
from stagewatch.ui.pages import accuracy, case, compare, failures, live, logs, performance, run, runs

pn.extension("tabulator", sizing_mode="stretch_width", notifications=False)
_bundles.load_only_used()
hv.extension("bokeh")


@dataclass(frozen=True)
class Route:
    """A page: its title, the function that builds it for a home, and whether the sidebar links it."""

    title: str
    view: Callable[[Homes], pn.viewable.Viewable]
    in_sidebar: bool = True


# The routing table: a page is one line here (and its module under ui/pages). `?page=<key>`
# opens it, in place after the first load; the sidebar lists those with in_sidebar, in this order.
ROUTES = {
    "live": Route("Live", live.view),
    "runs": Route("Runs", runs.view),
    "performance": Route("Performance", performance.view),
    "logs": Route("Logs", logs.view),
    "accuracy": Route("Accuracy", accuracy.view),
    "failures": Route("Failures", failures.view),
    "run": Route("Run", run.view, in_sidebar=False),  # opened from links
    "case": Route("Case", case.view, in_sidebar=False),
    "compare": Route("Compare", compare.view, in_sidebar=False),
}
SIDEBAR = {name: route.title for name, route in ROUTES.items() if route.in_sidebar}


class OfflineFast(Fast):
    """Panel's Fast design without the web font it links on every page (fonts.googleapis.com):
    an offline machine would wait on it, and nothing of the dashboard may leave the machine.
    The template's `font` names system fonts instead."""

    _resources = {**Fast._resources, "font": {}}
    # Links: the accent's foreground shade (which the design computes against the theme's
    # background) mixed with the theme's text colour, so they read on every row of either theme:
    # the fill shade Fast gives links is navy on the dark theme's near-black. Every component's
    # shadow root takes the rule, as it takes the design's own sheet.
    modifiers = {
        **Fast.modifiers,
        Viewable: {
            "stylesheets": [
                *Fast.modifiers[Viewable]["stylesheets"],
                "a, .tabulator .tabulator-cell a {"
                " color: color-mix(in srgb, var(--accent-foreground-rest) 60%, var(--neutral-foreground-rest)); }",
            ]
        },
    }


# Panel finds a design's bundled files under its class's name ("fast/js/fast_design.js"): under
# another name the page would load none of them.
OfflineFast.__name__ = Fast.__name__


def page_name(arguments: _router.Arguments) -> str:
    """?page=…; a bare ?run=… or ?artifact=… link (older links, the demo's) opens the run page."""
    asked = (arguments.get("page") or [""])[0]
    if asked in ROUTES:
        return asked
    return "run" if "run" in arguments or "artifact" in arguments else "runs"


def builder(home: Homes, sidebar: pn.pane.HTML) -> _router.Build:
    """What the router calls for each page a session opens: the page's title and main content."""

    def build(arguments: _router.Arguments) -> tuple[str, list[Any]]:
        name = page_name(arguments)
        try:
            content = [*_widgets.banners(home), ROUTES[name].view(home)]
        except Exception as error:  # a page that cannot be built says why; the others still work
            content = [_widgets.failure(f"The {name} page could not be shown", error)]
        sidebar.object = _widgets.navigation(name, SIDEBAR)
        return f"stagewatch · {ROUTES[name].title}", content

    return build


def homes_note(home: Homes) -> str:
    """The sidebar's footnote: the home read, or each of the homes read as one."""
    homes = homes_of(home)
    if len(homes) == 1:
        return f"home: `{homes[0]}`"
    return f"{len(homes)} homes, read as one: " + ", ".join(f"`{one}`" for one in homes)


def known_theme() -> None:
    """The URL's `theme=` as the template can take it: 'light' (the word people guess) and any
    other name Panel lacks are its default theme (the template failed on them: a blank page)."""
    arguments = pn.state.session_args
    asked = (arguments.get("theme") or [b""])[0].decode("utf-8", "replace").strip("'\"")
    if asked and asked not in THEMES:
        arguments["theme"] = [b"default"]


def page() -> pn.template.FastListTemplate:
    """A session's template around its router, showing the page its URL names."""
    known_theme()
    home = configured_homes()  # one, or several read as one (`stagewatch ui --home a --home b`)
    sidebar = pn.pane.HTML(sizing_mode="stretch_width", css_classes=["sw-sidebar"])
    router = _router.Router(builder(home, sidebar))
    router.start(_router.session_arguments())
    template = pn.template.FastListTemplate(
        title="stagewatch",
        sidebar=[router.navigator, sidebar, pn.pane.Markdown(homes_note(home), styles={"font-size": "12px"})],
        main=[router.main],
        sidebar_width=200,
        design=OfflineFast,
        font_url="",
        font="system-ui, -apple-system, Segoe UI, Roboto, sans-serif",
        header_background="#1f3a5f",
        accent_base_color="#1f3a5f",
    )
    return template


if __name__.startswith("bokeh_app"):  # run by `panel serve`
    page().servable(title="stagewatch")
