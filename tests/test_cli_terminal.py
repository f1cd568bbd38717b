"""The command as people meet it in a shell: options before the command, a home that is not
there, output piped into `head`, a progress bar on a terminal and none in a pipe."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pty
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

from tests.conftest import sw, wait_for
from tests.groundtruth.builders import write_dataset

COMMAND = [sys.executable, "-m", "stagewatch.cli"]


def test_global_options_may_come_before_the_command(home: Path) -> None:
    before = sw("--home", str(home), "runs", "--json")
    after = sw("runs", "--home", str(home), "--json")
    assert before.returncode == after.returncode == 0, before.stderr
    assert json.loads(before.stdout) == json.loads(after.stdout) == []
    shown = sw("--home", str(home), "config", "show", "--json")
    assert json.loads(shown.stdout)["home"] == {"value": str(home), "source": "flag"}


def test_the_option_after_the_command_wins(home: Path, tmp_path: Path) -> None:
    shown = sw("--home", str(tmp_path / "elsewhere"), "config", "show", "--home", str(home), "--json")
    assert json.loads(shown.stdout)["home"]["value"] == str(home)


def test_runs_on_a_missing_home_names_the_home_it_looked_in(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-home"
    result = sw("runs", "--home", str(missing))
    assert result.returncode == 0
    assert str(missing) in result.stdout and "does not exist" in result.stdout
    assert not missing.exists()  # looking creates nothing


def test_a_home_that_is_a_file_is_refused_in_words(tmp_path: Path) -> None:
    file = tmp_path / "a-file"
    file.write_text("x")
    result = sw("runs", "--home", str(file))
    assert result.returncode == 2 and "expected --home to be a folder" in result.stderr
    assert "Traceback" not in result.stderr


def test_output_into_a_closed_pipe_ends_quietly() -> None:
    """`stagewatch config show | head -0`: the reader is gone before the first write."""
    process = subprocess.Popen([*COMMAND, "config", "show"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdout.close()
    stderr = process.stderr.read().decode()
    assert process.wait(60) == 141
    assert stderr == ""


def _on_a_terminal(args: list[str], timeout_s: float = 120, stream: str = "stderr") -> tuple[int, str, str]:
    """Run with `stream` (stderr or stdout) on a pseudo-terminal, the other a pipe: (exit code,
    what the pipe got, what the terminal showed)."""
    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # 24 rows, 100 columns
    streams = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, stream: terminal}
    process = subprocess.Popen([*COMMAND, *args], **streams, stdin=subprocess.DEVNULL)
    os.close(terminal)
    shown = b""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        ready, _, _ = select.select([controller], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # the terminal's other end closed: the command is done
                break
            if not chunk:
                break
            shown += chunk
        elif process.poll() is not None:
            break
    os.close(controller)
    piped = (process.stderr if stream == "stdout" else process.stdout).read().decode()
    return process.wait(30), piped, shown.decode(errors="replace")


def test_a_long_job_shows_progress_on_a_terminal_and_not_under_json(tmp_path: Path) -> None:
    spec = write_dataset(tmp_path, 40)
    code, stdout, terminal = _on_a_terminal(["gt", "validate", str(spec)])
    assert code == 0, terminal
    assert "reading labels" in terminal and "labels" in terminal  # tqdm's bar: description, counts, unit
    assert "ok" in stdout
    code, stdout, terminal = _on_a_terminal(["gt", "validate", str(spec), "--json"])
    assert code == 0 and json.loads(stdout)["ok"]
    assert "reading labels" not in terminal


def test_no_progress_bar_in_a_pipe(tmp_path: Path) -> None:
    spec = write_dataset(tmp_path, 12)
    result = sw("gt", "validate", str(spec))
    assert result.returncode == 0 and "reading labels" not in result.stderr


def test_escape_sequences_a_pipeline_recorded_are_shown_not_run_on_a_terminal(daemon) -> None:
    """An error message holding ESC sequences (set the terminal's title, clear the screen) is
    printed escaped on a terminal, and as it is into a pipe (`--json` keeps it exact)."""
    import stagewatch

    message = "bad\x1b]0;OWNED\x07\x1b[2Jcleared"
    run = stagewatch.init(pipeline="p", home=daemon.home)
    try:
        with run.stage("detection", sample_id="f1"):
            raise ValueError(message)
    except ValueError:
        pass
    run.finish()
    daemon.audit(run.id)
    code, _, shown = _on_a_terminal(["query", "--home", str(daemon.home), "--run", run.id], stream="stdout")
    assert code == 0, shown
    assert "\x1b]0;OWNED" not in shown and "\x1b[2J" not in shown
    assert "bad\\x1b]0;OWNED\\x07\\x1b[2Jcleared" in shown
    command = [*COMMAND, "query", "--home", str(daemon.home), "--run", run.id, "--json"]
    piped = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert json.dumps(message)[1:-1] in piped.stdout  # the value exact, as JSON writes it


def _logged_failed_run(daemon, sample_id: str, messages: list[str], error: str) -> str:
    """A run whose detection stage on `sample_id` logs `messages` (loguru) and raises `error`."""
    from loguru import logger

    import stagewatch

    sink = logger.add(stagewatch.loguru_sink, level="INFO")
    try:
        with (
            stagewatch.init(pipeline="p", home=daemon.home) as run,
            contextlib.suppress(ValueError),
            run.stage("detection", sample_id=sample_id),
        ):
            for message in messages:
                logger.info(message)
            raise ValueError(error)
    finally:
        logger.remove(sink)
    daemon.audit(run.id)
    return run.id


def _queried(daemon, run_id: str, marker: str) -> str:
    """`query --run` of the run, once its log lines (holding `marker`) are in the logs table."""
    return wait_for(
        lambda: (out := sw("query", "--home", str(daemon.home), "--run", run_id).stdout) and marker in out and out, 30
    )


def test_a_multi_line_message_stays_in_its_row(daemon) -> None:
    """A log line of three lines prints its further lines under its first, indented to the
    message's column (not at the left edge, where they read as rows of their own); a failed
    execution's two-line error stays on its one row, its break shown as ⏎; a message of 100
    lines shows 20 and says how many more."""
    logged = ["first line\nsecond line\nthird line", "\n".join(f"numbered {number}" for number in range(100))]
    run_id = _logged_failed_run(daemon, "f1", logged, "bad input\nshape (3, 4)")
    shown = _queried(daemon, run_id, "third line").splitlines()
    first = next(line for line in shown if line.endswith("first line"))
    column = first.index("first line")
    following = shown[shown.index(first) + 1 : shown.index(first) + 3]
    assert following == [" " * column + "second line", " " * column + "third line"], shown
    (failed,) = [line for line in shown if "detection" in line and "failed" in line]
    assert failed.endswith("bad input ⏎ shape (3, 4)"), shown
    # a message of 100 lines: its first 20, then how many more (it printed all 100 in the listing)
    assert any(line.endswith("numbered 19") for line in shown) and not any(
        line.endswith("numbered 20") for line in shown
    )
    assert any(line.endswith("… 80 more lines (--json prints it whole)") for line in shown), shown


def test_a_sample_id_with_a_line_break_stays_in_its_row(daemon) -> None:
    """A stage's sample id is the pipeline's free text (only a result's id must name a file): one
    holding a line break ("frame\\r\\n7") printed as is broke each row it was in (query's stage
    executions and log lines, show's executions): the rest of the row began at the left edge,
    read as a row of its own. Each row stays one line, the break shown as ⏎."""
    run_id = _logged_failed_run(daemon, "frame\r\n7", ["inside the stage"], "bad input")
    queried = _queried(daemon, run_id, "inside")
    shown = sw("show", "--home", str(daemon.home), run_id).stdout
    printed = [*queried.splitlines(), *shown.splitlines()]
    rows = [line for line in printed if "frame" in line and "failed on" not in line]  # show's error header aside
    assert len(rows) == 3, rows  # query's execution, query's log line, show's execution
    (header,) = [line for line in shown.splitlines() if "failed on" in line]  # show's error header: one line too
    assert "detection failed on frame ⏎ 7 at " in header, shown
    assert all("frame ⏎ 7" in row for row in rows), rows
    assert all(("failed" in row and "bad input" in row) or "inside the stage" in row for row in rows), rows


def test_a_wide_sample_id_keeps_the_message_column(daemon) -> None:
    """Sample ids of wide characters (each two columns on a terminal: 画像) or with a combining
    accent (e + U+0301: one column) were padded by their count of characters: the message's
    first line began further right (or left) than its further lines and than the other rows'
    messages. Every row's message, and every further line, starts at one column."""
    import unicodedata

    from loguru import logger

    import stagewatch

    sink = logger.add(stagewatch.loguru_sink, level="INFO")
    try:
        with stagewatch.init(pipeline="p", home=daemon.home) as run:
            for sample in ("画像画像", "cafe\u0301", "plain"):
                with run.stage("detection", sample_id=sample):
                    logger.info(f"first of {sample}\nsecond line")
    finally:
        logger.remove(sink)
    daemon.audit(run.id)
    printed = wait_for(
        lambda: (out := sw("query", "--home", str(daemon.home), "--run", run.id).stdout) and "plain" in out and out,
        30,
    )

    def columns(text: str) -> int:  # what a terminal gives the text: wide 2, combining 0
        wide = ("W", "F")
        return sum(0 if unicodedata.combining(c) else 2 if unicodedata.east_asian_width(c) in wide else 1 for c in text)

    shown = printed.splitlines()
    starts = {columns(line[: line.index("first of")]) for line in shown if "first of" in line}
    starts |= {columns(line[: line.index("second line")]) for line in shown if "second line" in line}
    assert len(starts) == 1, shown
