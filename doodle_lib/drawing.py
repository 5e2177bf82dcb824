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

Strokes = list[tuple[np.ndarray, np.ndarray]]


class DrawingError(ValueError):
    """A drawing that cannot be rendered; the message names the problem."""


def validate_strokes(strokes: object) -> Strokes:
    """Check strokes in the Quick, Draw! format ([[xs], [ys], optional [ts]] each) and return them as float arrays."""
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
    extent = np.max([[xs.max(), ys.max()] for xs, ys in strokes], axis=0)
    dx, dy = (BOX - extent) / 2
    ctx.set_source_rgb(1, 1, 1)
    for xs, ys in strokes:
        ctx.move_to(xs[0] + dx, ys[0] + dy)
        for x, y in zip(xs, ys):
            ctx.line_to(x + dx, y + dy)
        ctx.stroke()
    surface.flush()
    pixels = np.frombuffer(surface.get_data(), dtype=np.uint8).reshape(SIDE, surface.get_stride())
    return pixels[:, 0 : SIDE * 4 : 4].copy()  # one channel of ARGB32 (all equal: white on black)


def simplify(strokes: Strokes) -> Strokes:
    """Normalise raw strokes the way Google simplified its data: align, scale to 0..255, resample, RDP."""
    points = np.concatenate([np.stack([xs, ys], axis=1) for xs, ys in strokes])
    low = points.min(axis=0)
    extent = float((points.max(axis=0) - low).max())
    factor = 255.0 / extent if extent > 0 else 1.0
    simplified: Strokes = []
    for xs, ys in strokes:
        line = (np.stack([xs, ys], axis=1) - low) * factor
        line = _rdp(_resample(line, RESAMPLE_SPACING), RDP_EPSILON)
        line = np.round(line)
        simplified.append((line[:, 0], line[:, 1]))
    return simplified


def _resample(line: np.ndarray, spacing: float) -> np.ndarray:
    """Points every `spacing` units along the polyline, keeping both ends."""
    if len(line) < 2:
        return line
    lengths = np.hypot(*np.diff(line, axis=0).T)
    distance = np.concatenate([[0.0], np.cumsum(lengths)])
    if distance[-1] == 0:
        return line[:1]
    steps = np.arange(0.0, distance[-1], spacing)
    samples = np.append(steps, distance[-1])
    return np.stack([np.interp(samples, distance, line[:, k]) for k in (0, 1)], axis=1)


def _rdp(line: np.ndarray, epsilon: float) -> np.ndarray:
    """Ramer-Douglas-Peucker simplification, iterative so long strokes cannot overflow the stack."""
    if len(line) < 3:
        return line
    keep = np.zeros(len(line), dtype=bool)
    keep[[0, -1]] = True
    pending = [(0, len(line) - 1)]
    while pending:
        first, last = pending.pop()
        if last - first < 2:
            continue
        start, end = line[first], line[last]
        inner = line[first + 1 : last]
        chord = end - start
        norm = math.hypot(*chord)
        if norm == 0:
            distances = np.hypot(*(inner - start).T)
        else:
            distances = np.abs(chord[0] * (inner[:, 1] - start[1]) - chord[1] * (inner[:, 0] - start[0])) / norm
        index = int(np.argmax(distances))
        if distances[index] > epsilon:
            split = first + 1 + index
            keep[split] = True
            pending += [(first, split), (split, last)]
    return line[keep]


def strokes_to_bitmap(strokes: object, *, raw: bool = True) -> np.ndarray:
    """Validate, normalise (raw browser strokes) and render a drawing to the 28x28 model input."""
    parsed = validate_strokes(strokes)
    return render(simplify(parsed) if raw else parsed)
