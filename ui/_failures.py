"""Failure cases and accuracy, as pure functions of a home: the failure browser's server-side
query over `samples` (wrong, invalid) and `stage_executions` (crashed), one case's pictures
(prediction beside ground truth, the difference map), and accuracy across runs."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
from PIL import Image

from stagewatch.daemon.base._layout import DaemonHome
from stagewatch.daemon.compare._verdicts import verdict_row
from stagewatch.daemon.groundtruth.diff import (
    CLASS_COLOURS,
    MISMATCH_COLOURS,
    DiffError,
    cloud_distances,
    empty_clouds_line,
    label_mismatch,
    mask_difference,
    top_view,
    viridis,
)
from stagewatch.daemon.groundtruth.formats import (
    LabelError,
    load_mask,
    load_point_attributes,
    load_point_labels,
    load_points,
)
from stagewatch.daemon.groundtruth.spec import METRIC_NAMES
from stagewatch.daemon.projection import _outcomes as outcomes
from stagewatch.daemon.query._hosts import runs_on_host, with_hosts
from stagewatch.daemon.query._readmodels import RunNotFound, holding, read_table
from stagewatch.daemon.query._sql import Homes
from stagewatch.ui._data import PREVIEW_BYTES, Page, load_accuracy, load_audit_head
from stagewatch.ui._overlay import blend, parse_boxes_column, rgb

# A judged sample is wrong or invalid; a stage execution that produced nothing failed (raised an
# exception) or crashed (its process was lost): the words of daemon/projection/_outcomes.py.
EXECUTION_FAILURES = ("failed", "crashed")
FAILURE_STATUSES = ("wrong", "invalid", *EXECUTION_FAILURES)
MAX_INPUT_SIDE = 1600  # an input image is scaled down to this for the page
CASE_SORTS = ("severity", "time", "confidence", "stage", "sample_id")
CLASS_PALETTE = np.array(CLASS_COLOURS, np.uint8)  # one colour per class index, as a lookup table


# The failure browser still filters with pyarrow dataset expressions over `read_table`
# (its own reads: samples, and the crashed stage executions beside them).
def _time_filter(column: str, filters: CaseFilters) -> ds.Expression | None:
    expression = None
    for bound, op in ((filters.since, "ge"), (filters.until, "le")):
        if bound is not None:
            scalar = pa.scalar(bound, pa.timestamp("ns", tz="UTC"))
            term = getattr(pc, {"ge": "greater_equal", "le": "less_equal"}[op])(ds.field(column), scalar)
            date = pa.scalar(bound.strftime("%Y-%m-%d"))
            term = term & (ds.field("date") >= date if op == "ge" else ds.field("date") <= date)  # prunes files
            expression = term if expression is None else expression & term
    return expression


def _and(*terms: ds.Expression | None) -> ds.Expression | None:
    present = [t for t in terms if t is not None]
    expression = present[0] if present else None
    for term in present[1:]:
        expression = expression & term
    return expression


def _equals(column: str, value: str | None) -> ds.Expression | None:
    return ds.field(column) == value if value else None


@dataclass(frozen=True)
class CaseFilters:
    stage: str | None = None
    status: str | None = None  # wrong, invalid or crashed; None: all three
    kind: str | None = None  # an error kind: missed, false_positive, mask_mismatch, ..., crashed
    run: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    min_severity: float = 0.0
    max_severity: float = 1.0
    text: str | None = None  # in the sample id, the reason or the errors
    class_name: str | None = None  # a class the case's mistakes involve
    # Confidence of the most confident wrong box; a narrowed range leaves out cases without one
    # (masks, point labels, crashes).
    min_confidence: float = 0.0
    max_confidence: float = 1.0
    host: str | None = None  # cases of the runs of this host (several hosts' homes read as one)

    @property
    def confidence_narrowed(self) -> bool:
        return (self.min_confidence, self.max_confidence) != (0.0, 1.0)

    def __post_init__(self) -> None:
        if self.status is not None and self.status not in FAILURE_STATUSES:
            raise ValueError(f"expected a status of {', '.join(FAILURE_STATUSES)}, got {self.status!r}")
        if not 0.0 <= self.min_severity <= self.max_severity <= 1.0:
            raise ValueError(
                f"expected 0 <= min severity <= max severity <= 1, got {self.min_severity} and {self.max_severity}"
            )
        if not 0.0 <= self.min_confidence <= self.max_confidence <= 1.0:
            raise ValueError(
                f"expected 0 <= min confidence <= max confidence <= 1, "
                f"got {self.min_confidence} and {self.max_confidence}"
            )


def failures_page(
    home: Path,
    filters: CaseFilters,
    sort: str = "severity",
    descending: bool = True,
    offset: int = 0,
    limit: int = 25,
) -> Page:
    """Every failure case that matches, one page of them: judged samples that were wrong or
    invalid, and stage executions that failed or crashed (severity 1: nothing was produced)."""
    if sort not in CASE_SORTS:
        raise ValueError(f"expected a sort column of {', '.join(CASE_SORTS)}, got {sort!r}")
    cases = matching_cases(home, filters)
    page = with_hosts(home, _ordered_page(cases, sort, descending, offset, limit))  # several homes: the host
    return Page(page.to_pandas(), cases.num_rows, offset, limit)


def matching_cases(home: Path, filters: CaseFilters) -> pa.Table:
    """Every failure case the filters keep, in no order."""
    cases = pa.concat_tables([_judged(home, filters), _crashed(home, filters)])
    if filters.kind:
        cases = cases.filter(_holds(cases["error_types"], filters.kind))
    if filters.class_name:
        cases = cases.filter(_holds(cases["classes"], filters.class_name))
    if filters.text:
        needle = filters.text
        found = pc.or_(
            pc.match_substring(cases["sample_id"].fill_null(""), needle, ignore_case=True),
            pc.or_(
                pc.match_substring(cases["reason"].fill_null(""), needle, ignore_case=True),
                pc.match_substring(cases["errors"].fill_null(""), needle, ignore_case=True),
            ),
        )
        cases = cases.filter(found)
    return cases


def case_order(sort: str, descending: bool) -> list[tuple[str, str]]:
    """The failure browser's total order: the chosen column, then newest first, then the case's
    own key, so that equal severities or times page, and step from case to case, the same way
    every time (the table, the gallery and a Case page's next/previous share it)."""
    keys = [(sort, "descending" if descending else "ascending")]
    keys += [(column, "descending" if column == "time" else "ascending") for column in CASE_KEY if column != sort]
    return keys


CASE_KEY = ("time", "run_id", "stage", "sample_id")


def _ordered_page(cases: pa.Table, sort: str, descending: bool, offset: int, limit: int) -> pa.Table:
    """Rows offset..offset+limit in case_order, sorting only the first offset+limit (select_k)."""
    keep = min(offset + limit, cases.num_rows)
    if keep <= 0 or offset >= cases.num_rows:
        return cases.slice(0, 0)
    keys = case_order(sort, descending)
    chosen = cases.take(pc.select_k_unstable(cases, k=keep, sort_keys=keys))
    return chosen.take(pc.sort_indices(chosen, sort_keys=keys)).slice(offset, limit)


@dataclass(frozen=True)
class Neighbours:
    """Where a case stands in the failure browser's order: its place (1-based, 0 when the filters
    leave it out), how many match, and the cases before and after it ((run, stage, sample) or None)."""

    position: int
    total: int
    previous: tuple[str, str, str] | None
    following: tuple[str, str, str] | None


def neighbours(
    home: Path, filters: CaseFilters, sort: str, descending: bool, run_id: str, stage: str, sample_id: str
) -> Neighbours:
    """The cases before and after one case in the order the Failures page lists them."""
    if sort not in CASE_SORTS:
        raise ValueError(f"expected a sort column of {', '.join(CASE_SORTS)}, got {sort!r}")
    cases = matching_cases(home, filters)
    ordered = cases.take(pc.sort_indices(cases, sort_keys=case_order(sort, descending)))
    here = pc.and_(
        pc.and_(pc.equal(ordered["run_id"], run_id), pc.equal(ordered["stage"], stage)),
        pc.equal(ordered["sample_id"].fill_null(""), sample_id),
    )
    found = np.flatnonzero(np.asarray(here.fill_null(False)))
    if not len(found):
        return Neighbours(0, ordered.num_rows, None, None)
    index = int(found[0])

    def key(at: int) -> tuple[str, str, str] | None:
        if not 0 <= at < ordered.num_rows:
            return None
        return (ordered["run_id"][at].as_py(), ordered["stage"][at].as_py(), ordered["sample_id"][at].as_py() or "")

    return Neighbours(index + 1, ordered.num_rows, key(index - 1), key(index + 1))


_SCHEMA = pa.schema(
    [
        ("time", pa.timestamp("ns", tz="UTC")),
        ("run_id", pa.string()),
        ("stage", pa.string()),
        ("sample_id", pa.string()),
        ("status", pa.string()),
        ("severity", pa.float64()),
        ("error_types", pa.list_(pa.string())),
        ("reason", pa.string()),
        ("errors", pa.string()),
        ("classes", pa.list_(pa.string())),
        ("confidence", pa.float64()),
    ]
)


def _common(home: Homes, filters: CaseFilters, time_column: str) -> ds.Expression | None:
    """Stage, run, host and the time range (date partitions pruned), as the query API builds them."""
    return _and(
        _time_filter(time_column, filters),
        _equals("stage", filters.stage),
        _equals("run_id", filters.run),
        ds.field("run_id").isin(runs_on_host(home, filters.host)) if filters.host else None,
    )


def _judged(home: Path, filters: CaseFilters) -> pa.Table:
    if filters.status in EXECUTION_FAILURES or filters.kind in EXECUTION_FAILURES:
        return _SCHEMA.empty_table()
    statuses = [filters.status] if filters.status else ["wrong", "invalid"]
    expression = _and(_common(home, filters, "time"), ds.field("status").isin(statuses))
    expression = (
        expression & (ds.field("severity") >= filters.min_severity) & (ds.field("severity") <= filters.max_severity)
    )
    if filters.confidence_narrowed:
        confidence = ds.field("confidence")
        expression = expression & (confidence >= filters.min_confidence) & (confidence <= filters.max_confidence)
    table = read_table(home, "samples", expression, None, _SCHEMA.names)
    return table.select(_SCHEMA.names).cast(_SCHEMA)


def _crashed(home: Path, filters: CaseFilters) -> pa.Table:
    if (
        filters.status not in (None, *EXECUTION_FAILURES)
        or filters.kind not in (None, *EXECUTION_FAILURES)
        or (filters.status and filters.kind and filters.status != filters.kind)
        or filters.max_severity < 1
        or filters.class_name
        or filters.confidence_narrowed
    ):
        return _SCHEMA.empty_table()  # a crash has no class or confidence
    wanted = filters.status or filters.kind
    status = ds.field("status") == wanted if wanted else ds.field("status") != "ok"
    expression = _and(_common(home, filters, "start_time"), status)
    columns = ["start_time", "run_id", "stage", "sample_id", "status", "error_type", "error_message"]
    rows = read_table(home, "stage_executions", expression, None, columns)
    n = rows.num_rows
    return pa.table(
        {
            "time": rows["start_time"],
            "run_id": rows["run_id"],
            "stage": rows["stage"],
            "sample_id": rows["sample_id"],
            "status": rows["status"],
            "severity": pa.array(np.ones(n)),
            "error_types": pa.array([[status] for status in rows["status"].to_pylist()], pa.list_(pa.string())),
            "reason": pa.array(
                [
                    _execution_reason(*row)
                    for row in zip(
                        *(rows[c].to_pylist() for c in ("status", "error_type", "error_message")), strict=True
                    )
                ],
                pa.string(),
            ),
            "errors": pa.array([None] * n, pa.string()),
            "classes": pa.nulls(n, pa.list_(pa.string())),
            "confidence": pa.nulls(n, pa.float64()),
        },
        schema=_SCHEMA,
    )


REASON_COLUMNS = ("status", "error_type", "error_message")


def _execution_reason(status: str, error_type: str | None, message: str | None) -> str:
    """'ValueError: frame_047: ...'; what is known where the type or the message is missing,
    never an empty reason."""
    if error_type and message:
        return f"{error_type}: {message}"
    return error_type or message or f"{status}: {outcomes.MEANINGS.get(status, 'no error was recorded')}"


def _holds(lists: pa.ChunkedArray, value: str) -> pa.Array:
    """Rows whose list (of error kinds, of classes) holds `value`."""
    lists = lists.combine_chunks()
    hits = pc.equal(pc.list_flatten(lists), value)
    parents = pc.list_parent_indices(lists).filter(hits)
    mask = np.zeros(len(lists), bool)
    mask[np.asarray(parents)] = True
    return pa.array(mask)


def case_choices(home: Path) -> dict[str, list[str]]:
    """The failure browser's menus, from one read of the judged failures: every error kind (and
    'crashed') and every class a mistake involves."""
    columns = ["error_types", "classes"]
    table = read_table(home, "samples", ds.field("status").isin(["wrong", "invalid"]), None, columns)

    def listed(column: str) -> list[str]:
        if not table.num_rows:
            return []
        return sorted(v for v in pc.unique(pc.list_flatten(table[column].combine_chunks())).to_pylist() if v)

    return {"kind": [*listed("error_types"), *EXECUTION_FAILURES], "class": listed("classes")}


# -- one case ---------------------------------------------------------------------------------------


def _case_where(run_id: str, stage: str, sample_id: str) -> ds.Expression:
    return (ds.field("run_id") == run_id) & (ds.field("stage") == stage) & (ds.field("sample_id") == sample_id)


def judged_row(home: Path, run_id: str, stage: str, sample_id: str) -> dict[str, Any] | None:
    """The sample's last judgement in the run; None where it was not judged."""
    rows = read_table(home, "samples", _case_where(run_id, stage, sample_id)).to_pylist()
    return rows[-1] if rows else None


def case_rows(home: Path, run_id: str, stage: str, sample_id: str, last_only: bool = False) -> dict[str, Any] | None:
    """The judged sample (or the crashed execution) behind one case. `last_only`: the row behind
    the sample's verdict in the run, as compare reads it (`verdict_row`): its judgement, else its
    last execution (a failure followed by a retry that ended ok is an ok sample)."""
    expression = _case_where(run_id, stage, sample_id)
    judged = judged_row(home, run_id, stage, sample_id)
    if last_only:
        executions = read_table(home, "stage_executions", expression).sort_by("start_time").to_pylist()
        return verdict_row(executions[-1] if executions else None, judged)
    if judged is not None:
        return judged
    crashed = read_table(home, "stage_executions", expression & (ds.field("status") != "ok")).to_pylist()
    return crashed[-1] if crashed else None


def case_rows_of(home: Path, keys: list[tuple[str, str, str]]) -> dict[tuple[str, str, str], dict[str, Any]]:
    """case_rows of many cases ((run, stage, sample) each) in one read of each table: a page of them."""
    if not keys:
        return {}
    runs, stages, samples = (sorted({key[i] for key in keys}) for i in range(3))
    expression = ds.field("run_id").isin(runs) & ds.field("stage").isin(stages) & ds.field("sample_id").isin(samples)
    wanted, found = set(keys), {}
    for table, extra in (("stage_executions", ds.field("status") != "ok"), ("samples", None)):
        for row in read_table(home, table, expression if extra is None else expression & extra).to_pylist():
            key = (row["run_id"], row["stage"], row["sample_id"] or "")
            if key in wanted:
                found[key] = row  # the last row wins, judged samples over crashes, as in case_rows
    return found


def case_pictures(home: Path, case: dict[str, Any]) -> dict[str, Any]:
    """Prediction beside ground truth and their difference, for masks and point labels:
    {"kind", "pictures": [(title, HxWx3 uint8)], "numbers": {...}} or {"kind", "problem"}; boxes:
    {"kind": "boxes", "boxes", "image" (the input, or None), "problem"}. A mask case carries the
    input image too ("image"), to overlay the masks on."""
    if case.get("boxes"):
        return _box_case(home, case)
    try:
        prediction = _prediction_file(home, case)
        truth = _label_file(home, case)
    except (ValueError, RunNotFound) as error:
        return {"kind": "none", "problem": str(error)}
    try:
        if truth.suffix.lower() in (".png", ".npy") and prediction.suffix.lower() == ".npy":
            predicted, actual = np.load(prediction, allow_pickle=False), load_mask(truth)
            if predicted.ndim == 2:
                return {**_mask_case(predicted, actual), **_input_of(home, case)}
        if truth.suffix.lower() in (".ply", ".pcd") and prediction.suffix.lower() in (".ply", ".pcd"):
            positions, labels = load_points(prediction)  # a predicted cloud of its own: distances
            found = cloud_distance_case(positions, labels, load_point_labels(truth))
            finite = np.isfinite(positions).all(axis=1)  # the points it kept
            return _with_attributes(found, load_point_attributes(prediction), load_point_attributes(truth), finite)
        if truth.suffix.lower() in (".ply", ".pcd"):
            found = _cloud_case(np.load(prediction, allow_pickle=False), load_point_labels(truth))
            attributes = load_point_attributes(truth)  # one cloud, its labels predicted: the same points
            return _with_attributes(found, attributes, attributes)
    except (DiffError, LabelError, OSError, ValueError) as error:
        return {"kind": "none", "problem": f"cannot compare {prediction.name} with {truth.name}: {error}"}
    return {"kind": "none", "problem": f"no picture for {prediction.name} against {truth.name}"}


def _with_attributes(
    found: dict[str, Any],
    predicted: dict[str, np.ndarray],
    truth: dict[str, np.ndarray],
    kept: np.ndarray | None = None,
) -> dict[str, Any]:
    """The per-point numbers of both files (intensity ...), for colouring the 3D views by them."""
    names = list(dict.fromkeys([*predicted, *truth]))
    found["arrays"]["attributes"] = {
        name: (
            predicted[name][kept] if kept is not None and name in predicted else predicted.get(name),
            truth.get(name),
        )
        for name in names
    }
    return found


def _box_case(home: Path, case: dict[str, Any]) -> dict[str, Any]:
    return {"kind": "boxes", "boxes": parse_boxes_column(case.get("boxes")), **_input_of(home, case)}


def _input_of(home: Path, case: dict[str, Any]) -> dict[str, Any]:
    """{"image": the sample's input image (HxWx3) or None, "problem": why there is none}."""
    try:
        path = _dataset_file(home, case, "input_path", "input image (`inputs:` in the dataset file)")
        if path.stat().st_size > PREVIEW_BYTES:
            raise ValueError(f"{path.name} is over {PREVIEW_BYTES // 2**20} MiB")
        with Image.open(path) as image:
            width, height = image.size
            image.draft("RGB", (MAX_INPUT_SIDE, MAX_INPUT_SIDE))  # JPEG: decoded at a smaller scale
            image.thumbnail((MAX_INPUT_SIDE, MAX_INPUT_SIDE))  # what a page shows; boxes keep full-size coordinates
            return {"image": rgb(image), "size": (height, width), "problem": ""}
    except (ValueError, RunNotFound, OSError, Image.DecompressionBombError) as error:
        return {"image": None, "size": None, "problem": f"drawn without the input image: {error}"}


def _mask_case(predicted: np.ndarray, actual: np.ndarray) -> dict[str, Any]:
    found = mask_difference(predicted.astype(np.int64), actual, ignore_index=255)
    return {
        "kind": "mask",
        "pictures": [
            ("prediction", _classes(predicted)),
            ("ground truth", _classes(actual)),
            ("difference", found.picture),
        ],
        "numbers": {"agreement": found.agreement, "ignored": found.ignored, "per_class": found.per_class},
        "arrays": {"predicted": predicted, "truth": actual},
    }


def mask_overlay(image: np.ndarray, labels: np.ndarray, opacity: float, ignore_index: int = 255) -> np.ndarray:
    """A class mask's colours over the input image; background (0) and ignored pixels stay clear.
    A mask of another size than the (shown, maybe scaled down) image is resampled to it, nearest."""
    labels = np.asarray(labels)
    if labels.shape != image.shape[:2]:
        resized = Image.fromarray(labels.astype(np.int32)).resize((image.shape[1], image.shape[0]), Image.NEAREST)
        labels = np.asarray(resized)
    return blend(image, _classes(labels), opacity, keep=(labels != 0) & (labels != ignore_index))


def _cloud_case(predicted_labels: np.ndarray, truth: Any) -> dict[str, Any]:
    predicted_labels = predicted_labels.reshape(-1)
    missing = len(predicted_labels) == 0 and len(truth.labels) > 0  # an empty prediction misses every point
    wrong = np.ones(len(truth.labels), bool) if missing else label_mismatch(predicted_labels, truth.labels)
    mismatch = np.array(MISMATCH_COLOURS, np.uint8)[wrong.astype(np.intp)]
    predicted_positions = truth.positions[:0] if missing else truth.positions
    return {
        "kind": "points",
        "pictures": [
            ("prediction (labels, seen from above)", top_view(predicted_positions, _classes(predicted_labels))),
            ("ground truth", top_view(truth.positions, _classes(truth.labels))),
            ("label mismatch (red)", top_view(truth.positions, mismatch)),
        ],
        "numbers": {
            "points": len(wrong),
            "mismatched": int(wrong.sum()),
            "agreement": float(1 - wrong.mean()) if len(wrong) else None,  # no points: nothing to agree on
        },
        "arrays": {
            "positions": predicted_positions,
            "truth_positions": truth.positions,
            "predicted": predicted_labels,
            "truth": truth.labels,
        },
    }


def cloud_distance_case(positions: np.ndarray, labels: np.ndarray | None, truth: Any) -> dict[str, Any]:
    """A predicted cloud against the ground-truth cloud: per-point distances both ways (the
    full clouds), a heatmap seen from above, and both clouds in 3D coloured by distance error."""
    found = cloud_distances(positions, truth.positions)
    kept = positions[np.isfinite(positions).all(axis=1)]
    kept_labels = labels[np.isfinite(positions).all(axis=1)] if labels is not None else None
    measured = not found.summary.get("empty")  # an empty cloud: no distance exists, none is coloured
    high = (float(np.percentile(found.to_truth, 99)) if measured else 0.0) or 1.0
    return {
        "kind": "distances",
        "pictures": [
            ("prediction: distance to the ground truth, from above", top_view(kept, viridis(found.to_truth, 0, high))),
            (
                "ground truth: distance to the prediction",
                top_view(truth.positions, viridis(found.to_prediction, 0, high)),
            ),
        ],
        "numbers": {
            **found.summary,
            "dropped": found.dropped,
            "scale": [0.0, high],
            "empty_line": empty_clouds_line(found),
        },
        "arrays": {
            "positions": kept,
            "predicted": kept_labels,
            "truth_positions": truth.positions,
            "truth": truth.labels,
            "distance": found.to_truth if measured else None,
            "truth_distance": found.to_prediction if measured else None,
        },
    }


def _classes(labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels).astype(np.int64)
    return CLASS_PALETTE[np.where(labels >= 0, labels % len(CLASS_PALETTE), 0)]


def _prediction_file(home: Path, case: dict[str, Any]) -> Path:
    from stagewatch.ui._data import ArtifactRefused, resolve_artifact

    relative = case.get("prediction_path")
    if not relative:
        raise ValueError("the prediction of this case was inline (boxes), not a saved file")
    try:
        return resolve_artifact(home, relative)
    except ArtifactRefused as error:
        raise ValueError(str(error)) from None


def _label_file(home: Path, case: dict[str, Any]) -> Path:
    return _dataset_file(home, case, "label_path", "ground-truth file")


def _dataset_file(home: Path, case: dict[str, Any], column: str, what: str) -> Path:
    """A file the case names, only if it lies in the folder of the run's dataset file."""
    named = case.get(column)
    dataset = load_audit_head(home, case["run_id"]).get("dataset")
    if not named or not dataset:
        raise ValueError(f"this case has no {what}")
    path, root = Path(named).resolve(), Path(dataset).resolve().parent
    if not path.is_relative_to(root) or not path.is_file():
        raise ValueError(f"refused {named}: not a file in the dataset's folder {root}")
    return path


# -- accuracy ---------------------------------------------------------------------------------------


def accuracy_trend(home: Path, runs: dict[str, Any]) -> pd.DataFrame:
    """Per run (id -> its start) and stage, the headline metric (F1 for boxes, mIoU otherwise)
    and the share of correct samples, from each run's accuracy.json."""
    rows = []
    for run_id, start in runs.items():
        summary = load_accuracy(home, run_id)
        if not summary:
            continue
        for stage, entry in (summary.get("stages") or {}).items():
            metrics, counts = entry.get("metrics") or {}, entry.get("counts") or {}
            judged = sum(counts.get(k, 0) for k in ("correct", "wrong", "invalid"))
            rows.append(
                {
                    "run_id": run_id,
                    "run_start": pd.Timestamp(start) if start is not None else pd.NaT,
                    "stage": stage,
                    "metric": METRIC_NAMES["f1" if entry.get("kind") == "boxes" else "miou"],
                    "value": metrics.get("f1") if entry.get("kind") == "boxes" else metrics.get("miou"),
                    "correct": counts.get("correct", 0) / judged if judged else None,
                }
            )
    return pd.DataFrame(rows, columns=["run_id", "run_start", "stage", "metric", "value", "correct"])


def runs_with_accuracy(home: Path, limit: int = 200) -> dict[str, Any]:
    """The most recent runs that named a golden dataset, newest first: run id -> its start."""
    runs = read_table(home, "runs", ds.field("dataset").is_valid(), None, ["run_id", "start_time"])
    newest = runs.take(pc.sort_indices(runs, sort_keys=[("start_time", "descending")])).slice(0, limit)
    starts = zip(newest["run_id"].to_pylist(), newest["start_time"].to_pylist(), strict=True)
    return {run_id: start for run_id, start in starts if DaemonHome.of(holding(home, run_id)).accuracy(run_id).exists()}


def errors_of(case: dict[str, Any]) -> dict[str, Any]:
    try:
        return json.loads(case.get("errors") or "{}")
    except ValueError:
        return {}
