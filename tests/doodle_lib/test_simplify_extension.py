"""doodle_lib._simplify, the C arithmetic of drawing.simplify: its own checks (test_drawing.py checks its points)."""
import numpy as np
import pytest

from doodle_lib import _simplify

X, Y = np.array([0.0, 1.0, 2.0]), np.array([0.0, 5.0, 1.0])


def call(x=X, y=Y, sizes=(3,), max_ink=1e5):
    return _simplify.simplify(x, y, list(sizes), float(np.min(x)), float(np.min(y)), 2.0, max_ink)


def test_returns_the_ink_the_kept_points_and_each_strokes_end():
    ink, points, ends = call(sizes=(2, 1))
    x, y = np.frombuffer(points).reshape(2, -1)
    assert ink == 261.0 and ends == [2, 3]  # hypot(51, 255) = 260.05 units of the first stroke, rounded up; a dot
    assert x.tolist() == [0.0, 51.0, 102.0] and y.tolist() == [0.0, 255.0, 51.0]


def test_too_much_ink_allocates_nothing():
    assert call(sizes=(2, 1), max_ink=100.0) == (261.0, None, None)


@pytest.mark.parametrize("sizes", [(3, 0), (2,), (4,), (0, 3), (1, 1, 1, 1), (-1, 4), ()])
def test_sizes_must_cover_the_points_exactly(sizes):
    with pytest.raises(ValueError, match="sizes must be positive"):
        call(sizes=sizes)


@pytest.mark.parametrize("x,error", [
    (X.astype(np.float32), TypeError), (X.reshape(3, 1), TypeError), (np.arange(6.0)[::2], ValueError),
    (np.array([0.0, np.nan, 1.0]), ValueError), (X[:2], ValueError),
])
def test_only_matching_contiguous_finite_float64_buffers(x, error):
    with pytest.raises(error):
        _simplify.simplify(x, Y, [len(x)], 0.0, 0.0, 2.0, 1e5)
