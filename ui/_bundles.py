"""The scripts a page of the dashboard loads once, in its head: those its pages use, and not
Bokeh's MathJax and WebGL bundles, the largest of them (docs/benchmarks.md, "The first load").

Panel's server page (panel.io.server.server_html_page_for_session) asks for Bokeh's MathJax
bundle whenever the first page holds any Markdown or HTML pane
(panel.io.resources._panel_use_mathjax), and for the WebGL one always (Bokeh's own check of a
plot's `output_backend`, which would leave it out, is not made on that path). No page of the
dashboard uses either: it renders no TeX (a `$` in a run's error, a path or a log line is text,
and without the bundle Panel's panes show it as such) and its charts draw on a canvas (the 3D
cloud views use WebGL of their own, not Bokeh's). The decision is the dashboard's, not the first
page's: the document is loaded once and every page after it is switched in place, so a bundle
its head lacks is never loaded later anyway. No setting of `panel serve` reaches the bundle's
components, hence the one call wrapped here."""

from __future__ import annotations

from typing import Any

import panel.io.server as panel_server
from panel.io.resources import Bundle, bundle_resources

UNUSED = ("bokeh-mathjax", "bokeh-gl")  # Bokeh's names of the bundles' components


def used_bundles(roots: Any, resources: Any, *args: Any, **kwargs: Any) -> Bundle:
    """`bundle_resources` (Panel's) of the components of `resources` the dashboard uses."""
    kept = [component for component in resources.components if component not in UNUSED]
    return bundle_resources(roots, resources.clone(components=kept), *args, **kwargs)


def load_only_used() -> None:
    """Every page this process serves from now on loads only the bundles the dashboard uses."""
    panel_server.bundle_resources = used_bundles
