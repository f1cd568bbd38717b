"""The difference map's outcome colours stay apart from every class colour (a false negative in
Tableau's blue read as the class drawn in that blue: "car" in the demo), measured in CIEDE2000,
the CIE's perceptual colour difference (about 2 is just noticeable)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from stagewatch.daemon.groundtruth.diff import MISMATCH_COLOURS, OUTCOME_COLOURS
from stagewatch.ui._cloud3d import LABEL_COLOURS
from stagewatch.ui._failures import CLASS_PALETTE

APART = 20.0  # CIEDE2000: colours this far apart are read as different colours, not shades of one
OUTCOMES_DRAWN = ("true_positive", "false_positive", "false_negative")  # the coloured ones (the others grey)


def lab(rgb: tuple[int, int, int]) -> tuple[float, float, float]:
    """sRGB (D65) -> CIELAB."""
    linear = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in (v / 255 for v in rgb)]
    matrix = ((0.4124564, 0.3575761, 0.1804375), (0.2126729, 0.7151522, 0.0721750), (0.0193339, 0.1191920, 0.9503041))
    white = (0.95047, 1.0, 1.08883)
    x, y, z = (sum(m * c for m, c in zip(row, linear, strict=True)) / w for row, w in zip(matrix, white, strict=True))
    f = [t ** (1 / 3) if t > (6 / 29) ** 3 else t / (3 * (6 / 29) ** 2) + 4 / 29 for t in (x, y, z)]
    return 116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])


def ciede2000(first: tuple[float, float, float], second: tuple[float, float, float]) -> float:
    """The CIEDE2000 difference of two CIELAB colours (Sharma, Wu and Dalal 2005)."""
    (l1, a1, b1), (l2, a2, b2) = first, second
    mean_c = (math.hypot(a1, b1) + math.hypot(a2, b2)) / 2
    g = 0.5 * (1 - math.sqrt(mean_c**7 / (mean_c**7 + 25**7)))
    c1, c2 = math.hypot(a1 * (1 + g), b1), math.hypot(a2 * (1 + g), b2)
    h1 = math.degrees(math.atan2(b1, a1 * (1 + g))) % 360
    h2 = math.degrees(math.atan2(b2, a2 * (1 + g))) % 360
    dh = 0.0 if c1 * c2 == 0 else (h2 - h1 + 180) % 360 - 180
    if c1 * c2 == 0:
        mean_h = h1 + h2
    elif abs(h1 - h2) <= 180:
        mean_h = (h1 + h2) / 2
    else:
        mean_h = (h1 + h2 + 360) / 2 if h1 + h2 < 360 else (h1 + h2 - 360) / 2
    mean_l, mean_cp = (l1 + l2) / 2, (c1 + c2) / 2
    t = (
        1
        - 0.17 * math.cos(math.radians(mean_h - 30))
        + 0.24 * math.cos(math.radians(2 * mean_h))
        + 0.32 * math.cos(math.radians(3 * mean_h + 6))
        - 0.20 * math.cos(math.radians(4 * mean_h - 63))
    )
    s_l = 1 + 0.015 * (mean_l - 50) ** 2 / math.sqrt(20 + (mean_l - 50) ** 2)
    s_c, s_h = 1 + 0.045 * mean_cp, 1 + 0.015 * mean_cp * t
    r_t = (
        -math.sin(math.radians(60 * math.exp(-(((mean_h - 275) / 25) ** 2))))
        * 2
        * math.sqrt(mean_cp**7 / (mean_cp**7 + 25**7))
    )
    dl, dc, dhh = (l2 - l1) / s_l, (c2 - c1) / s_c, 2 * math.sqrt(c1 * c2) * math.sin(math.radians(dh / 2)) / s_h
    return math.sqrt(dl**2 + dc**2 + dhh**2 + r_t * dc * dhh)


@pytest.mark.parametrize(
    ("first", "second", "expected"),
    [  # pairs of Sharma, Wu and Dalal's test data
        ((50.0, 2.6772, -79.7751), (50.0, 0.0, -82.7485), 2.0425),
        ((50.0, 2.5, 0.0), (73.0, 25.0, -18.0), 27.1492),
        ((50.0, 2.5, 0.0), (50.0, 0.0, -2.5), 4.3065),
        ((2.0776, 0.0795, -1.135), (0.9033, -0.0636, -0.5514), 0.9082),
    ],
)
def test_the_distance_is_ciede2000(first, second, expected) -> None:
    assert ciede2000(first, second) == pytest.approx(expected, abs=1e-4)


def _class_colours() -> list[tuple[int, int, int]]:
    """Every class colour the pages draw: the pictures' palette and the 3D view's (hex)."""
    pictures = [tuple(int(v) for v in rgb) for rgb in CLASS_PALETTE]
    in_3d = [tuple(int(h[i : i + 2], 16) for i in (1, 3, 5)) for h in LABEL_COLOURS]
    return pictures + in_3d


@pytest.mark.parametrize("outcome", OUTCOMES_DRAWN)
def test_each_outcome_colour_is_far_from_every_class_colour(outcome: str) -> None:
    distances = {rgb: ciede2000(lab(OUTCOME_COLOURS[outcome]), lab(rgb)) for rgb in _class_colours()}
    nearest = min(distances, key=distances.__getitem__)
    assert distances[nearest] > APART, f"{outcome} {OUTCOME_COLOURS[outcome]} is near class colour {nearest}"


def test_a_cloud_s_wrong_label_colour_is_far_from_every_class_colour_and_from_right() -> None:
    right, wrong = MISMATCH_COLOURS
    assert min(ciede2000(lab(wrong), lab(rgb)) for rgb in _class_colours()) > APART
    assert ciede2000(lab(wrong), lab(right)) > APART


def test_the_outcome_colours_are_far_from_each_other() -> None:
    colours = list(OUTCOME_COLOURS.values())
    pairs = [(a, b) for i, a in enumerate(colours) for b in colours[i + 1 :]]
    assert min(ciede2000(lab(a), lab(b)) for a, b in pairs) > APART
    assert np.unique(np.array(colours), axis=0).shape[0] == len(colours)
