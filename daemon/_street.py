"""A procedural street for the demo: one world per frame (a straight street between building
facades, cars in its lanes, pedestrians on the pavements and crossing) seen by a street
camera and by a spinning lidar on the same mast. Numpy and PIL only, nothing downloaded.

The camera is a pinhole looking down the street (+x forward, +y left, z up, metres). The
street itself (sky, facades with windows, road with lane marks, pavements) does not move, so
it is drawn once as the camera's background plate; a frame is the plate with the frame's
objects drawn far to near, their shadows, the light of the hour and sensor noise. The lidar
casts one ray per beam and azimuth against the ground, the facades and the objects' boxes, so
it returns what a lidar returns: rings on the ground, surfaces that face the sensor, shadows
behind every object.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

HEIGHT, WIDTH = 240, 320
FOCAL = 200.0  # pixels
HORIZON = 95  # image row of the vanishing point
CAMERA_HEIGHT = 1.6  # metres above the road
CAMERA_Y = -1.75  # the mast stands over the middle of the right-hand lane
LIDAR_HEIGHT = 1.9
ROAD_HALF_WIDTH = 7.0  # four lanes of 3.5 m
PAVEMENT = 2.2  # metres between the kerb and the facades
LANES = (-5.25, -1.75, 1.75, 5.25)
# Beams from 24 degrees down to 6 up, one ray a degree of azimuth: rings on the road.
BEAMS = np.radians(np.linspace(-24.0, 6.0, 16))
AZIMUTHS = np.radians(np.arange(0.0, 360.0, 1.0))
LIDAR_RANGE = 60.0
CAR, PEDESTRIAN = 1, 2
MIN_LABELLED = 12  # pixels tall: farther objects are drawn but, as in most datasets, not labelled
CAR_SIZE = (4.4, 1.8, 1.5)  # length, width, height (m)
PEDESTRIAN_SIZE = (0.5, 0.6, 1.75)


@dataclass(frozen=True)
class Thing:
    """A car or a pedestrian: its class and its box on the ground (centre x, y; size)."""

    kind: int
    x: float
    y: float
    size: tuple[float, float, float]
    colour: tuple[int, int, int]

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        length, width, height = self.size
        low = np.array([self.x - length / 2, self.y - width / 2, 0.0])
        return low, low + np.array([length, width, height])


@dataclass(frozen=True)
class Facade:
    """A building's front: the vertical rectangle y = `y` for x0 <= x <= x1, up to `height`."""

    x0: float
    x1: float
    y: float
    height: float
    colour: tuple[int, int, int]


def street(seed: int) -> list[Facade]:
    """The buildings on both sides of the street (the same for every frame of a demo)."""
    rng = np.random.default_rng([seed, 99_999])
    facades = []
    for side in (1.0, -1.0):
        x = -60.0
        while x < 120.0:
            length = float(rng.uniform(8, 22))
            setback = ROAD_HALF_WIDTH + PAVEMENT + float(rng.choice([0.0, 0.0, 1.5]))
            colour = tuple(int(c) for c in rng.choice(_FACADE_COLOURS))
            facades.append(Facade(x, x + length, side * setback, float(rng.uniform(7, 22)), colour))
            x += length + float(rng.choice([0.0, 0.0, 3.0]))  # now and then an alley between two
    return facades


_FACADE_COLOURS = np.array([(196, 170, 140), (170, 160, 150), (150, 90, 70), (210, 200, 180), (120, 120, 130)])
_CAR_COLOURS = np.array(
    [(200, 30, 30), (30, 60, 160), (230, 230, 230), (20, 20, 20), (120, 120, 125), (40, 110, 60), (220, 180, 40)]
)
_CLOTHES = np.array([(40, 40, 90), (150, 30, 40), (60, 60, 60), (200, 200, 190), (30, 100, 120), (90, 60, 40)])
_ASPHALT = np.array([78, 78, 82], np.float32)


def traffic(rng: np.random.Generator) -> list[Thing]:
    """A frame's cars (in lanes, ahead of and around the mast) and pedestrians (on the pavements,
    some crossing), with dark cars among them that the camera barely tells from the road."""
    things = []
    for _ in range(int(rng.integers(3, 8))):
        lane = float(rng.choice(LANES))
        dark = rng.random() < 0.1  # the colour of asphalt: a realistic miss
        colour = tuple(int(c) for c in (_ASPHALT + 6 if dark else rng.choice(_CAR_COLOURS)))
        ahead = rng.random() < 0.75  # most in the camera's view, the others around the mast
        x = float(rng.uniform(6, 40) if ahead else rng.uniform(-30, 6))
        things.append(Thing(CAR, x, lane + float(rng.normal(0, 0.2)), CAR_SIZE, colour))
    for _ in range(int(rng.integers(1, 6))):
        crossing = rng.random() < 0.25
        side = float(rng.choice([-1.0, 1.0]))
        kerb = ROAD_HALF_WIDTH + float(rng.uniform(0.4, PAVEMENT - 0.4))
        y = float(rng.uniform(-6, 6)) if crossing else side * kerb
        colour = tuple(int(c) for c in rng.choice(_CLOTHES))
        things.append(Thing(PEDESTRIAN, float(rng.uniform(-15, 30)), y, PEDESTRIAN_SIZE, colour))
    return _apart(things)


def _apart(things: list[Thing]) -> list[Thing]:
    """Drop any object whose box overlaps one kept before it (two cars in one place)."""
    kept: list[Thing] = []
    for thing in things:
        low, high = thing.bounds()
        if all(
            (high[:2] <= other[0][:2]).any() or (low[:2] >= other[1][:2]).any() for other in map(Thing.bounds, kept)
        ):
            kept.append(thing)
    return kept


# -- the camera ------------------------------------------------------------------------------------
def _project(x: np.ndarray | float, y: np.ndarray | float, z: np.ndarray | float) -> tuple:
    """World point -> image column, row (x must be ahead of the camera)."""
    return WIDTH / 2 - FOCAL * (np.asarray(y) - CAMERA_Y) / x, HORIZON + FOCAL * (CAMERA_HEIGHT - np.asarray(z)) / x


def plate(facades: list[Facade]) -> np.ndarray:
    """The empty street as the camera sees it (HxWx3 float32 in [0, 1]): sky, facades with rows
    of windows, pavements, the road with its lane marks, each pixel the nearest surface."""
    rows, columns = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):  # rows above the horizon meet no ground
        return _plate(facades, rows, columns).astype(np.float32)


def _plate(facades: list[Facade], rows: np.ndarray, columns: np.ndarray) -> np.ndarray:
    picture = _sky(rows)
    depth = np.full((HEIGHT, WIDTH), np.inf)
    below = rows > HORIZON + 0.5
    ground_x = np.where(below, FOCAL * CAMERA_HEIGHT / np.maximum(rows - HORIZON, 0.5), np.inf)
    ground_y = CAMERA_Y + (WIDTH / 2 - columns) * ground_x / FOCAL
    depth[below] = ground_x[below]
    picture[below] = _ground(ground_x, ground_y)[below]
    for facade in facades:
        across = facade.y - CAMERA_Y
        toward = (WIDTH / 2 - columns) * across > 0  # columns on the facade's side of the street
        x = np.where(toward, FOCAL * across / np.where(columns == WIDTH / 2, 1e-9, WIDTH / 2 - columns), np.inf)
        z = CAMERA_HEIGHT - (rows - HORIZON) * x / FOCAL
        hit = toward & (x > 0.5) & (x >= facade.x0) & (x <= facade.x1) & (z >= 0) & (z <= facade.height) & (x < depth)
        depth[hit] = x[hit]
        picture[hit] = _wall(facade, x[hit], z[hit])
    return picture


def _sky(rows: np.ndarray) -> np.ndarray:
    share = np.clip(rows / HORIZON, 0, 1)[..., None]
    return (np.array([0.45, 0.62, 0.86]) * (1 - share) + np.array([0.78, 0.85, 0.93]) * share) * np.ones((1, 1, 3))


def _ground(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Asphalt, white dashed lane lines, a double centre line, kerbs and paving."""
    colour = np.empty((*x.shape, 3))
    colour[:] = _ASPHALT / 255
    dashed = (np.abs(np.abs(y) - 3.5) < 0.08) & (np.mod(x, 9.0) < 3.0)
    centre = np.abs(np.abs(y) - 0.15) < 0.07
    colour[dashed] = (0.92, 0.92, 0.9)
    colour[centre] = (0.9, 0.78, 0.25)
    kerb = (np.abs(y) >= ROAD_HALF_WIDTH) & (np.abs(y) < ROAD_HALF_WIDTH + 0.2)
    paving = np.abs(y) >= ROAD_HALF_WIDTH + 0.2
    colour[kerb] = (0.75, 0.75, 0.72)
    slabs = (np.mod(x, 1.2) < 0.05) | (np.mod(y, 1.2) < 0.05)
    colour[paving] = np.where(slabs[paving][:, None], (0.55, 0.54, 0.52), (0.68, 0.66, 0.63))
    return colour


def _wall(facade: Facade, x: np.ndarray, z: np.ndarray) -> np.ndarray:
    """A facade's colour with windows (dark glass) on every floor but the ground floor's door band."""
    colour = np.tile(np.array(facade.colour, np.float64) / 255, (len(x), 1))
    window = (np.mod(x - facade.x0, 3.0) > 1.0) & (np.mod(z, 3.0) > 0.9) & (np.mod(z, 3.0) < 2.3) & (z > 2.5)
    colour[window] = (0.22, 0.27, 0.33)
    shop = (z < 2.6) & (z > 0.3) & (np.mod(x - facade.x0, 6.0) < 4.0)
    colour[shop] = (0.30, 0.33, 0.36)
    return colour


def camera(things: list[Thing], background: np.ndarray, rng: np.random.Generator) -> tuple:
    """The frame (HxWx3 float32), its class mask and the boxes (class, [x, y, w, h]) of the objects
    the camera sees well: drawn far to near, so nearer objects hide farther ones; a box is what
    is visible of its object, and an object mostly hidden or too small gets none (as annotators do)."""
    image = Image.fromarray((background * 255).astype(np.uint8))
    instances = Image.new("L", (WIDTH, HEIGHT), 0)
    seen: list[tuple[int, float]] = []  # (class, area of its whole outline in pixels)
    for thing in sorted(things, key=lambda t: -t.x):
        area = _draw(thing, len(seen) + 1, ImageDraw.Draw(image), ImageDraw.Draw(instances))
        if area is not None:
            seen.append((thing.kind, area))
    light = float(rng.uniform(0.8, 1.15))  # the hour: a dull or a bright afternoon
    frame = np.asarray(image, np.float32) * np.float32(light / 255)
    frame += rng.standard_normal((HEIGHT, WIDTH, 3), np.float32) * np.float32(0.015)  # sensor noise
    instance = np.asarray(instances)
    kinds = np.array([0] + [kind for kind, _ in seen], np.uint8)
    return frame, kinds[instance], _visible_boxes(instance, seen)


def _visible_boxes(instance: np.ndarray, seen: list[tuple[int, float]]) -> list[tuple[int, list[float]]]:
    """Near to far: each object's box around its visible pixels, if it shows at least
    MIN_LABELLED pixels tall and a third of its outline."""
    boxes = []
    for number, (kind, area) in reversed(list(enumerate(seen, 1))):
        rows, columns = np.nonzero(instance == number)
        if not len(rows) or np.ptp(rows) + 1 < MIN_LABELLED or len(rows) < area / 3:
            continue
        x0, y0 = float(columns.min()), float(rows.min())
        boxes.append((kind, [x0, y0, float(columns.max() + 1) - x0, float(rows.max() + 1) - y0]))
    return boxes


def _draw(thing: Thing, number: int, paint: ImageDraw.ImageDraw, label: ImageDraw.ImageDraw) -> float | None:
    """One object on the frame and, as `number`, on the instance mask; the area its shapes would
    cover unhidden, or None where the camera does not see it (behind, beside, under MIN_LABELLED
    pixels tall)."""
    near = thing.x - thing.size[0] / 2
    if near < 3.0:
        return None
    half = thing.size[1] / 2
    left, top = _project(near, thing.y + half, thing.size[2])
    right, bottom = _project(near, thing.y - half, 0.0)
    if right < 0 or left >= WIDTH or bottom - top < MIN_LABELLED:
        return None
    shadow = [left, bottom - 0.08 * (bottom - top), right, bottom + 0.05 * (bottom - top)]
    paint.ellipse(shadow, fill=(60, 60, 64))
    shapes = _car if thing.kind == CAR else _person
    parts = shapes(left, top, right, bottom, thing.colour)
    for shape, box, colour in parts:
        getattr(paint, shape)(box, fill=colour)
        getattr(label, shape)(box, fill=number)
    return float((right - left) * (bottom - top)) * (0.9 if thing.kind == CAR else 0.55)  # the shapes' share


def _car(left: float, top: float, right: float, bottom: float, colour: tuple[int, int, int]) -> list[tuple]:
    """A car from behind: body, cabin with its rear window, lights, wheels."""
    w, h = right - left, bottom - top
    body = (left, top + 0.45 * h, right, bottom - 0.12 * h)
    cabin = (left + 0.12 * w, top, right - 0.12 * w, top + 0.5 * h)
    glass = (left + 0.18 * w, top + 0.08 * h, right - 0.18 * w, top + 0.42 * h)
    darker = tuple(int(c * 0.75) for c in colour)
    return [
        ("rectangle", (left + 0.05 * w, bottom - 0.2 * h, left + 0.28 * w, bottom), (18, 18, 18)),
        ("rectangle", (right - 0.28 * w, bottom - 0.2 * h, right - 0.05 * w, bottom), (18, 18, 18)),
        ("rounded_rectangle" if w > 8 else "rectangle", cabin, darker),
        ("rectangle", glass, (70, 90, 110)),
        ("rectangle", body, colour),
        ("rectangle", (left + 0.04 * w, top + 0.55 * h, left + 0.16 * w, top + 0.65 * h), (200, 20, 20)),
        ("rectangle", (right - 0.16 * w, top + 0.55 * h, right - 0.04 * w, top + 0.65 * h), (200, 20, 20)),
    ]


def _person(left: float, top: float, right: float, bottom: float, colour: tuple[int, int, int]) -> list[tuple]:
    """A pedestrian: head, torso in their clothes' colour, two legs."""
    w, h = right - left, bottom - top
    middle = (left + right) / 2
    return [
        ("ellipse", (middle - 0.22 * w, top, middle + 0.22 * w, top + 0.14 * h), (224, 180, 150)),
        ("rectangle", (left + 0.1 * w, top + 0.14 * h, right - 0.1 * w, top + 0.55 * h), colour),
        ("rectangle", (middle - 0.32 * w, top + 0.55 * h, middle - 0.04 * w, bottom), (35, 35, 45)),
        ("rectangle", (middle + 0.04 * w, top + 0.55 * h, middle + 0.32 * w, bottom), (35, 35, 45)),
    ]


# -- the lidar -------------------------------------------------------------------------------------
def lidar(things: list[Thing], facades: list[Facade], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One sweep: the nearest surface along every beam (ground, facade or object), with range
    noise and a few dropped returns; points (N x 3, metres, the road at z = 0) and labels
    (0 ground and buildings, 1 car, 2 pedestrian)."""
    elevation, azimuth = np.meshgrid(BEAMS, AZIMUTHS, indexing="ij")
    rays = np.stack(
        [np.cos(elevation) * np.cos(azimuth), np.cos(elevation) * np.sin(azimuth), np.sin(elevation)], -1
    ).reshape(-1, 3)
    origin = np.array([0.0, CAMERA_Y, LIDAR_HEIGHT])
    distance = np.where(rays[:, 2] < 0, -LIDAR_HEIGHT / np.minimum(rays[:, 2], -1e-12), np.inf)
    label = np.zeros(len(rays), np.int32)
    for facade in facades:
        with np.errstate(divide="ignore", invalid="ignore"):
            t = (facade.y - CAMERA_Y) / rays[:, 1]
            x, z = t * rays[:, 0], LIDAR_HEIGHT + t * rays[:, 2]
        hit = (t > 0) & (x >= facade.x0) & (x <= facade.x1) & (z >= 0) & (z <= facade.height) & (t < distance)
        distance[hit], label[hit] = t[hit], 0
    inverse = 1.0 / np.where(np.abs(rays) < 1e-12, 1e-12, rays)  # no direction is exactly 0
    for thing in things:
        t = _enter(origin, inverse, *thing.bounds())
        hit = t < distance
        distance[hit], label[hit] = t[hit], thing.kind
    keep = (distance < LIDAR_RANGE) & (rng.random(len(rays)) > 0.04)
    measured = distance[keep] + rng.normal(0, 0.02, int(keep.sum()))
    points = origin + rays[keep] * measured[:, None]
    return points.astype(np.float32), label[keep]


def _enter(origin: np.ndarray, inverse: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Where each ray (given as 1 / its direction) enters the box (slab method); inf where it misses."""
    a, b = (low - origin) * inverse, (high - origin) * inverse
    near = np.minimum(a, b).max(axis=1)
    far = np.maximum(a, b).min(axis=1)
    return np.where((far >= near) & (near > 0), near, np.inf)
