"""Numbers and times as people read them, and one colour per stage on every page (pure)."""

from __future__ import annotations

import hashlib
import html
import math
import re
from datetime import UTC, datetime

# Tableau 10 and ten more hues of middle lightness (visible on the light and the dark theme).
PALETTE = (
    "#4E79A7",
    "#F28E2B",
    "#59A14F",
    "#B07AA1",
    "#EDC948",
    "#76B7B2",
    "#E15759",
    "#9C755F",
    "#FF9DA7",
    "#BAB0AC",
    "#17BECF",
    "#BCBD22",
    "#E7298A",
    "#7570B3",
    "#1B9E77",
    "#A6761D",
    "#D37295",
    "#D95F02",
    "#B6992D",
    "#79706E",
)
STATUS_COLOURS = {
    "ok": "#2e7d32",
    "running": "#1565c0",
    "finished_with_failures": "#e65100",
    "failed": "#c62828",
    "crashed": "#6a1b9a",
}


def stage_colour(stage: str) -> str:
    """A stage's colour from its name alone: the same on every page, in every session and over
    time, whatever other stages (of this pipeline or another) the home holds. Two names may share
    a colour; a colour that moved when another pipeline's stages came would mislead more."""
    return PALETTE[int.from_bytes(hashlib.blake2s(stage.encode(), digest_size=2).digest(), "big") % len(PALETTE)]


def stage_colours(stages: list[str]) -> dict[str, str]:
    return {stage: stage_colour(stage) for stage in stages}


# CommonMark lets a backslash make any ASCII punctuation mark plain text.
_MARKDOWN_MARKS = re.compile(r"([!-/:-@\[-`{-~])")


def markdown_literal(text: object) -> str:
    """`text` shown as it is inside Markdown (an Alert, a Markdown pane): a message's
    `__init__`, `*args` or `# of` is no bold, italics or heading."""
    return _MARKDOWN_MARKS.sub(r"\\\1", str(text))


def share_bar_html(share: float | None) -> str:
    """A share as a bar with its percentage beside it (drawn over the bar, the number was lost in it)."""
    width = min(max(share, 0.0), 1.0) * 100 if share is not None and math.isfinite(share) else 0.0
    return (
        '<span class="sw-share" style="display:inline-flex;align-items:center;gap:6px">'
        '<span style="display:inline-block;width:64px;height:9px;border:1px solid #7aa6d6">'
        f'<span style="display:block;width:{width:.1f}%;height:100%;background:#7aa6d6"></span></span>'
        f"<span>{pct(share)}</span></span>"
    )


def ms(value: float | None) -> str:
    """Milliseconds with the precision a person compares at: 0.042 ms, 4.09 ms, 41.3 ms, 1.25 s, 3 min 20 s."""
    if value is None or not math.isfinite(value):
        return "-"
    if value < 1:
        return f"{value:.3f} ms"
    if value < 10:
        return f"{value:.2f} ms"
    if value < 1000:
        return f"{value:.1f} ms"
    seconds = value / 1000
    if seconds < 60:
        return f"{seconds:.2f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min {int(seconds % 60)} s"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60)} min"


def mb(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    if abs(value) >= 1024:
        return f"{value / 1024:.2f} GB"
    return f"{value:.1f} MB" if abs(value) >= 10 else f"{value:.2f} MB"


def pct(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    return f"{value * 100:.1f}%" if value < 0.995 or value == 1 else f"{value * 100:.2f}%"


def relative(moment: datetime | None, now: datetime | None = None) -> str:
    """'12 s ago', '5 min ago', '3 h ago', '2 d ago' (and 'in …' for a clock ahead of ours)."""
    if moment is None:
        return "-"
    now = now or datetime.now(UTC)
    seconds = (now - _utc(moment)).total_seconds()
    future, seconds = seconds < 0, abs(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            amount = f"{int(seconds // size)} {unit}"
            break
    else:
        amount = f"{int(seconds)} s"
    return f"in {amount}" if future else f"{amount} ago"


def exact(moment: datetime | None) -> str:
    return _utc(moment).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + " UTC" if moment is not None else "-"


def when_html(moment: datetime | None, now: datetime | None = None) -> str:
    """A relative time with the exact time on hover."""
    return f'<span title="{exact(moment)}">{html.escape(relative(moment, now))}</span>'


def moment_html(moment: datetime | None, now: datetime | None = None) -> str:
    """The exact time to the millisecond (UTC), the relative one on hover: where lines are
    told apart by their times (logs), '15 min ago' for all of them says nothing."""
    if moment is None:
        return "-"
    return f'<span title="{html.escape(relative(moment, now))}">{exact(moment)}</span>'


def parse_moment(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        return _utc(datetime.fromisoformat(text))
    except ValueError:
        return None


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def short_id(run_id: str) -> str:
    return run_id[:8]


def relative_ns(ts_ns: int, now_ns: int) -> str:
    """relative() of a nanosecond timestamp, with the exact time on hover."""
    moment = datetime.fromtimestamp(ts_ns / 1e9, UTC)
    return when_html(moment, datetime.fromtimestamp(now_ns / 1e9, UTC))
