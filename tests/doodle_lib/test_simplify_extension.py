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


def test_path_is_a_move_to_then_a_line_to_every_point_centred():
    data, counts = _simplify.path(X, Y, [1, 2], 256.0)
    assert counts == [4, 6]  # units: a one-point stroke is a move_to and a line_to (a dot); the other, 1 + 2
    units = np.frombuffer(data, np.float64).reshape(-1, 2)
    headers = units[0::2].view(np.int32)[:, :2].tolist()
    assert headers == [[0, 2], [1, 2], [0, 2], [1, 2], [1, 2]]  # MOVE_TO, LINE_TO; each element two units long
    dx, dy = (256 - 2) / 2, (256 - 5) / 2  # half the room left below the box on each axis
    assert units[1::2].tolist() == [[dx, dy], [dx, dy], [1 + dx, 5 + dy], [1 + dx, 5 + dy], [2 + dx, 1 + dy]]


@pytest.mark.parametrize("sizes", [(3, 0), (2,), (4,), (1, 1, 1, 1), (-1, 4), ()])
def test_path_sizes_must_cover_the_points_exactly(sizes):
    with pytest.raises(ValueError, match="sizes must be positive"):
        _simplify.path(X, Y, list(sizes), 256.0)
