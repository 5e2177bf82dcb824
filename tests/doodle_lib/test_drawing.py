"""Preprocessing: pixel-exact rendering of the golden fixture, raw browser strokes, bad input."""
import math

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from doodle_lib import drawing
from doodle_lib.dataset import load_bitmaps
from doodle_lib.drawing import (
    MAX_POINTS, MAX_STROKES, DrawingError, render, simplify, strokes_to_bitmap, validate_strokes,
)
from tests.conftest import SAMPLE, fixture_drawings

DRAWINGS = fixture_drawings()
IDS = [f"{category}-{row}" for category, row, _ in DRAWINGS]


@pytest.fixture(scope="module")
def bitmaps():
    return {category: load_bitmaps(SAMPLE, category, 25) for category in {c for c, _, _ in DRAWINGS}}


@pytest.mark.parametrize("category,row,strokes", DRAWINGS, ids=IDS)
def test_fixture_renders_pixel_for_pixel(category, row, strokes, bitmaps):
    rendered = render(validate_strokes(strokes))
    assert rendered.dtype == np.uint8 and rendered.shape == (28, 28)
    np.testing.assert_array_equal(rendered, bitmaps[category][row])


def browser_style(strokes, rng, scale=3.7, shift=(412.25, -97.5)):
    """The fixture as a browser might send it: scaled, shifted, float noise, extra collinear points, timing."""
    raw, clock = [], 0.0
    for xs, ys in strokes:
        xs, ys = np.asarray(xs, float), np.asarray(ys, float)
        if len(xs) > 1:  # a midpoint on every segment: collinear points the simplification must drop
            xs = np.insert(xs, range(1, len(xs)), (xs[:-1] + xs[1:]) / 2)
            ys = np.insert(ys, range(1, len(ys)), (ys[:-1] + ys[1:]) / 2)
        noise = rng.normal(0, 0.05, (2, len(xs)))
        times = clock + 16.7 * np.arange(len(xs))
        clock = times[-1] + 250
        raw.append([list(xs * scale + shift[0] + noise[0]), list(ys * scale + shift[1] + noise[1]), list(times)])
    return raw


def test_browser_strokes_render_nearly_the_same(bitmaps):
    rng = np.random.default_rng(7)
    differences = []
    for category, row, strokes in DRAWINGS:
        rendered = strokes_to_bitmap(browser_style(strokes, rng)).astype(int)
        differences.append(np.abs(rendered - bitmaps[category][row]).mean())
    # Re-simplifying moves a stroke by a fraction of a unit: a few grey levels on average, nothing more.
    assert np.mean(differences) < 2.0
    assert np.max(differences) < 8.0


def test_raw_rendering_ignores_scale_and_position(bitmaps):
    _, _, strokes = DRAWINGS[0]
    rng = np.random.default_rng(1)
    small = strokes_to_bitmap(browser_style(strokes, rng, scale=0.5, shift=(3, 4)))
    large = strokes_to_bitmap(browser_style(strokes, rng, scale=9.0, shift=(-5000, 800)))
    assert np.abs(small.astype(int) - large).mean() < 2.0


def test_a_single_dot_renders_at_the_centre():
    bitmap = strokes_to_bitmap([[[10.5], [20.25]]])
    # A dot is one line width across (1.5 px here), so it is grey rather than white.
    ink = np.argwhere(bitmap > 0)
    assert bitmap.max() > 64
    assert np.all(np.abs(ink.mean(axis=0) - 13.5) < 1)


@pytest.mark.parametrize(
    "strokes,message",
    [
        ([], "empty"),
        ("not strokes", "list of strokes"),
        ([[[1, 2, 3], [1, 2]]], "3 x values but 2 y values"),
        ([[[], []]], "stroke 0 is empty"),
        ([[[1, math.nan], [1, 2]]], "NaN or infinite"),
        ([[[1, 2], [1, math.inf]]], "NaN or infinite"),
        ([[[1, "2"], [1, 2]]], "only numbers"),
        ([[[1, True], [1, 2]]], "only numbers"),
        ([[[1, 2]]], "stroke 0 must be"),
        ([[[1], [2], [3], [4]]], "stroke 0 must be"),
        ([[[1e300, 2], [1, 2]]], "beyond"),
        ([[[0], [0]]] * (MAX_STROKES + 1), "too many strokes"),
        ([[list(range(MAX_POINTS + 1)), list(range(MAX_POINTS + 1))]], "too many points"),
        ([[list(range(40_000)), list(range(40_000))]] * 2, "too many points"),
        ([[[0, 1000] * 30_000, [0, 1] * 30_000]], "too much ink"),  # 60,000 box-widths of zigzag
    ],
)
def test_bad_drawings_get_a_clear_error(strokes, message):
    with pytest.raises(DrawingError, match=message):
        strokes_to_bitmap(strokes)


@pytest.mark.parametrize(
    "strokes,message",
    [
        ([[[0, 10], [0, 10], [1, 2, 3, 4, 5]]], "stroke 0 has 2 points but 5 times"),
        ([[[0, 10], [0, 10], [1, 2]], [[0, 10], [0, 10], [3]]], "stroke 1 has 2 points but 1 times"),
        ([[[0, 10], [0, 10], [1, math.nan]]], "stroke 0: t holds NaN or infinite"),
        ([[[0, 10], [0, 10], [1, math.inf]]], "stroke 0: t holds NaN or infinite"),
        ([[[0, 10], [0, 10], [1, "2"]]], "stroke 0: t must hold only numbers"),
        ([[[0, 10], [0, 10], 12]], "stroke 0: t must be a list"),
        ([[[0, 10], [0, 10], [1, 10**400]]], "stroke 0: t values beyond"),
    ],
)
def test_bad_times_are_refused_by_both_paths(strokes, message):
    assert drawing._parse_plain(strokes) is None  # the fast path leaves them to the careful one, which names them
    with pytest.raises(DrawingError, match=message):
        validate_strokes(strokes)


def test_times_need_no_coordinate_bound():
    """Times count from when the page opened: a tab left open for days still draws."""
    strokes = [[[0, 10], [0, 10], [3e8, 3.1e8]]]
    assert drawing._parse_plain(strokes) is not None
    assert len(drawing._validate_one_by_one(strokes)) == 1


# The straightforward implementation simplify() replaced (stroke by stroke: np.interp, a stack-based RDP);
# the fast one must give the very same points, so the model sees exactly what it saw before.


def reference_simplify(strokes):
    points = np.concatenate([np.stack([xs, ys], axis=1) for xs, ys in strokes])
    low = points.min(axis=0)
    extent = float((points.max(axis=0) - low).max())
    factor = 255.0 / extent if extent > 0 else 1.0
    simplified = []
    for xs, ys in strokes:
        line = (np.stack([xs, ys], axis=1) - low) * factor
        line = np.round(reference_rdp(reference_resample(line, 1.0), 2.0))
        simplified.append((line[:, 0], line[:, 1]))
    return simplified


def reference_resample(line, spacing):
    if len(line) < 2:
        return line
    lengths = np.hypot(*np.diff(line, axis=0).T)
    distance = np.concatenate([[0.0], np.cumsum(lengths)])
    if distance[-1] == 0:
        return line[:1]
    samples = np.append(np.arange(0.0, distance[-1], spacing), distance[-1])
    return np.stack([np.interp(samples, distance, line[:, k]) for k in (0, 1)], axis=1)


def reference_rdp(line, epsilon):
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


def assert_same_strokes(found, expected):
    assert len(found) == len(expected)
    for (xs, ys), (ref_xs, ref_ys) in zip(found, expected):
        np.testing.assert_array_equal(xs, ref_xs)
        np.testing.assert_array_equal(ys, ref_ys)


@pytest.mark.parametrize("form", ["as-stored", "browser"])
def test_simplify_matches_the_reference_on_the_golden_drawings(form):
    rng = np.random.default_rng(11)
    for _, _, strokes in DRAWINGS:
        parsed = validate_strokes(browser_style(strokes, rng) if form == "browser" else strokes)
        assert_same_strokes(simplify(parsed), reference_simplify(parsed))


SMALL_GRID = st.integers(0, 12)  # many ties, repeated points, collinear runs and closed loops
ANY_NUMBER = st.one_of(st.integers(-10_000, 10_000), st.floats(-1e7, 1e7, allow_nan=False, allow_infinity=False))


def drawings(number):
    stroke = st.lists(st.tuples(number, number), min_size=1, max_size=40).map(lambda p: [list(c) for c in zip(*p)])
    return st.lists(stroke, min_size=1, max_size=8)


@hypothesis_settings(max_examples=400, deadline=None)
@given(st.one_of(drawings(SMALL_GRID), drawings(ANY_NUMBER), drawings(st.floats(0, 3))))
def test_simplify_matches_the_reference_on_random_strokes(strokes):
    parsed = validate_strokes(strokes)
    assert_same_strokes(parsed, drawing._validate_one_by_one(strokes))  # the fast parse, the careful one
    points = np.concatenate([np.stack(stroke, axis=1) for stroke in parsed])
    extent = float((points.max(axis=0) - points.min(axis=0)).max())
    assume(extent == 0 or 255.0 / extent < math.inf)  # the reference overflows to NaN below 1e-306 units
    expected = reference_simplify(parsed)
    assert_same_strokes(simplify(parsed), expected)
    np.testing.assert_array_equal(strokes_to_bitmap(strokes), render(expected))


def test_a_drawing_a_trillionth_of_a_trillionth_of_a_unit_wide_is_a_dot():
    # The reference scaled it by 255/5e-324 = inf and crashed on NaN; now it renders like a dot.
    np.testing.assert_array_equal(strokes_to_bitmap([[[0.0, 5e-324], [1.0, 1.0]]]), strokes_to_bitmap([[[3], [4]]]))
