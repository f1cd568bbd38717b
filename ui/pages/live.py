"""Live: the runs in progress, each stage updating from the daemon's live feed (one subscriber
per server process, ui/_live.py): executions done, running median and latest ms, CPU and GPU
memory, failures as they happen, samples/s, accuracy counters."""

from __future__ import annotations

import html
import time

import pandas as pd
import panel as pn

from stagewatch.daemon.projection import _outcomes as outcomes
from stagewatch.daemon.query._sql import Homes, homes_of, runs_read_elsewhere
from stagewatch.ui import _format, _widgets
from stagewatch.ui._live import LiveFeed, LiveRun
from stagewatch.ui._router import link

REDRAW_MS = 250  # a session looks at the board 4 times a second and redraws only when it moved


class LivePage:
    def __init__(self, home: Homes) -> None:
        # Each home's daemon's feed: several hosts' homes show the runs in progress of every one.
        self.feeds = [LiveFeed.of(one) for one in homes_of(home)]
        self.runs = pn.Column()
        self.cards: dict[str, tuple[pn.Column, pn.pane.HTML, pn.widgets.Tabulator, pn.pane.HTML]] = {}
        self.empty = pn.pane.Markdown(
            "No run is in progress. Start a pipeline (`stagewatch demo` runs one) and it appears here as it runs; "
            f"finished runs are on the [Runs]({link('?page=runs')}) page."
        )
        self.seen_version: tuple[int, ...] = ()
        self.redraw()
        _widgets.every(REDRAW_MS, self.redraw)

    def layout(self) -> pn.Column:
        return pn.Column(self.runs)

    def redraw(self) -> None:
        versions = tuple(feed.board.version for feed in self.feeds)
        if versions == self.seen_version:
            return
        self.seen_version = versions
        now_ns = time.time_ns()
        shown, ended_lines = [], []
        # A run in two homes (a copy of a home, made while it ran) is shown from the copy the
        # query layer reads: the copy's daemon lists it in progress for ever (its status.json).
        elsewhere = runs_read_elsewhere([feed.home.root for feed in self.feeds])
        for feed, read_elsewhere in zip(self.feeds, elsewhere, strict=True):
            with feed.board.lock:
                visible = [run for run in feed.board.visible() if run.run_id not in read_elsewhere]
                shown += [
                    (r, summary(r, now_ns), stage_frame(r), failures_html(r), r.started_ns or r.last_event_ns)
                    for r in visible
                    if r.ended_at is None
                ]
                ended_lines += [ended_line(r) for r in visible if r.ended_at is not None]
        shown = [drawn[:4] for drawn in sorted(shown, key=lambda drawn: -drawn[4])]  # newest first, of every home
        ended = ended_html(ended_lines)
        # A run leaves the running list the moment its end arrives; it stays below, in words.
        after = [pn.pane.HTML(ended, name="ended")] if ended else []
        if not shown:
            self.runs.objects = [self.empty, *after]
            return
        for run, header, frame, failures in shown:
            card = self.cards.get(run.run_id)
            if card is None:
                head, table, fails = pn.pane.HTML(header), _widgets.table(frame, "live-stages"), pn.pane.HTML(failures)
                card = self.cards[run.run_id] = (pn.Column(head, table, fails, styles=_CARD), head, table, fails)
            else:
                card[1].object, card[3].object = header, failures
                card[2].value = frame
        running = {run.run_id for run, *_ in shown}
        for gone in [run_id for run_id in self.cards if run_id not in running]:
            del self.cards[gone]  # an ended run's card is not kept (nor redrawn) any longer
        self.runs.objects = [*(self.cards[run.run_id][0] for run, *_ in shown), *after]


_CARD = {"border": "1px solid #d0d7de", "border-radius": "6px", "padding": "8px", "margin-bottom": "10px"}


def summary(run: LiveRun, now_ns: int) -> str:
    colour = _format.STATUS_COLOURS.get(run.status, "#555")
    started = f" · started {_format.relative_ns(run.started_ns, now_ns)}" if run.started_ns else ""
    total = sum(s.done for s in run.stages.values())
    failed = sum(s.failed for s in run.stages.values())
    return (
        f'<b style="color:{colour}">{html.escape(outcomes.label(run.status))}</b> · '
        f"{_widgets.run_link(run.run_id)} · pipeline "
        f"<b>{html.escape(str(run.pipeline or '?'))}</b> on {html.escape(str(run.host or '?'))}{started} · "
        f"<b>{total:,}</b> stage executions, <b>{failed:,}</b> failed · "
        f"<b>{run.samples_per_s(now_ns):.1f}</b> samples/s"
    )


def ended_html(lines: list[str]) -> str:
    """The runs that ended in the last minutes, a line each (`ended_line`)."""
    if not lines:
        return ""
    return f'<div class="sw-ended"><h3>Ended in the last 10 minutes</h3><ul>{"".join(lines)}</ul></div>'


def ended_line(run: LiveRun) -> str:
    """A run that ended in the last minutes: how it ended, its counts."""
    colour = _format.STATUS_COLOURS.get(run.status, "#555")
    total = sum(s.done for s in run.stages.values())
    failed = sum(s.failed for s in run.stages.values())
    return (
        f'<li><b style="color:{colour}">{html.escape(outcomes.label(run.status))}</b> · '
        f"{_widgets.run_link(run.run_id)} · pipeline <b>{html.escape(str(run.pipeline or '?'))}</b> · "
        f"{total:,} stage executions, {failed:,} failed</li>"
    )


def stage_frame(run: LiveRun) -> pd.DataFrame:
    order = sorted(run.stages, key=lambda name: run.stages[name].first_seen_ns)
    rows = []
    for name in order:
        stage = run.stages[name]
        counts = (run.accuracy.get(name) or {}).get("counts") or {}
        rows.append(
            {
                "stage": name,
                "done": f"{stage.done:,}",
                "running": stage.running,
                "failed": f"{stage.failed:,}",
                "median": _format.ms(stage.median_ms),
                "latest": _format.ms(stage.latest_ms),
                "process peak": _format.mb(stage.rss_peak_mb),
                "GPU peak": _format.mb(stage.gpu_peak_mb) if stage.gpu_peak_mb is not None else "no GPU readings",
                "correct / wrong / invalid": " / ".join(str(counts.get(k, 0)) for k in ("correct", "wrong", "invalid"))
                if counts
                else "",
            }
        )
    return pd.DataFrame(rows)


def failures_html(run: LiveRun) -> str:
    if not run.failures:
        return ""
    items = "".join(
        f"<li><b>{html.escape(str(f['stage']))}</b> on <code>{html.escape(str(f['sample_id']))}</code>: "
        f"{html.escape(str(f['error'])[:300])}</li>"
        for f in list(run.failures)[:5]
    )
    return f'<div style="color:#c62828">Latest failures:<ul style="margin:2px 0">{items}</ul></div>'


def view(home: Homes) -> pn.viewable.Viewable:
    return LivePage(home).layout()
