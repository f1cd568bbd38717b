"""Golden datasets: a YAML or JSON file naming samples and, per stage, the labels to check against.

    name: street-golden
    root: .                              # relative to this file; no label may leave it
    samples: [frame_000, frame_001]      # optional: else found from the labels
    stages:
      detection:                         # a stage name the pipeline uses
        labels: annotations.json         # COCO: samples are images, matched by file-name stem
        iou_threshold: 0.5
        score_threshold: 0.3
        pass: {metric: f1, min: 1.0}     # when a sample counts as correct
      segmentation:
        labels: masks/{sample_id}.*      # PNG or NPY, chosen per sample by extension
        classes: [background, road, car]
        ignore_index: 255
        pass: {metric: miou, min: 0.75}

docs/ground-truth.md is the reference. Loading validates the file (pydantic, unknown keys
refused); labels are read lazily and cached, and a sample without labels is "unlabeled".
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from stagewatch._names import NAME_PATTERN
from stagewatch.daemon.groundtruth.coco import CocoGroundTruth, Objects
from stagewatch.daemon.groundtruth.formats import (
    KINDS,
    LabelError,
    PointLabels,
    first_unknown_class,
    kind_of,
    load_coco,
    load_mask,
    load_point_labels,
    regular_file,
)

SampleId = Annotated[str, Field(pattern=NAME_PATTERN)]
StageName = SampleId
METRICS_BY_KIND = {
    "boxes": ("f1", "precision", "recall"),
    "mask": ("miou", "accuracy"),
    "point_labels": ("miou", "accuracy"),
}
# How people read each metric's key (as the dashboard's columns and the CLI's tables spell them).
METRIC_NAMES = {"f1": "F1", "precision": "precision", "recall": "recall", "miou": "mIoU", "accuracy": "accuracy"}
MAX_DATASET_FILE_BYTES = 16 * 1024**2
DEFAULT_PASS = {"boxes": ("f1", 1.0), "mask": ("miou", 0.75), "point_labels": ("accuracy", 0.9)}
Fraction = Annotated[float, Field(ge=0, le=1)]


class DatasetError(ValueError):
    """A dataset file that cannot be used; the message names the file and the key."""


def _relative_path(value: str) -> str:
    if value.startswith(("/", "~")) or "\x00" in value or ".." in Path(value).parts:
        raise ValueError("must be a path relative to the dataset root, without '..'")
    return value


RelativePath = Annotated[str, Field(min_length=1, max_length=1024), AfterValidator(_relative_path)]


class PassCriterion(BaseModel):
    model_config = ConfigDict(extra="forbid")
    metric: Literal["f1", "precision", "recall", "miou", "accuracy"]
    min: Fraction


class StageLabels(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    labels: RelativePath
    kind: Literal["boxes", "mask", "point_labels"] | None = None
    iou_type: Literal["bbox", "segm"] = "bbox"
    iou_threshold: Annotated[float, Field(gt=0, le=1)] = 0.5
    score_threshold: Fraction = 0.0
    classes: list[Annotated[str, Field(max_length=128)]] | None = None
    ignore_index: int | None = None
    pass_: PassCriterion | None = Field(None, alias="pass")

    @model_validator(mode="after")
    def _consistent(self) -> StageLabels:
        self.kind = self.kind or _kind_of_template(self.labels)
        if self.kind in ("mask", "point_labels") and not self.classes:
            raise ValueError(f"a {self.kind} stage needs 'classes' (class names, index = label value)")
        if self.kind == "boxes" and "{sample_id}" in self.labels:
            raise ValueError("boxes come from one COCO file for all samples: no {sample_id} in 'labels'")
        if self.pass_ is not None and self.pass_.metric not in METRICS_BY_KIND[self.kind]:
            raise ValueError(
                f"pass.metric {self.pass_.metric!r} does not apply to {self.kind}; "
                f"use one of {', '.join(METRICS_BY_KIND[self.kind])}"
            )
        return self

    @property
    def criterion(self) -> tuple[str, float]:
        return (self.pass_.metric, self.pass_.min) if self.pass_ else DEFAULT_PASS[self.kind or "boxes"]


class SampleEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: SampleId
    input: RelativePath | None = None
    labels: dict[StageName, Annotated[str, Field(max_length=1024)]] = {}  # per-stage override


class DatasetSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Annotated[str, Field(min_length=1, max_length=128)]
    description: str = ""
    root: str = "."
    # Where each sample's input image lies ({sample_id} replaced), for drawing boxes and masks on it.
    inputs: RelativePath | None = None
    samples: list[SampleId | SampleEntry] | None = None
    stages: dict[StageName, StageLabels] = Field(min_length=1)


def _kind_of_template(labels: str) -> str:
    if labels.endswith(".*"):
        raise ValueError("labels ending in '.*' need an explicit kind (mask or point_labels)")
    try:
        return kind_of(labels)
    except LabelError as error:
        raise ValueError(str(error)) from None


class GoldenDataset:
    """A validated dataset file with its labels, loaded on first use and cached."""

    def __init__(self, path: Path, spec: DatasetSpec) -> None:
        self.path = path
        self.spec = spec
        self.root = (path.parent / spec.root).resolve()
        self._entries = {e.id: e for e in (_entry(s) for s in spec.samples or [])}
        self.samples = list(self._entries) if spec.samples is not None else self._discover_samples()

    @property
    def name(self) -> str:
        return self.spec.name

    # -- paths ----------------------------------------------------------------------------------
    def inside_root(self, relative: str) -> Path:
        """`relative` under the root; DatasetError if it would leave it (also through symlinks)."""
        path = (self.root / relative).resolve()
        if not path.is_relative_to(self.root):
            raise DatasetError(f"{self.path}: {relative!r} leaves the dataset root {self.root}")
        return path

    def label_path(self, stage: str, sample_id: str) -> Path | None:
        """The sample's label file for a stage, or None when it has none (unlabeled)."""
        labels = self.spec.stages[stage]
        entry = self._entries.get(sample_id)
        template = entry.labels.get(stage, labels.labels) if entry else labels.labels
        relative = template.replace("{sample_id}", sample_id)
        if relative.endswith(".*"):
            found = [self.inside_root(relative[:-1] + ext[1:]) for ext, kind in KINDS.items() if kind == labels.kind]
            return next((path for path in found if path.is_file()), None)
        path = self.inside_root(relative)
        return path if path.is_file() else None

    def input_path(self, sample_id: str) -> Path | None:
        """The sample's input image (its entry's `input`, else the `inputs` template), if it exists."""
        entry = self._entries.get(sample_id)
        relative = entry.input if entry and entry.input else self.spec.inputs
        if not relative:
            return None
        path = self.inside_root(relative.replace("{sample_id}", sample_id))
        return path if path.is_file() else None

    def _discover_samples(self) -> list[str]:
        found: dict[str, None] = {}
        for name, labels in self.spec.stages.items():
            if labels.kind == "boxes":
                coco = self.coco(name)
                found.update(
                    dict.fromkeys(_stem(image.get("file_name", image["id"])) for image in coco.images.values())
                )
            else:
                found.update(dict.fromkeys(discover_ids(self.root, labels.labels)))
        return list(found)

    # -- labels ---------------------------------------------------------------------------------
    @functools.cache  # noqa: B019 - one dataset object per file, kept as long as its runs
    def coco(self, stage: str) -> CocoGroundTruth:
        labels = self.spec.stages[stage]
        return load_coco(self.inside_root(labels.labels), labels.iou_type)

    @functools.cache  # noqa: B019
    def _coco_index(self, stage: str) -> dict[str, int]:
        return self.coco(stage).image_by_name()

    def image_id(self, stage: str, sample_id: str) -> int | None:
        return self._coco_index(stage).get(sample_id)

    def truth(self, stage: str, sample_id: str) -> Objects | np.ndarray | PointLabels | None:
        """The sample's ground truth for a stage; None when unlabeled. LabelError when unreadable."""
        labels = self.spec.stages[stage]
        if labels.kind == "boxes":
            image_id = self.image_id(stage, sample_id)
            if image_id is None:
                return None
            return self.coco(stage).objects.get(image_id, Objects.empty())
        path = self.label_path(stage, sample_id)
        if path is None:
            return None
        return _load_cached(path, labels.kind)


@functools.lru_cache(maxsize=256)
def _load_cached(path: Path, kind: str) -> np.ndarray | PointLabels:
    return load_mask(path) if kind == "mask" else load_point_labels(path)


def discover_ids(root: Path, template: str) -> list[str]:
    """The sample ids of the label files a template names, in file order: what `{sample_id}`
    matched (`masks/{sample_id}.*`, `{sample_id}_gtFine_labelTrainIds.png`,
    `scans/{sample_id}/{sample_id}_vh_clean_2.labels.ply`). A trailing `.*` is one extension,
    so an id keeps its own dots (`frame_20260101T120000.123456`)."""
    if "{sample_id}" not in template:
        return []
    pattern = template_pattern(template)
    ids = []
    for path in sorted(root.glob(template.replace("{sample_id}", "*"))):
        match = pattern.fullmatch(path.relative_to(root).as_posix())
        if match and _SAMPLE_ID.fullmatch(match["id"]):
            ids.append(match["id"])
    return ids


def template_pattern(template: str) -> re.Pattern[str]:
    extension = template.endswith(".*")
    parts = (template[:-2] if extension else template).split("{sample_id}")
    regex = re.escape(parts[0])
    for index, part in enumerate(parts[1:]):
        regex += ("(?P<id>[^/]+)" if index == 0 else "(?P=id)") + re.escape(part)
    return re.compile(regex + (r"\.[^./]+" if extension else ""))


_SAMPLE_ID = re.compile(NAME_PATTERN)


def _entry(sample: str | SampleEntry) -> SampleEntry:
    return sample if isinstance(sample, SampleEntry) else SampleEntry(id=sample)


def _stem(name: Any) -> str:
    return str(name).rsplit("/", 1)[-1].rsplit(".", 1)[0]


def load_dataset(path: str | Path) -> GoldenDataset:
    """Read and validate a dataset file (YAML or JSON). DatasetError says what is wrong and where."""
    path = Path(path).absolute()
    try:
        text = regular_file(path, MAX_DATASET_FILE_BYTES).read_text()
    except LabelError as error:
        raise DatasetError(f"{error}; expected the dataset file (YAML or JSON)") from None
    except OSError as error:
        raise DatasetError(f"{path}: cannot read the dataset file ({error.strerror})") from None
    except UnicodeDecodeError:
        raise DatasetError(f"{path}: not a text file") from None
    try:
        document = _parse(path, text)
    except ValueError as error:
        raise DatasetError(f"{path}: {error}") from None
    if not isinstance(document, dict):
        raise DatasetError(f"{path}: expected a mapping with name, stages (and samples)")
    try:
        spec = DatasetSpec.model_validate(document)
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'file'}: {e['msg']}" for e in error.errors()[:5])
        raise DatasetError(f"{path}: {problems}") from None
    try:
        return GoldenDataset(path, spec)
    except LabelError as error:
        raise DatasetError(str(error)) from None


def _parse(path: Path, text: str) -> Any:
    if path.suffix.lower() == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"not valid JSON ({error})") from None
        except RecursionError:
            raise ValueError("nested too deep to be a dataset file") from None
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as error:  # where, not what: the file may be anything (a secret, say)
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ValueError(f"not valid YAML{where}") from None
    except RecursionError:
        raise ValueError("nested too deep to be a dataset file") from None


def validate_dataset(
    dataset: GoldenDataset, progress: Callable[[int, int], object] = lambda done, total: None
) -> dict[str, Any]:
    """Read every label of every sample: counts per format, missing and invalid labels.

    What `stagewatch gt validate` prints. A missing label is allowed (the sample is then
    unlabeled for that stage); an invalid one is a problem to fix. `progress(labels read,
    labels)` is called as it goes.
    """
    total, done = len(dataset.spec.stages) * len(dataset.samples), 0
    report: dict[str, Any] = {
        "dataset": dataset.name,
        "file": str(dataset.path),
        "root": str(dataset.root),
        "samples": len(dataset.samples),
        "stages": {},
        "ok": True,
    }
    for stage, labels in dataset.spec.stages.items():
        formats: dict[str, int] = {}
        notes: dict[str, int] = {}  # what loaders left out (a mesh's faces), and in how many files
        missing, invalid = [], []
        if labels.kind == "boxes":
            try:
                dataset.coco(stage)
            except LabelError as error:  # one broken COCO file: say it once, not per sample
                report["stages"][stage] = {
                    "kind": labels.kind,
                    "formats": {},
                    "labeled": 0,
                    "missing": [],
                    "invalid": [{"sample_id": None, "error": str(error)}],
                    "notes": {},
                }
                report["ok"] = False
                continue
        for sample_id in dataset.samples:
            done += 1
            progress(done, total)
            try:
                truth = dataset.truth(stage, sample_id)
            except (LabelError, DatasetError) as error:
                invalid.append({"sample_id": sample_id, "error": str(error)})
                continue
            if truth is None:
                missing.append(sample_id)
                continue
            suffix = (
                Path(labels.labels).suffix if labels.kind == "boxes" else dataset.label_path(stage, sample_id).suffix
            )
            formats[suffix.lower()] = formats.get(suffix.lower(), 0) + 1
            for note in getattr(truth, "notes", ()):
                notes[note] = notes.get(note, 0) + 1
            problem = _check_classes(truth, labels)
            if problem:
                invalid.append({"sample_id": sample_id, "error": f"{dataset.label_path(stage, sample_id)}: {problem}"})
        report["stages"][stage] = {
            "kind": labels.kind,
            "formats": formats,
            "labeled": sum(formats.values()),
            "missing": missing,
            "invalid": invalid,
            "notes": notes,
        }
        report["ok"] = report["ok"] and not invalid
    report["inputs"] = inputs = _input_images(dataset)
    report["ok"] = report["ok"] and not (inputs and inputs["refused"])
    return report


def _input_images(dataset: GoldenDataset) -> dict[str, Any] | None:
    """How many samples have the input image the dataset names (None when it names none): a
    missing one is allowed (its boxes are drawn on a grey canvas), one outside the root is not."""
    if dataset.spec.inputs is None and not any(e.input for e in dataset._entries.values()):
        return None
    found, missing, refused = 0, [], []
    for sample_id in dataset.samples:
        try:
            path = dataset.input_path(sample_id)
        except DatasetError as error:
            refused.append({"sample_id": sample_id, "error": str(error)})
            continue
        if path is None:
            missing.append(sample_id)
        else:
            found += 1
    return {"found": found, "missing": missing, "refused": refused}


def _check_classes(truth: Any, labels: StageLabels) -> str | None:
    if labels.kind == "boxes" or labels.classes is None:
        return None
    values = truth.labels if isinstance(truth, PointLabels) else truth
    known = len(labels.classes)
    unknown = first_unknown_class(values, known, labels.ignore_index)
    return None if unknown is None else f"label {unknown} is not a class index (0..{known - 1})"
