"""Preprocessing: pixel-exact rendering of the golden fixture, raw browser strokes, bad input."""
import math

import numpy as np
import pytest

from doodle_lib.dataset import load_bitmaps
from doodle_lib.drawing import MAX_POINTS, MAX_STROKES, DrawingError, render, strokes_to_bitmap, validate_strokes
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
    ],
)
def test_bad_drawings_get_a_clear_error(strokes, message):
    with pytest.raises(DrawingError, match=message):
        strokes_to_bitmap(strokes)
