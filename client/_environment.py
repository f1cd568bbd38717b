"""What a run started on, for `stagewatch compare`'s environment diff: Python, the platform, the
versions of the packages a CV/3D pipeline depends on and the GPU models.

Read cheaply, once per process: package versions from their installed metadata
(importlib.metadata, which imports none of them), GPU models from the NVIDIA driver's /proc
files (no NVML, no CUDA context). A package not installed is left out.
"""

from __future__ import annotations

import importlib.metadata
import platform
import sys
from pathlib import Path
from typing import Any

# Distribution names (what pip installs), several for one import name where builds differ.
PACKAGES = (
    "numpy",
    "scipy",
    "torch",
    "torchvision",
    "tensorflow",
    "jax",
    "jaxlib",
    "cupy-cuda12x",
    "cupy-cuda11x",
    "onnxruntime",
    "onnxruntime-gpu",
    "tensorrt",
    "opencv-python",
    "opencv-python-headless",
    "opencv-contrib-python",
    "opencv-contrib-python-headless",
    "open3d",
    "open3d-cpu",
    "pillow",
    "scikit-image",
    "scikit-learn",
    "ultralytics",
    "mmcv",
    "mmdet",
    "detectron2",
    "timm",
    "transformers",
    "pycocotools",
    "stagewatch",
)
NVIDIA_GPUS = Path("/proc/driver/nvidia/gpus")
MAX_GPUS = 64

_found: dict[str, Any] | None = None


def environment() -> dict[str, Any]:
    """{"python", "implementation", "platform", "packages": {name: version}, "gpus": [model]};
    computed on the first call of the process (about 15 ms), the same dict after."""
    global _found
    if _found is None:
        _found = {
            "python": platform.python_version(),
            "implementation": sys.implementation.name,
            "platform": platform.platform(),
            "packages": package_versions(PACKAGES),
            "gpus": gpu_models(),
        }
    return _found


def package_versions(names: tuple[str, ...]) -> dict[str, str]:
    found = {}
    for name in names:
        try:
            found[name] = importlib.metadata.version(name)
        except (importlib.metadata.PackageNotFoundError, ValueError, OSError):
            continue  # not installed (or metadata unreadable: as good as not there)
    return found


def gpu_models(root: Path = NVIDIA_GPUS) -> list[str]:
    """The model of each NVIDIA GPU the driver lists, in bus order; [] without the driver."""
    try:
        folders = sorted(root.iterdir())[:MAX_GPUS]
    except OSError:
        return []
    models = []
    for folder in folders:
        try:
            text = (folder / "information").read_text(errors="replace")
        except OSError:
            continue
        for line in text.splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "Model":
                models.append(value.strip()[:200])
                break
    return models
