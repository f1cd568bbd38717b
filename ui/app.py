"""The stagewatch dashboard, served by `panel serve` (`stagewatch ui` starts it on 127.0.0.1).

    STAGEWATCH_HOME=output panel serve "$(python -c 'import stagewatch.ui.app as m; print(m.__file__)')" \\
        --address 127.0.0.1 --port 5006

One FastListTemplate (Panel's own: no extra dependency, a sidebar for the navigation, fast to
load), one module per page under ui/pages, data access in ui/_data and ui/_trends. The page
and its filters are in the URL (`?page=runs&status=failed&failed_stage=detection&since=7d`),
so any view can be pasted into a ticket. Read-only: nothing here writes to the home.
"""

from __future__ import annotations

from pathlib import Path

import holoviews as hv
import panel as pn
from panel.theme import Fast
from panel.viewable import Viewable

from stagewatch._home import Home
from stagewatch.ui import _widgets
from stagewatch.ui.pages import accuracy, case, failures, live, logs, performance, run, runs

pn.extension("tabulator", sizing_mode="stretch_width", notifications=False)
hv.extension("bokeh")

VIEWS = {
    "live": live.view,
    "runs": runs.view,
    "run": run.view,
    "performance": performance.view,
    "logs": logs.view,
    "accuracy": accuracy.view,
    "failures": failures.view,
    "case": case.view,
}


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


def configured_home() -> Path:
    return Home.resolve().root


def page_name() -> str:
    """?page=…; a bare ?run=… or ?artifact=… link (older links, the demo's) opens the run page."""
    arguments = pn.state.session_args if pn.state.curdoc is not None else {}
    asked = (arguments.get("page") or [b""])[0].decode(errors="replace")
    if asked in VIEWS:
        return asked
    return "run" if "run" in arguments or "artifact" in arguments else "runs"


def page() -> pn.template.FastListTemplate:
    home = configured_home()
    name = page_name()
    try:
        content = VIEWS[name](home)
    except Exception as error:  # a page that cannot be built says why; the others still work
        content = _widgets.failure(f"The {name} page could not be shown", error)
    return pn.template.FastListTemplate(
        title=f"stagewatch · {_widgets.PAGES[name]}",
        sidebar=[_widgets.navigation(name), pn.pane.Markdown(f"home: `{home}`", styles={"font-size": "12px"})],
        main=[pn.Column(*_widgets.banners(home), content, sizing_mode="stretch_width")],
        sidebar_width=200,
        design=OfflineFast,
        font_url="",
        font="system-ui, -apple-system, Segoe UI, Roboto, sans-serif",
        header_background="#1f3a5f",
        accent_base_color="#1f3a5f",
    )


if __name__.startswith("bokeh_app"):  # run by `panel serve`
    page().servable(title="stagewatch")
