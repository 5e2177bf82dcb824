"""Strokes to the 28x28 bitmap, exactly as Google rendered Quick, Draw!'s numpy_bitmap files."""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

SIDE = 28  # output bitmap side, pixels
BOX = 256.0  # the simplified format's coordinate box is 0..255
LINE_WIDTH = 16.0  # in box units
PADDING = 16.0  # in box units, on every side, before half the line width
MAX_STROKES = 512
MAX_POINTS = 65_536  # summed over all strokes
MAX_ABS_COORDINATE = 1e7
RESAMPLE_SPACING = 1.0
RDP_EPSILON = 2.0
MAX_INK = 200_000  # resampled points (units of stroke length in the 256 box); real drawings have a few thousand

Strokes = list[tuple[np.ndarray, np.ndarray]]


class DrawingError(ValueError):
    """A drawing that cannot be rendered; the message names the problem."""


def validate_strokes(strokes: object) -> Strokes:
    """Check strokes in the Quick, Draw! format ([[xs], [ys], optional [ts]] each) and return them as float arrays."""
    parsed = _parse_plain(strokes)
    return parsed if parsed is not None else _validate_one_by_one(strokes)


def _parse_plain(strokes: object) -> Strokes | None:
    """The common case in a few calls: plain lists of int and float, all within limits; None for anything else."""
    if type(strokes) is not list or not 0 < len(strokes) <= MAX_STROKES:
        return None
    xs_all: list = []
    ys_all: list = []
    ends = []
    for stroke in strokes:
        if type(stroke) is not list or len(stroke) not in (2, 3):
            return None
        xs, ys = stroke[0], stroke[1]
        if type(xs) is not list or type(ys) is not list or len(xs) != len(ys) or not xs:
            return None
        xs_all += xs
        ys_all += ys
        ends.append(len(xs_all))
    if len(xs_all) > MAX_POINTS or not {*map(type, xs_all), *map(type, ys_all)} <= {int, float}:
        return None
    try:
        coordinates = np.array([xs_all, ys_all], dtype=np.float64)
    except OverflowError:  # an int beyond float: let the careful path report it as before
        return None
    if not np.abs(coordinates).max() <= MAX_ABS_COORDINATE:  # NaN compares false too
        return None
    return [(coordinates[0, a:b], coordinates[1, a:b]) for a, b in zip([0, *ends[:-1]], ends)]


def _validate_one_by_one(strokes: object) -> Strokes:
    """Stroke by stroke, axis by axis: the first problem found is the one the DrawingError names."""
    if not isinstance(strokes, Sequence) or isinstance(strokes, (str, bytes)):
        raise DrawingError("strokes must be a list of strokes, each [[xs], [ys]]")
    if len(strokes) == 0:
        raise DrawingError("the drawing is empty: no strokes")
    if len(strokes) > MAX_STROKES:
        raise DrawingError(f"too many strokes: {len(strokes)} (at most {MAX_STROKES})")
    parsed: Strokes = []
    total = 0
    for i, stroke in enumerate(strokes):
        if not isinstance(stroke, Sequence) or isinstance(stroke, (str, bytes)) or len(stroke) not in (2, 3):
            raise DrawingError(f"stroke {i} must be [[xs], [ys]] or [[xs], [ys], [ts]]")
        xs, ys = (_coordinates(stroke[k], i, axis) for k, axis in ((0, "x"), (1, "y")))
        if len(xs) != len(ys):
            raise DrawingError(f"stroke {i} has {len(xs)} x values but {len(ys)} y values")
        if len(xs) == 0:
            raise DrawingError(f"stroke {i} is empty")
        total += len(xs)
        if total > MAX_POINTS:
            raise DrawingError(f"too many points: more than {MAX_POINTS} in all strokes")
        parsed.append((xs, ys))
    return parsed


def _coordinates(values: object, stroke: int, axis: str) -> np.ndarray:
    """One axis of one stroke as finite floats, or a DrawingError saying what is wrong."""
    if not isinstance(values, Sequence) or isinstance(values, (str, bytes)):
        raise DrawingError(f"stroke {stroke}: {axis} must be a list of numbers")
    if len(values) > MAX_POINTS:
        raise DrawingError(f"stroke {stroke}: too many points (at most {MAX_POINTS})")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise DrawingError(f"stroke {stroke}: {axis} must hold only numbers")
    array = np.asarray(values, dtype=np.float64)
    if not np.all(np.isfinite(array)):
        raise DrawingError(f"stroke {stroke}: {axis} holds NaN or infinite values")
    if np.any(np.abs(array) > MAX_ABS_COORDINATE):
        raise DrawingError(f"stroke {stroke}: {axis} values beyond ±{MAX_ABS_COORDINATE:g}")
    return array


def render(strokes: Strokes) -> np.ndarray:
    """Render strokes already in the simplified 0..255 format to a 28x28 uint8 bitmap (white on black)."""
    import cairocffi as cairo  # imported here: DAG files import this module at parse time

    surface = cairo.ImageSurface(cairo.FORMAT_ARGB32, SIDE, SIDE)
    ctx = cairo.Context(surface)
    ctx.set_line_cap(cairo.LINE_CAP_ROUND)
    ctx.set_line_join(cairo.LINE_JOIN_ROUND)
    ctx.set_line_width(LINE_WIDTH)
    margin = PADDING + LINE_WIDTH / 2
    scale = SIDE / (BOX + 2 * margin)
    ctx.scale(scale, scale)
    ctx.translate(margin, margin)
    ctx.set_source_rgb(0, 0, 0)
    ctx.paint()
    # Centre on the shorter axis: Google offsets by half the room left below 256 on each axis.
    dx = (BOX - max(xs.max() for xs, _ in strokes)) / 2
    dy = (BOX - max(ys.max() for _, ys in strokes)) / 2
    ctx.set_source_rgb(1, 1, 1)
    line_to = ctx.line_to
    for xs, ys in strokes:
        # Shifted as arrays, passed as Python floats: the same doubles, a fraction of the per-point cost.
        px, py = (xs + dx).tolist(), (ys + dy).tolist()
        ctx.move_to(px[0], py[0])
        for x, y in zip(px, py):  # from the first point again: a one-point stroke is a dot
            line_to(x, y)
        ctx.stroke()
    surface.flush()
    pixels = np.frombuffer(surface.get_data(), dtype=np.uint8).reshape(SIDE, surface.get_stride())
    return pixels[:, 0 : SIDE * 4 : 4].copy()  # one channel of ARGB32 (all equal: white on black)


def simplify(strokes: Strokes) -> Strokes:
    """Normalise raw strokes the way Google simplified its data: align, scale to 0..255, resample, RDP."""
    sizes = np.array([len(xs) for xs, _ in strokes])
    x = np.concatenate([xs for xs, _ in strokes])
    y = np.concatenate([ys for _, ys in strokes])
    low_x, low_y = x.min(), y.min()
    extent = float(max(x.max() - low_x, y.max() - low_y))
    factor = 255.0 / extent if extent > 0 else 1.0
    if factor == math.inf:  # an extent below 1e-306 units: a dot, not an overflow to NaN
        factor = 1.0
    x, y, ends = _resample((x - low_x) * factor, (y - low_y) * factor, sizes)
    keep = _rdp(x, y, ends, RDP_EPSILON)
    x, y = x[keep].round(), y[keep].round()
    bounds = keep.cumsum()[ends].tolist()  # one past each stroke's last kept point
    return [(x[a:b], y[a:b]) for a, b in zip([0, *bounds[:-1]], bounds)]


# Both steps below work on all strokes at once (a few numpy calls per drawing, not per stroke or per split)
# and compute every value with the same floating-point operations as the stroke-by-stroke reference in
# tests/doodle_lib/test_drawing.py (np.interp's formula, math.hypot for a chord), so the output is identical.
# They call ndarray methods (a.cumsum(), a.repeat(), a.nonzero()...) rather than np.cumsum, np.repeat, np.flatnonzero:
# the same kernels without numpy's Python-level dispatch, about 0.4 us a call over some 50 calls a drawing (-20%).


def _resample(x: np.ndarray, y: np.ndarray, sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Points every unit along each stroke, keeping both ends; returns x, y and each stroke's last index."""
    assert RESAMPLE_SPACING == 1.0  # the samples are the integers 0, 1, ... below each stroke's length
    starts = sizes.cumsum() - sizes
    lasts = starts + sizes - 1
    lengths = np.hypot(x[1:] - x[:-1], y[1:] - y[:-1])
    distance = np.zeros(len(x))  # along its own stroke, summed in stroke order like np.cumsum of the stroke
    for start, last in zip(starts.tolist(), lasts.tolist()):
        if last > start:
            lengths[start:last].cumsum(out=distance[start + 1 : last + 1])
    # Sample k lies on segment i (points i, i+1) when distance[i] <= k < distance[i+1]: ceil(d_i) <= k < ceil(d_i+1).
    up = np.ceil(distance)
    ink = float(up[lasts].sum())
    if ink > MAX_INK:  # a scribble of 65,536 points can hold millions of units: refuse it before allocating them
        raise DrawingError(f"too much ink: {ink:.0f} units of stroke in a 256-unit box (at most {MAX_INK})")
    counts = (up[1:] - up[:-1]).astype(np.intp)
    counts[lasts[:-1]] = 0  # no segment from one stroke's last point to the next stroke's first
    segment = np.arange(len(counts)).repeat(counts)
    k = np.arange(len(segment)) - (counts.cumsum() - counts - up[:-1]).repeat(counts)
    low = distance[segment]
    run = distance[segment + 1] - low
    on_point = k == low  # np.interp returns the point itself there
    along = k - low
    x0, y0 = x[segment], y[segment]
    inner_x = np.where(on_point, x0, (x[segment + 1] - x0) / run * along + x0)
    inner_y = np.where(on_point, y0, (y[segment + 1] - y0) / run * along + y0)
    # Each stroke: its inner samples, then its last point (its first when it has no length: a dot).
    per_stroke = up[lasts].astype(np.intp) + 1
    ends = per_stroke.cumsum() - 1
    ending = np.where(distance[lasts] > 0, lasts, starts)
    sample = np.ones(len(segment) + len(ends), dtype=bool)
    sample[ends] = False
    out_x, out_y = np.empty(len(sample)), np.empty(len(sample))
    out_x[sample], out_y[sample] = inner_x, inner_y
    out_x[ends], out_y[ends] = x[ending], y[ending]
    return out_x, out_y, ends


def _rdp(x: np.ndarray, y: np.ndarray, ends: np.ndarray, epsilon: float) -> np.ndarray:
    """Ramer-Douglas-Peucker on every stroke at once, one level of splits per pass; the mask of kept points."""
    keep = np.zeros(len(x), dtype=bool)
    first, last = np.concatenate([[0], ends[:-1] + 1]), ends
    keep[first] = keep[last] = True
    wide = last - first >= 2
    first, last = first[wide], last[wide]
    while len(first):
        counts = last - first - 1
        offsets = counts.cumsum() - counts
        inner = np.arange(offsets[-1] + counts[-1]) + (first + 1 - offsets).repeat(counts)
        sx, sy = x[first], y[first]
        cx, cy = x[last] - sx, y[last] - sy
        norm = list(map(math.hypot, cx.tolist(), cy.tolist()))
        # Per inner point: its segment's start, chord and chord length (one gather for all five).
        sx, sy, cx, cy, spread = np.array([sx, sy, cx, cy, norm]).repeat(counts, axis=1)
        ax, ay = x[inner] - sx, y[inner] - sy
        if 0.0 in norm:  # a loop back to its start: distances to the start point there
            closed = spread == 0
            spread[closed] = 1.0
            distances = np.abs(cx * ay - cy * ax) / spread
            distances[closed] = np.hypot(ax[closed], ay[closed])
        else:
            distances = np.abs(cx * ay - cy * ax) / spread
        farthest = np.maximum.reduceat(distances, offsets)
        # The first point at the maximum of each segment (np.argmax's choice among equals).
        at_max = (distances == farthest.repeat(counts)).nonzero()[0]
        far = farthest > epsilon
        split = inner[at_max[at_max.searchsorted(offsets[far])]]
        keep[split] = True
        first, last = np.concatenate([first[far], split]), np.concatenate([split, last[far]])
        wide = last - first >= 2
        first, last = first[wide], last[wide]
    return keep


def strokes_to_bitmap(strokes: object, *, raw: bool = True) -> np.ndarray:
    """Validate, normalise (raw browser strokes) and render a drawing to the 28x28 model input."""
    parsed = validate_strokes(strokes)
    return render(simplify(parsed) if raw else parsed)
