"""Strokes to the 28x28 bitmap, exactly as Google rendered Quick, Draw!'s numpy_bitmap files."""
from __future__ import annotations

import sys
from collections.abc import Sequence

import numpy as np

from doodle_lib import _simplify

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
MAX_ABS_TIME = sys.float_info.max  # the browser's times count from when its page opened: no bound but a float's

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
    ts_all: list = []
    ends = []
    for stroke in strokes:
        if type(stroke) is not list or len(stroke) not in (2, 3):
            return None
        xs, ys = stroke[0], stroke[1]
        if type(xs) is not list or type(ys) is not list or len(xs) != len(ys) or not xs:
            return None
        if len(stroke) == 3:
            if type(stroke[2]) is not list or len(stroke[2]) != len(xs):
                return None
            ts_all += stroke[2]
        xs_all += xs
        ys_all += ys
        ends.append(len(xs_all))
    if len(xs_all) > MAX_POINTS or not {*map(type, xs_all), *map(type, ys_all), *map(type, ts_all)} <= {int, float}:
        return None
    try:
        coordinates = np.array([xs_all, ys_all], dtype=np.float64)
        times = np.array(ts_all, dtype=np.float64)
    except OverflowError:  # an int beyond float: let the careful path report it as before
        return None
    if not np.abs(coordinates).max() <= MAX_ABS_COORDINATE:  # NaN compares false too
        return None
    if not np.isfinite(times).all():
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
        if len(stroke) == 3 and len(ts := _coordinates(stroke[2], i, "t", MAX_ABS_TIME)) != len(xs):
            raise DrawingError(f"stroke {i} has {len(xs)} points but {len(ts)} times")
        total += len(xs)
        if total > MAX_POINTS:
            raise DrawingError(f"too many points: more than {MAX_POINTS} in all strokes")
        parsed.append((xs, ys))
    return parsed


def _coordinates(values: object, stroke: int, axis: str, limit: float = MAX_ABS_COORDINATE) -> np.ndarray:
    """One axis of one stroke (x, y or t) as finite floats within ±limit, or a DrawingError saying what is wrong."""
    if not isinstance(values, Sequence) or isinstance(values, (str, bytes)):
        raise DrawingError(f"stroke {stroke}: {axis} must be a list of numbers")
    if len(values) > MAX_POINTS:
        raise DrawingError(f"stroke {stroke}: too many points (at most {MAX_POINTS})")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise DrawingError(f"stroke {stroke}: {axis} must hold only numbers")
    try:
        array = np.asarray(values, dtype=np.float64)
    except OverflowError:  # an int beyond any float
        raise DrawingError(f"stroke {stroke}: {axis} values beyond ±{limit:g}") from None
    if not np.all(np.isfinite(array)):
        raise DrawingError(f"stroke {stroke}: {axis} holds NaN or infinite values")
    if np.any(np.abs(array) > limit):
        raise DrawingError(f"stroke {stroke}: {axis} values beyond ±{limit:g}")
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
    ctx.set_source_rgb(1, 1, 1)
    # Centred on the shorter axis (Google offsets by half the room left below 256 on each axis), as cairo path data
    # built in C: cairo_append_path replays it as the move_to and line_to calls, without a Python call a point.
    x = np.concatenate([xs for xs, _ in strokes], dtype=np.float64)
    y = np.concatenate([ys for _, ys in strokes], dtype=np.float64)
    data, counts = _simplify.path(x, y, [len(xs) for xs, _ in strokes], BOX)
    path = cairo.ffi.new("cairo_path_t *")
    path.data = cairo.ffi.from_buffer("cairo_path_data_t[]", data)
    for count in counts:
        # Each stroke stroked on its own, as Google did: one path of overlapping strokes is not two composited.
        path.num_data = count
        cairo.cairo.cairo_append_path(ctx._pointer, path)
        ctx.stroke()
        path.data += count
    surface.flush()
    pixels = np.frombuffer(surface.get_data(), dtype=np.uint8).reshape(SIDE, surface.get_stride())
    return pixels[:, 0 : SIDE * 4 : 4].copy()  # one channel of ARGB32 (all equal: white on black)


def simplify(strokes: Strokes) -> Strokes:
    """Normalise raw strokes the way Google simplified its data: align, scale to 0..255, resample, RDP."""
    # In C (doodle_lib/_simplify.c): every value computed with the same floating-point operations as the
    # stroke-by-stroke reference in tests/doodle_lib/test_drawing.py (np.interp's formula, np.hypot, math.hypot
    # for a chord, numpy's round half to even), so the output is identical, in microseconds.
    assert RESAMPLE_SPACING == 1.0  # the samples are the integers 0, 1, ... below each stroke's length
    x = np.concatenate([xs for xs, _ in strokes], dtype=np.float64)
    y = np.concatenate([ys for _, ys in strokes], dtype=np.float64)
    sizes = [len(xs) for xs, _ in strokes]
    # The minima by numpy: which of -0.0 and 0.0 its reduction returns is its own, and the points keep that sign.
    ink, points, ends = _simplify.simplify(x, y, sizes, x.min(), y.min(), RDP_EPSILON, MAX_INK)
    if points is None:  # a scribble of 65,536 points can hold millions of units: refused before allocating them
        raise DrawingError(f"too much ink: {ink:.0f} units of stroke in a 256-unit box (at most {MAX_INK}): "
                           "a doodle is a few lines, not shading")
    x, y = np.frombuffer(points).reshape(2, -1)  # a bytearray: writable arrays, as before
    return [(x[a:b], y[a:b]) for a, b in zip([0, *ends[:-1]], ends)]


def strokes_to_bitmap(strokes: object, *, raw: bool = True) -> np.ndarray:
    """Validate, normalise (raw browser strokes) and render a drawing to the 28x28 model input."""
    parsed = validate_strokes(strokes)
    return render(simplify(parsed) if raw else parsed)
