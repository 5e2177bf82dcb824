/* doodle_lib._simplify: the arithmetic of doodle_lib.drawing.simplify (scale to 0..255, resample every unit,
   Ramer-Douglas-Peucker, round) in C, the hot path of the web app's /api/predict; and path(), render's strokes as
   cairo path data (see above that function).

   Every value is computed with the same IEEE-754 double operations, on the same operands, as the numpy code this
   replaced and the stroke-by-stroke reference in tests/doodle_lib/test_drawing.py (np.interp's formula, np.hypot,
   math.hypot for a chord, numpy's round), so the points are bit-for-bit the same. That holds only without
   contraction or reassociation: setup.py compiles with -ffp-contract=off (a fused multiply-add rounds once where
   numpy rounds twice); never build this with -ffast-math.

   simplify(x, y, sizes, low_x, low_y, epsilon, max_ink) -> (ink, points, ends)
     x, y          C-contiguous float64 buffers, all strokes one after another (finite values: validate_strokes)
     sizes         the number of points of each stroke, a sequence of ints (each >= 1, summing to len(x))
     low_x, low_y  x.min() and y.min() by numpy: when -0.0 and 0.0 are both the minimum, which one numpy's
                   reduction returns depends on its SIMD code, and the points keep that sign ((x - low) * factor)
     epsilon       the RDP tolerance
     ink           the resampled length, the sum over strokes of ceil(stroke length) in the 0..255 box, a float
     points        None when ink > max_ink (nothing allocated); else a bytearray of the kept points, rounded:
                   all x (float64), then all y
     ends          None, or a list: one past the last kept point of each stroke */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <float.h>
#include <math.h>
#include <string.h>

/* CPython 3.11's math.hypot for two numbers: Modules/mathmodule.c's vector_norm() with n == 2, statement for
   statement (Dekker's split, compensated sums, one differential correction; dividing by max for subnormals).
   It is not the C library's hypot(): the two differ in the last bit for about 1 pair in 170, and the reference
   computes the chord length with math.hypot. Checked against Python 3.11's math.hypot bit for bit on 50 million
   pairs (uniform, integer, half-integer, random bit patterns, subnormal). CPython 3.12 rewrote vector_norm with
   fma(); 3.11 is the only Python this project runs (requires-python, every image). */
static double vector_norm_2(double a, double b)
{
    const double T27 = 134217729.0; /* ldexp(1.0, 27) + 1.0: Dekker's split */
    double vec[2], max, x, scale, oldcsum, csum = 1.0, frac1 = 0.0, frac2 = 0.0, frac3 = 0.0;
    double t, hi, lo, h;
    int max_e, i;

    vec[0] = fabs(a);
    vec[1] = fabs(b);
    max = vec[1] > vec[0] ? vec[1] : vec[0]; /* finite values: no NaN or infinity to special-case */
    if (max == 0.0) {
        return max;
    }
    frexp(max, &max_e);
    if (max_e < -1023) {
        /* ldexp(1.0, -max_e) would overflow: CPython 3.11 divides by max instead (subnormal chords only). */
        for (i = 0; i < 2; i++) {
            x = vec[i];
            x /= max;
            x = x * x;
            oldcsum = csum;
            csum += x;
            frac1 += (oldcsum - csum) + x;
        }
        return max * sqrt(csum - 1.0 + frac1);
    }
    scale = ldexp(1.0, -max_e);
    for (i = 0; i < 2; i++) {
        x = vec[i];
        x *= scale;
        t = x * T27;
        hi = t - (t - x);
        lo = x - hi;

        x = hi * hi;
        oldcsum = csum;
        csum += x;
        frac1 += (oldcsum - csum) + x;

        x = 2.0 * hi * lo;
        oldcsum = csum;
        csum += x;
        frac2 += (oldcsum - csum) + x;

        frac3 += lo * lo;
    }
    h = sqrt(csum - 1.0 + (frac1 + frac2 + frac3));

    x = h;
    t = x * T27;
    hi = t - (t - x);
    lo = x - hi;

    x = -hi * hi;
    oldcsum = csum;
    csum += x;
    frac1 += (oldcsum - csum) + x;

    x = -2.0 * hi * lo;
    oldcsum = csum;
    csum += x;
    frac2 += (oldcsum - csum) + x;

    x = -lo * lo;
    oldcsum = csum;
    csum += x;
    frac3 += (oldcsum - csum) + x;

    x = csum - 1.0 + (frac1 + frac2 + frac3);
    return (h + x / (2.0 * h)) / scale;
}

/* The float64 buffer behind `obj`, one-dimensional and contiguous. */
static int get_doubles(PyObject *obj, Py_buffer *view, const char *name)
{
    if (PyObject_GetBuffer(obj, view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0) {
        return -1;
    }
    if (view->ndim != 1 || view->itemsize != sizeof(double) || strcmp(view->format, "d") != 0) {
        PyErr_Format(PyExc_TypeError, "%s must be a one-dimensional float64 buffer", name);
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

/* x and y as float64 buffers of the same length, at least one point, into the views and n: 0; or -1 with an
   exception set and no buffer held. */
static int get_points(PyObject *x_obj, PyObject *y_obj, Py_buffer *x_view, Py_buffer *y_view, Py_ssize_t *n)
{
    if (get_doubles(x_obj, x_view, "x") < 0) {
        return -1;
    }
    if (get_doubles(y_obj, y_view, "y") < 0) {
        PyBuffer_Release(x_view);
        return -1;
    }
    *n = x_view->len / (Py_ssize_t)sizeof(double);
    if (y_view->len != x_view->len || *n == 0) {
        PyErr_SetString(PyExc_ValueError, "x and y must hold the same number of points, at least one");
        PyBuffer_Release(y_view);
        PyBuffer_Release(x_view);
        return -1;
    }
    return 0;
}

/* The stroke sizes of a sequence of ints, each >= 1, summing to n, as a new array (PyMem_Free it) and their
   count: 0; or -1 with an exception set and nothing allocated. */
static int get_sizes(PyObject *sizes_obj, Py_ssize_t n, Py_ssize_t **sizes, Py_ssize_t *strokes)
{
    PyObject *sequence = PySequence_Fast(sizes_obj, "sizes must be a sequence of ints");
    Py_ssize_t s, total = 0;

    if (!sequence) {
        return -1;
    }
    *strokes = PySequence_Fast_GET_SIZE(sequence);
    if (!(*sizes = PyMem_Malloc((*strokes + 1) * sizeof(Py_ssize_t)))) {
        Py_DECREF(sequence);
        PyErr_NoMemory();
        return -1;
    }
    for (s = 0; s < *strokes; s++) {
        (*sizes)[s] = PyLong_AsSsize_t(PySequence_Fast_GET_ITEM(sequence, s));
        if ((*sizes)[s] == -1 && PyErr_Occurred()) {
            break;
        }
        if ((*sizes)[s] < 1 || (*sizes)[s] > n - total) {
            PyErr_SetString(PyExc_ValueError, "sizes must be positive and sum to the number of points");
            break;
        }
        total += (*sizes)[s];
    }
    if (s == *strokes && total != n) {
        PyErr_SetString(PyExc_ValueError, "sizes must be positive and sum to the number of points");
    }
    Py_DECREF(sequence);
    if (PyErr_Occurred()) {
        PyMem_Free(*sizes);
        *sizes = NULL;
        return -1;
    }
    return 0;
}

/* Points every unit along one stroke (n points from x, y; d: the distance along it), keeping both ends, into
   out_x, out_y; returns how many (ceil of the stroke's length, plus one). np.interp at the samples 0, 1, ...
   below the length: sample k lies on segment i when d[i] <= k < d[i + 1], that is ceil(d[i]) <= k < ceil(d[i + 1]);
   on a point exactly, np.interp returns the point itself. */
static Py_ssize_t resample(const double *x, const double *y, const double *d, Py_ssize_t n,
                           double *out_x, double *out_y)
{
    Py_ssize_t i, k, m = 0;

    for (i = 0; i + 1 < n; i++) {
        Py_ssize_t below = (Py_ssize_t)ceil(d[i]), above = (Py_ssize_t)ceil(d[i + 1]);
        if (below == above) {
            continue; /* no sample on this segment */
        }
        double low = d[i], run = d[i + 1] - low;
        /* np.interp's slope, (x1 - x0) / run: numpy divides for every sample, the same operands each time. */
        double slope_x = (x[i + 1] - x[i]) / run, slope_y = (y[i + 1] - y[i]) / run;
        for (k = below; k < above; k++, m++) {
            if ((double)k == low) {
                out_x[m] = x[i];
                out_y[m] = y[i];
            }
            else { /* np.interp: the slope times the distance along, plus the start, rounded at each step */
                out_x[m] = slope_x * ((double)k - low) + x[i];
                out_y[m] = slope_y * ((double)k - low) + y[i];
            }
        }
    }
    /* The last point; the first when the stroke has no length (a dot, however many points). */
    out_x[m] = d[n - 1] > 0 ? x[n - 1] : x[0];
    out_y[m] = d[n - 1] > 0 ? y[n - 1] : y[0];
    return m + 1;
}

/* Ramer-Douglas-Peucker on one resampled stroke of m points: marks the points kept in keep[0..m-1].
   stack: room for m indices. Which points are kept does not depend on the order the segments are split in. */
static void rdp(const double *x, const double *y, Py_ssize_t m, double epsilon, char *keep, Py_ssize_t *stack)
{
    Py_ssize_t pending = 0, first, last, i, split;

    keep[0] = keep[m - 1] = 1;
    if (m >= 3) {
        stack[pending++] = 0;
        stack[pending++] = m - 1;
    }
    while (pending) { /* intervals of two or more gaps, disjoint: at most m / 2 of them pending */
        last = stack[--pending];
        first = stack[--pending];
        double sx = x[first], sy = y[first];
        double cx = x[last] - sx, cy = y[last] - sy;
        double norm = vector_norm_2(cx, cy), farthest = -1.0, distance;
        split = first + 1;
        for (i = first + 1; i < last; i++) {
            double ax = x[i] - sx, ay = y[i] - sy;
            if (norm == 0.0) { /* a closed chord (a loop): the distance to the start point, by np.hypot */
                distance = hypot(ax, ay);
            }
            else { /* the distance to the chord, each step rounded as numpy does */
                distance = fabs(cx * ay - cy * ax) / norm;
            }
            if (distance > farthest) { /* strictly: the first point at the maximum, as np.argmax */
                farthest = distance;
                split = i;
            }
        }
        if (farthest > epsilon) {
            keep[split] = 1;
            if (split - first >= 2) {
                stack[pending++] = first;
                stack[pending++] = split;
            }
            if (last - split >= 2) {
                stack[pending++] = split;
                stack[pending++] = last;
            }
        }
    }
}

/* Align to the top left (low_x, low_y: the caller's numpy minima), scale the longer side to 255
   ((x - low) * factor, factor = 255 / extent) into sx, sy, and measure each stroke: d, the distance along it,
   np.hypot (the C library's hypot) of each segment summed in stroke order like np.cumsum.
   Returns the ink, the sum of ceil(stroke length). */
static double scale_and_measure(const double *x, const double *y, Py_ssize_t n, const Py_ssize_t *sizes,
                                Py_ssize_t strokes, double low_x, double low_y, double *sx, double *sy, double *d)
{
    double high_x = x[0], high_y = y[0], extent, factor, ink = 0.0;
    Py_ssize_t i, s, start, last;

    for (i = 1; i < n; i++) {
        high_x = x[i] > high_x ? x[i] : high_x;
        high_y = y[i] > high_y ? y[i] : high_y;
    }
    extent = fmax(high_x - low_x, high_y - low_y); /* the sign of a zero maximum makes no difference */
    factor = extent > 0 ? 255.0 / extent : 1.0;
    if (isinf(factor)) { /* an extent below 1e-306 units: a dot, not an overflow to NaN */
        factor = 1.0;
    }
    for (i = 0; i < n; i++) {
        sx[i] = (x[i] - low_x) * factor;
        sy[i] = (y[i] - low_y) * factor;
    }
    for (s = 0, start = 0; s < strokes; start += sizes[s++]) {
        last = start + sizes[s] - 1;
        d[start] = 0.0;
        for (i = start; i < last; i++) {
            d[i + 1] = d[i] + hypot(sx[i + 1] - sx[i], sy[i + 1] - sy[i]);
        }
        ink += ceil(d[last]); /* whole numbers far below 2 ** 53: the sum is exact, as numpy's */
    }
    return ink;
}

/* Resample and simplify every stroke; returns (ink, points, ends) as described at the top, NULL on error. */
static PyObject *run(const double *x, const double *y, Py_ssize_t n, const Py_ssize_t *sizes, Py_ssize_t strokes,
                     double low_x, double low_y, double epsilon, double max_ink)
{
    PyObject *points = NULL, *ends = NULL, *result = NULL;
    double *work, *sx, *sy, *d, *rx, *ry, *out, ink;
    Py_ssize_t *stack, room, s, i, start, at, m, kept = 0;
    char *keep;

    /* Scaled x, y and the distance along the strokes: 3 n doubles. */
    if (!(work = PyMem_Malloc(3 * n * sizeof(double)))) {
        return PyErr_NoMemory();
    }
    sx = work;
    sy = work + n;
    d = work + 2 * n;
    ink = scale_and_measure(x, y, n, sizes, strokes, low_x, low_y, sx, sy, d);
    if (ink > max_ink) { /* a scribble of 65,536 points can hold millions of units: refuse it before allocating */
        PyMem_Free(work);
        return Py_BuildValue("dOO", ink, Py_None, Py_None);
    }

    /* Room for the resampled points (the ink plus one a stroke), the RDP stack and the kept mask. */
    room = (Py_ssize_t)ink + strokes;
    if (!(rx = PyMem_Malloc(room * (2 * sizeof(double) + sizeof(Py_ssize_t) + 1)))) {
        PyMem_Free(work);
        return PyErr_NoMemory();
    }
    ry = rx + room;
    stack = (Py_ssize_t *)(ry + room);
    keep = (char *)(stack + room);
    memset(keep, 0, room);
    if (!(ends = PyList_New(strokes))) {
        goto done;
    }
    for (s = 0, start = 0, at = 0; s < strokes; start += sizes[s++], at += m) {
        m = resample(sx + start, sy + start, d + start, sizes[s], rx + at, ry + at);
        rdp(rx + at, ry + at, m, epsilon, keep + at, stack);
        for (i = at; i < at + m; i++) {
            kept += keep[i];
        }
        PyObject *end = PyLong_FromSsize_t(kept);
        if (!end) {
            goto done;
        }
        PyList_SET_ITEM(ends, s, end);
    }

    /* The kept points, rounded half to even like numpy's round(): rint() in the default rounding mode. */
    if (!(points = PyByteArray_FromStringAndSize(NULL, 2 * kept * (Py_ssize_t)sizeof(double)))) {
        goto done;
    }
    out = (double *)PyByteArray_AS_STRING(points);
    for (i = 0, m = 0; i < at; i++) {
        if (keep[i]) {
            out[m] = rint(rx[i]);
            out[kept + m] = rint(ry[i]);
            m++;
        }
    }
    result = Py_BuildValue("dOO", ink, points, ends);

done:
    Py_XDECREF(points);
    Py_XDECREF(ends);
    PyMem_Free(rx);
    PyMem_Free(work);
    return result;
}

static PyObject *simplify(PyObject *module, PyObject *args)
{
    PyObject *x_obj, *y_obj, *sizes_obj, *result = NULL;
    Py_buffer x_view = {0}, y_view = {0};
    Py_ssize_t n, strokes, s, *sizes = NULL;
    const double *x, *y;
    double low_x, low_y, epsilon, max_ink;

    if (!PyArg_ParseTuple(args, "OOOdddd", &x_obj, &y_obj, &sizes_obj, &low_x, &low_y, &epsilon, &max_ink)) {
        return NULL;
    }
    if (get_points(x_obj, y_obj, &x_view, &y_view, &n) < 0) {
        return NULL;
    }
    x = x_view.buf;
    y = y_view.buf;
    for (s = 0; s < n; s++) {
        if (!isfinite(x[s]) || !isfinite(y[s])) {
            PyErr_SetString(PyExc_ValueError, "coordinates must be finite");
            goto done;
        }
    }
    if (get_sizes(sizes_obj, n, &sizes, &strokes) < 0) {
        goto done;
    }
    result = run(x, y, n, sizes, strokes, low_x, low_y, epsilon, max_ink);

done:
    PyMem_Free(sizes);
    PyBuffer_Release(&y_view);
    PyBuffer_Release(&x_view);
    return result;
}

/* cairo's path element, cairo_path_data_t: a header unit {int type; int length} then `length - 1` point units
   {double x, y}, each unit 16 bytes (a union). The layout is cairo's public ABI; no cairo header is needed. */
typedef union {
    struct {
        int type;
        int length;
    } header;
    struct {
        double x, y;
    } point;
} path_unit;

enum { PATH_MOVE_TO = 0, PATH_LINE_TO = 1 };

/* path(x, y, sizes, box) -> (data, counts): the strokes as one cairo_path_data_t array for cairo_append_path,
   shifted by ((box - max x) / 2, (box - max y) / 2) as doodle_lib.drawing.render centres a drawing: each stroke a
   move_to its first point, then a line_to every point from the first again (a one-point stroke is a dot). counts:
   the units of each stroke's path, one list item a stroke, in order. */
static PyObject *path(PyObject *module, PyObject *args)
{
    PyObject *x_obj, *y_obj, *sizes_obj, *data = NULL, *counts = NULL, *result = NULL;
    Py_buffer x_view = {0}, y_view = {0};
    Py_ssize_t n, strokes, s, i, start, *sizes = NULL;
    const double *x, *y;
    double box, high_x, high_y, dx, dy;
    path_unit *unit;

    if (!PyArg_ParseTuple(args, "OOOd", &x_obj, &y_obj, &sizes_obj, &box)) {
        return NULL;
    }
    if (get_points(x_obj, y_obj, &x_view, &y_view, &n) < 0) {
        return NULL;
    }
    x = x_view.buf;
    y = y_view.buf;
    if (get_sizes(sizes_obj, n, &sizes, &strokes) < 0 || !(counts = PyList_New(strokes))) {
        goto done;
    }
    for (s = 0; s < strokes; s++) {
        PyObject *count = PyLong_FromSsize_t(2 * (sizes[s] + 1));
        if (!count) {
            goto done;
        }
        PyList_SET_ITEM(counts, s, count);
    }
    /* The same doubles as the numpy code: the maxima, then (box - max) / 2, then each coordinate plus the shift. */
    high_x = x[0];
    high_y = y[0];
    for (i = 1; i < n; i++) {
        high_x = x[i] > high_x ? x[i] : high_x;
        high_y = y[i] > high_y ? y[i] : high_y;
    }
    dx = (box - high_x) / 2;
    dy = (box - high_y) / 2;
    if (!(data = PyByteArray_FromStringAndSize(NULL, 2 * (n + strokes) * (Py_ssize_t)sizeof(path_unit)))) {
        goto done;
    }
    unit = (path_unit *)PyByteArray_AS_STRING(data);
    for (s = 0, start = 0; s < strokes; start += sizes[s++]) {
        for (i = -1; i < sizes[s]; i++, unit += 2) { /* the move_to (i = -1), then every point from the first again */
            Py_ssize_t at = start + (i < 0 ? 0 : i);
            memset(&unit[0], 0, sizeof(path_unit)); /* the header's padding: no stray bytes */
            unit[0].header.type = i < 0 ? PATH_MOVE_TO : PATH_LINE_TO;
            unit[0].header.length = 2;
            unit[1].point.x = x[at] + dx;
            unit[1].point.y = y[at] + dy;
        }
    }
    result = PyTuple_Pack(2, data, counts);

done:
    PyMem_Free(sizes);
    Py_XDECREF(data);
    Py_XDECREF(counts);
    PyBuffer_Release(&y_view);
    PyBuffer_Release(&x_view);
    return result;
}

static PyMethodDef methods[] = {
    {"simplify", simplify, METH_VARARGS,
     "simplify(x, y, sizes, low_x, low_y, epsilon, max_ink) -> (ink, points, ends): scale, resample, RDP and round "
     "(see doodle_lib/_simplify.c)."},
    {"path", path, METH_VARARGS,
     "path(x, y, sizes, box) -> (data, counts): the strokes, centred, as cairo_path_data_t units for "
     "cairo_append_path, and the units of each stroke (see doodle_lib/_simplify.c)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "doodle_lib._simplify",
    "The arithmetic of doodle_lib.drawing.simplify, bit-for-bit as the numpy reference, and render's path data.", -1, methods,
};

PyMODINIT_FUNC PyInit__simplify(void)
{
    return PyModule_Create(&module);
}
