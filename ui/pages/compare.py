"""Compare: a run against another run or a baseline of runs (`stagewatch compare`'s numbers,
daemon/compare/_compare): the per-stage table with the rows that changed flagged, the shifts of the
history when the baseline is one, the flip list (each flip opens both cases side by side, as
the Case page draws them, their clouds under one camera), accuracy, and the config and
environment diffs. What the figures cannot say (a run not ended, two pipelines) comes first.

    ?page=compare&a=<run, last:N or 7d>&b=<run>[&threshold=0.05][&flip=<stage>/<sample>]
"""

from __future__ import annotations

import html
import secrets
from pathlib import Path
from typing import Any
from urllib.parse import quote

import panel as pn

from stagewatch.daemon.compare._compare import (
    MIN_TIME_MS,
    CompareError,
    Options,
    Side,
    accuracy_words,
    baseline_side,
    compare,
    flips_not_judged_text,
    percent,
    refuse_same_run,
    run_noise_text,
    run_side,
    share_from_text,
    verdict_run,
)
from stagewatch.daemon.projection._outcomes import label
from stagewatch.daemon.query._sql import QueryError
from stagewatch.ui import _failures, _widgets
from stagewatch.ui._router import link, session_arguments
from stagewatch.ui.pages.case import case_sections

THRESHOLDS = {"5%": "0.05", "2%": "0.02", "10%": "0.1", "20%": "0.2"}
MAX_FLIPS_SHOWN = 200
HALF = {"flex": "1 1 0", "min-width": "0"}  # a column of the side by side: half the row, never wider
# What a link's values (a run id, a baseline, a stage, a sample) and the names a pipeline gave
# (a stage, a sample, a pipeline, an error) are shown in: one long word wraps within its box, and a
# link's value past MAX_ECHOED characters is cut ("…"). In a table only the cells of names wrap
# anywhere (a number keeps its digits together).
WRAPPED = {"overflow-wrap": "anywhere"}
# Names of up to about 20 characters (lidar_segmentation) keep whole; a longer one wraps anywhere.
NAME_CELL = "<td style='overflow-wrap:anywhere;min-width:10em'>"
MAX_ECHOED = 1000


class ComparePage:
    def __init__(self, home: Path) -> None:
        self.home = home
        self.first = pn.widgets.TextInput(name="Baseline", placeholder="run id, last:20 or 7d (empty: previous run)")
        self.second = pn.widgets.TextInput(name="Run", placeholder="run id or prefix")
        given, self.threshold_problem = link_threshold()
        self.threshold = pn.widgets.Select(
            name="Practical threshold", options=threshold_options(given), value=THRESHOLDS["5%"]
        )
        self.flip = pn.widgets.TextInput(name="Flip", placeholder="stage/sample")
        self.body = pn.Column()
        self.cases = pn.Column(css_classes=["sw-compare-cases"])
        self.sides: tuple[Side, Side] | None = None
        refused = _widgets.sync_url({"a": self.first, "b": self.second, "threshold": self.threshold, "flip": self.flip})
        self.url_problems = _widgets.url_alert([self._explained(problem) for problem in refused])
        for widget in (self.first, self.second, self.threshold):
            widget.param.watch(lambda _: self.show(), "value")
        self.flip.param.watch(lambda _: self.show_flip(), "value")
        self.show()

    def _explained(self, refused: str) -> str:
        """A refused part of the link, with why where the page knows it."""
        if refused.startswith("threshold=") and self.threshold_problem:
            return f"{refused} ({self.threshold_problem}; {DEFAULT_LABEL} is used)"
        return refused

    def layout(self) -> pn.Column:
        return pn.Column(
            self.url_problems,
            _widgets.filter_bar(self.first, self.second, self.threshold, width=300),
            self.body,
            self.cases,
        )

    def show(self) -> None:
        if not self.second.value.strip():
            self.body.objects = [
                pn.pane.Markdown(
                    f"Pick two runs: tick them on [Runs]({link('?page=runs')}), or open a run and follow "
                    "*compare with the previous run*."
                )
            ]
            self.cases.objects = []
            return
        try:
            a, b = compared_sides(self.home, self.first.value, self.second.value)
            document = compare(self.home, a, b, Options(threshold=share_from_text(self.threshold.value)))
        except (CompareError, QueryError) as error:
            self.body.objects = [problem_alert(error)]
            self.cases.objects = []
            return
        self.sides = (a, b)
        self.body.objects = sections(document, self.link_of)
        self.show_flip()

    def link_of(self, flip: dict[str, str]) -> str:
        """The flip's link: this comparison with its two cases open."""
        parts = {"page": "compare", "a": self.first.value, "b": self.second.value, "threshold": self.threshold.value}
        parts["flip"] = f"{flip['stage']}/{flip['sample_id']}"
        return link("?" + "&".join(f"{key}={quote(value, safe='')}" for key, value in parts.items())) + "#side-by-side"

    def show_flip(self) -> None:
        stage, _, sample = self.flip.value.partition("/")
        if self.sides is None or not (stage and sample):
            self.cases.objects = []
            return
        columns = []
        camera_group = secrets.token_hex(8)  # one camera for both cases' clouds (this view's only)
        for side, title in zip(self.sides, ("A", "B"), strict=True):
            found = _newest_case(self.home, side, stage, sample)
            if found is None or found[1]["status"] == "ok":  # not judged, its last execution ended ok
                ended = f" ended ok in {found[0]}, not judged" if found else f" in {side.label}"
                text = html.escape(f"No case of {echoed(stage)} on {echoed(sample)}{ended}.")
                body: list[Any] = [pn.pane.Alert(text, alert_type="info", styles=WRAPPED)]
            else:
                body = case_sections(self.home, *found, camera_group=camera_group)
            heading = pn.pane.Markdown(f"#### {title}: {html.escape(side.label)}", styles=WRAPPED)
            # each case half of the width (its wide parts wrap), so both fit the page side by side
            columns.append(
                pn.Column(heading, *body, sizing_mode="stretch_width", styles=HALF, css_classes=["sw-compare-side"])
            )
        self.cases.objects = [
            _widgets.Part("side-by-side"),  # a flip's link opens the page here
            # HTML, not Markdown: a code span showed an escaped sample's entities as they are (&lt;)
            pn.pane.HTML(
                f"<h3>{html.escape(echoed(stage))} on <code>{html.escape(echoed(sample))}</code>, side by side</h3>",
                sizing_mode="stretch_width",
                styles=WRAPPED,
            ),
            pn.Row(*columns, css_classes=["sw-compare-side-by-side"]),
        ]


DEFAULT_LABEL = "5%"


def compared_sides(home: Path, baseline: str, run: str) -> tuple[Side, Side]:
    """The two sides the fields name (an empty baseline: the run before it), as the Compare and
    Performance pages compare them; a CompareError for a baseline that is the run itself (its
    comparison says "No regression." of nothing compared)."""
    b = run_side(home, run)
    a = baseline_side(home, baseline or "last:1", b)
    refuse_same_run(a, b)
    return a, b


def echoed(text: str) -> str:
    """A link's value as the page says it: at most MAX_ECHOED characters."""
    return text if len(text) <= MAX_ECHOED else text[:MAX_ECHOED] + "…"


def problem_alert(error: Exception) -> pn.pane.Alert:
    """Why nothing is compared (an unknown run, a baseline that holds none), as compare says it;
    the link's value it quotes wraps within the page."""
    return pn.pane.Alert(html.escape(echoed(str(error))), alert_type="warning", styles=WRAPPED)


def link_threshold() -> tuple[tuple[str, float] | None, str | None]:
    """The link's `threshold` as given and as a share, if it is one; else why not (None, None
    without one). 0 is a threshold: every significant change is called out."""
    text = (session_arguments().get("threshold") or [None])[0]
    if text is None:
        return None, None
    try:
        return (text, share_from_text(text)), None
    except ValueError as error:
        return None, str(error)


def threshold_options(given: tuple[str, float] | None) -> dict[str, str]:
    """The preset thresholds, and the link's own (as it wrote it: the URL keeps it) when it is
    not one of them."""
    if given is None or given[0] in THRESHOLDS.values():
        return dict(THRESHOLDS)
    text, value = given
    label = f"{value * 100:.4g}%"
    if label in THRESHOLDS:  # a preset's share written another way (0.050, 5.0%): a label of its own
        label = f"{label} ({text[:20]})"
    return {**THRESHOLDS, label: text}


def _newest_case(home: Path, side: Side, stage: str, sample: str) -> tuple[str, dict[str, Any]] | None:
    """The run and row behind the side's verdict on the sample, as compare reads it
    (`verdict_run`, then that run's `case_rows` by the same rule): its judgement, else its last
    execution (one that ended ok and was not judged: no case to draw); None where no run of the
    side holds it."""
    run = verdict_run(home, side.runs, stage, sample)
    found = None if run is None else _failures.case_rows(home, run, stage, sample, last_only=True)
    return None if run is None or found is None else (run, found)


def sections(document: dict[str, Any], link_of: Any) -> list[Any]:
    a, b = document["a"], document["b"]
    shown: list[Any] = [
        *warnings_alert(document),
        pn.pane.HTML(
            f"<b>A</b>: {_side_html(a)} &nbsp;→&nbsp; <b>B</b>: {_side_html(b)}",
            sizing_mode="stretch_width",
            styles=WRAPPED,
            css_classes=["sw-compare-sides"],
        ),
        verdict_alert(document),
        pn.pane.Markdown(
            f"A change is called out when significant at {percent(document['confidence'])} confidence "
            "(Mann-Whitney U for the median, bootstrap intervals for the rest) and larger than "
            f"{percent(document['threshold'])} (and than {MIN_TIME_MS:g} ms for times: a scheduler moves a "
            f"sub-millisecond stage by that much). {run_noise_text(document)} {OWN_MEMORY}",
            styles=WRAPPED,  # the pipeline's name, in the run-to-run noise's sentence
        ),
        pn.pane.HTML(stage_table_html(document["stages"]), css_classes=["sw-compare-stages"]),
    ]
    if "shifts" in document:
        shifts = pn.pane.HTML(shifts_html(document["shifts"]), styles=WRAPPED)
        shown += [pn.pane.Markdown("### Shifts in the history"), shifts]
    shown += flips_section(document, link_of)
    if document["accuracy"]:
        shown += [pn.pane.Markdown("### Accuracy (correct / judged)"), pn.pane.HTML(accuracy_html(document))]
    for name in ("config", "environment"):
        shown += [pn.pane.Markdown(f"### {name.capitalize()}"), pn.pane.HTML(diff_html(document[name]))]
    return shown


def _side_html(side: dict[str, Any]) -> str:
    pipeline = f" · pipeline <b>{html.escape(side.get('pipeline') or 'none recorded')}</b>"
    if side["kind"] == "run":
        status = f" ({html.escape(label(side['status']))})" if side.get("status") else ""
        return _widgets.run_link(side["runs"][0]) + status + pipeline
    return f"{html.escape(echoed(side['label']))} (newest {_widgets.run_link(side['runs'][-1])}){pipeline}"


def warnings_alert(document: dict[str, Any]) -> list[pn.pane.Alert]:
    """What the figures cannot say on their own (a run not ended, a crash, two pipelines), on top."""
    if not document.get("warnings"):
        return []
    text = "<br>".join(f"⚠ {html.escape(warning)}" for warning in document["warnings"])
    return [pn.pane.Alert(text, alert_type="warning", css_classes=["sw-compare-warnings"], styles=WRAPPED)]


def verdict_alert(document: dict[str, Any]) -> pn.pane.Alert:
    reason = document.get("not_judged")
    if reason:
        text = f"Not judged: {html.escape(reason)}."
        if document["failures"]:
            text += " So far: " + html.escape("; ".join(document["failures"]))
        return pn.pane.Alert(text, alert_type="warning", css_classes=["sw-compare-verdict"], styles=WRAPPED)
    if document["failures"]:  # each names its stage
        text = "Regressed: " + html.escape("; ".join(document["failures"]))
        return pn.pane.Alert(text, alert_type="danger", css_classes=["sw-compare-verdict"], styles=WRAPPED)
    return pn.pane.Alert("No regression.", alert_type="success", css_classes=["sw-compare-verdict"])


# compare tests the median of a stage's own memory over its executions (one reading, the largest,
# cannot be tested against its own noise) and shows the largest beside it, the figure of
# `stagewatch stats` and the Run page.
OWN_MEMORY = (
    "*Own MB* is the most a stage's RSS rose above its start, per execution: *(median)* is the median over its "
    "executions, the figure tested; *(max)* the largest, as `stagewatch stats` and the Run page show it."
)
COLUMNS = (
    ("median_ms", "median ms"),
    ("p95_ms", "p95 ms"),
    ("own_memory_mb", "own MB (median)"),
    ("gpu_peak_mb", "GPU MB (median)"),
)
ONLY_IN = {"a": "only in A", "b": "only in B"}


def stage_table_html(stages: list[dict[str, Any]]) -> str:
    titles = ("stage", "executions", *[t for _, t in COLUMNS[:3]], "own MB (max)", COLUMNS[3][1], "failed", "")
    head = "".join(f"<th>{title}</th>" for title in titles)
    rows = []
    for stage in stages:
        flag = "regressed" if stage["regressed"] else ("changed" if stage["reasons"] else "")
        # translucent: a tint of either theme's background, under either theme's text colour
        colour = {"regressed": "rgba(220, 53, 69, 0.2)", "changed": "rgba(40, 167, 69, 0.2)"}.get(flag, "transparent")
        only = stage.get("only_in")
        executions = f"{stage['executions']['a']:,} → {stage['executions']['b']:,}"
        cells = [_measure_html(stage[key]) for key, _ in COLUMNS[:3]]
        cells += [_largest_html(stage["own_memory_mb"]), _measure_html(stage[COLUMNS[3][0]])]
        cells += [_rate_html(stage["failure_rate"]), " · ".join(f"<b>{w}</b>" for w in (flag, ONLY_IN.get(only)) if w)]
        title = html.escape("; ".join(stage["reasons"]), quote=True)
        classes = f"sw-stage-{flag or 'same'}" + (f" sw-stage-only-{only}" if only else "")
        rows.append(
            f"<tr class='{classes}' style='background:{colour}' "
            f"title='{title}'>{NAME_CELL}{html.escape(stage['stage'])}</td>"
            + "".join(f"<td>{cell}</td>" for cell in [executions, *cells])
            + "</tr>"
        )
    return f"<table class='sw-compare-table'><tr>{head}</tr>{''.join(rows)}</table>"


def _largest_html(measure: dict[str, Any]) -> str:
    largest = measure.get("max") or {}
    return f"{_number(largest.get('a'))} → {_number(largest.get('b'))}"


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:,.3g}"


def _measure_html(measure: dict[str, Any]) -> str:
    text = f"{_number(measure['a'])} → {_number(measure['b'])}"
    if measure["change"] is not None:
        text += f" ({measure['change']:+.1%})"
    if measure.get("interval"):
        low, high = measure["interval"]
        text += f"<br><small>CI of the difference [{low:,.3g}, {high:,.3g}]</small>"
    return f"<b>{text}</b>" if measure["called_out"] else text


def _rate_html(measure: dict[str, Any]) -> str:
    if measure["a"] is None or measure["b"] is None:
        return "-"
    text = f"{measure['a']:.1%} → {measure['b']:.1%}"
    return f"<b>{text}</b>" if measure["called_out"] else text


def shifts_html(shifts: list[dict[str, Any]]) -> str:
    if not shifts:
        return "No persistent shift in the baseline's runs and this one."
    items = [
        f"<li><b>{html.escape(s['stage'])}</b> {s['measure'].replace('_ms', '')} {s['change']:+.1%} "
        f"({s['before']:,.3g} → {s['after']:,.3g} ms) since run {_widgets.run_link(s['started_run'])}, "
        f"found at {_widgets.run_link(s['found_run'])}{' (ongoing)' if s['ongoing'] else ''}</li>"
        for s in shifts
    ]
    return f"<ul>{''.join(items)}</ul>"


def flips_section(document: dict[str, Any], link_of: Any) -> list[Any]:
    """The flip list; over rows a damaged data file left out, why none is listed (the list
    would hold samples that only look changed)."""
    not_judged = document["flips_not_judged"]
    if not_judged is not None:
        text = f"Not judged: {html.escape(flips_not_judged_text(not_judged))}."
        return [
            pn.pane.Markdown("### Flips"),
            pn.pane.Alert(text, alert_type="warning", css_classes=["sw-compare-flips-not-judged"], styles=WRAPPED),
        ]
    return [
        pn.pane.Markdown(f"### Flips ({len(document['flips'])})"),
        pn.pane.HTML(flips_html(document["flips"], link_of), css_classes=["sw-compare-flips"], styles=WRAPPED),
    ]


def flips_html(flips: list[dict[str, str]], link_of: Any) -> str:
    if not flips:
        return "No sample's verdict changed."
    items = [
        f"<li><a class='sw-flip' href='{html.escape(link_of(flip), quote=True)}'>{html.escape(flip['stage'])} on "
        f"<code>{html.escape(flip['sample_id'])}</code></a>: {html.escape(flip['from'])} → "
        f"<b>{html.escape(flip['to'])}</b></li>"
        for flip in flips[:MAX_FLIPS_SHOWN]
    ]
    more = (
        f"<li>… {len(flips) - MAX_FLIPS_SHOWN} more (`stagewatch compare --json`)</li>"
        if len(flips) > MAX_FLIPS_SHOWN
        else ""
    )
    return f"<ul>{''.join(items)}{more}</ul>"


def accuracy_html(document: dict[str, Any]) -> str:
    rows = []
    for entry in document["accuracy"]:
        a = "-" if entry["a"] is None else f"{entry['a']:.1%}"
        b = "-" if entry["b"] is None else f"{entry['b']:.1%}"
        per_class = "; ".join(
            f"{html.escape(metric)}: "
            + ", ".join(f"{html.escape(n)} {_number(v.get('a'))} → {_number(v.get('b'))}" for n, v in classes.items())
            for metric, classes in entry["per_class"].items()
        )
        metrics = ", ".join(
            f"{html.escape(name)} {_number(v['a'])} → {_number(v['b'])}" for name, v in entry["metrics"].items()
        )
        change = html.escape(accuracy_words(entry, document["accuracy_drop"]))
        rows.append(
            f"<tr>{NAME_CELL}{html.escape(entry['stage'])}</td><td>{a} → {b}</td><td>{change}</td>"
            f"<td>{metrics}</td>{NAME_CELL}{per_class}</td></tr>"
        )
    head = "<tr><th>stage</th><th>accuracy</th><th>change</th><th>metrics</th><th>per class</th></tr>"
    return f"<table class='sw-compare-accuracy'>{head}{''.join(rows)}</table>"


def diff_html(changes: list[dict[str, Any]] | None) -> str:
    if changes is None:
        return "Not known (see the warnings on top)."
    if not changes:
        return "Unchanged."
    rows = "".join(
        f"<tr>{NAME_CELL}<code>{html.escape(c['key'])}</code></td>{NAME_CELL}{html.escape(repr(c['from'])[:300])}</td>"
        f"{NAME_CELL}{html.escape(repr(c['to'])[:300])}</td></tr>"
        for c in changes[:500]
    )
    return f"<table><tr><th>key</th><th>A</th><th>B</th></tr>{rows}</table>"


def view(home: Path) -> pn.viewable.Viewable:
    return ComparePage(home).layout()
