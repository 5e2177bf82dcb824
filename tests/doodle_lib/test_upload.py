"""Uploaded images: any size and polarity back to the renderer's 28x28 bitmap; bad files rejected."""
import io

import numpy as np
import pytest
from PIL import Image, ImageDraw

from doodle_lib.drawing import DrawingError, render, validate_strokes
from doodle_lib.upload import MAX_BYTES, image_to_bitmap
from tests.conftest import fixture_drawings

RENDERED = [render(validate_strokes(strokes)) for _, _, strokes in fixture_drawings()[::5]]


def encode(array: np.ndarray, fmt: str = "PNG", mode: str | None = None) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array, mode).save(buffer, format=fmt)
    return buffer.getvalue()


def test_a_rendered_bitmap_round_trips():
    differences = [np.abs(image_to_bitmap(encode(bitmap)).astype(int) - bitmap).mean() for bitmap in RENDERED]
    assert np.median(differences) == 0
    assert np.mean(differences) < 3


@pytest.mark.parametrize("scale,invert,fmt", [(10, True, "PNG"), (10, False, "JPEG"), (7, True, "JPEG"), (3, False, "PNG")])
def test_large_and_inverted_uploads_come_back_close(scale, invert, fmt):
    for bitmap in RENDERED:
        big = Image.fromarray(255 - bitmap if invert else bitmap).resize((28 * scale, 28 * scale), Image.BILINEAR)
        restored = image_to_bitmap(encode(np.asarray(big), fmt)).astype(int)
        # Upscaling blurs the edges: allow shifts of grey, but the strokes must land where they were.
        assert np.abs(restored - bitmap).mean() < 25
        assert np.corrcoef(restored.ravel(), bitmap.ravel())[0, 1] > 0.6


def test_transparent_png_with_dark_ink():
    bitmap = RENDERED[0]
    rgba = np.zeros((28, 28, 4), np.uint8)
    rgba[..., 3] = bitmap  # black ink whose opacity is the stroke
    restored = image_to_bitmap(encode(rgba, mode="RGBA")).astype(int)
    assert np.abs(restored - bitmap).mean() < 3


@pytest.mark.parametrize(
    "data,message",
    [
        (b"", "empty"),
        (b"definitely not an image", "not a readable"),
        (encode(np.zeros((28, 28), np.uint8))[:40], "not a readable"),
        (encode(np.zeros((28, 28), np.uint8)), "blank"),
        (encode(np.full((28, 28), 255, np.uint8)), "blank"),
        (encode(np.zeros((28, 28), np.uint8), "GIF"), "unsupported image format"),
        (b"\0" * (MAX_BYTES + 1), "too large"),
    ],
)
def test_bad_uploads_get_a_clear_error(data, message):
    with pytest.raises(DrawingError, match=message):
        image_to_bitmap(data)


def test_an_image_beyond_pillows_own_limit_is_too_large_too():
    buffer = io.BytesIO()
    Image.new("1", (10_000, 10_000)).save(buffer, format="PNG")  # 100 M pixels: Pillow's bomb warning, then ours
    with pytest.raises(DrawingError, match="too large"):
        image_to_bitmap(buffer.getvalue())


def test_a_huge_image_is_refused_before_decoding():
    buffer = io.BytesIO()
    Image.new("L", (5000, 5000)).save(buffer, format="PNG")  # compresses to a few KB
    with pytest.raises(DrawingError, match="too large"):
        image_to_bitmap(buffer.getvalue())


@pytest.mark.parametrize("size,vanishes", [((1_000_000, 3), True), ((3, 40_000), True), ((2048, 2048), False)])
def test_long_thin_and_large_images_cost_little_memory(size, vanishes):
    import tracemalloc

    image = Image.new("L", size, 255)
    width, height = size
    # Dark ink along the image's length: a line as wide as a tenth of the short side.
    ImageDraw.Draw(image).line([(0, height // 2), (width - 1, height // 2)] if width > height else
                               [(width // 2, 0), (width // 2, height - 1)], fill=0, width=max(1, min(size) // 10))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    tracemalloc.start()
    try:
        if vanishes:  # scaled to 26 pixels long, a line 1/333,333 as thin as it is long is far below one pixel
            with pytest.raises(DrawingError, match="vanishes at 28x28"):
                image_to_bitmap(buffer.getvalue())
        else:
            assert image_to_bitmap(buffer.getvalue())[2:-2, 13:15].all()  # the line, white on black, down the middle
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # Before: the square around the ink had the longest side (1,000,000 x 3: 7.3 TiB of floats asked for).
    assert peak < 64 * 2**20, f"{peak / 2**20:.0f} MB of arrays for a {width}x{height} image"


def test_a_16_bit_greyscale_png_reads_like_its_8_bit_twin():
    for bitmap in RENDERED[:5]:
        light = 230 - (bitmap.astype(np.uint16) * 210 // 255)  # dark ink on a light grey page
        wide = encode((light * 257).astype(np.uint16))
        assert Image.open(io.BytesIO(wide)).mode == "I;16"
        np.testing.assert_array_equal(image_to_bitmap(wide), image_to_bitmap(encode(light.astype(np.uint8))))


def test_a_phones_photo_is_read_at_a_fraction_of_its_size_and_stood_upright():
    """12 megapixels of JPEG (more than MAX_PIXELS) decode at a quarter of the size; EXIF orientation 6 (the camera
    held sideways: stored turned, shown turned back) is undone, so the drawing is read the way it was taken."""
    bitmap = RENDERED[3]
    upright = Image.new("L", (4000, 3000), 255)  # dark ink on a white page, 4:3
    upright.paste(Image.fromarray(255 - bitmap).resize((3000, 3000), Image.BILINEAR), (500, 0))
    expected = image_to_bitmap(encode(np.asarray(upright), "JPEG"))
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # orientation 6: shown after a quarter turn clockwise
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    stored.save(buffer, format="JPEG", exif=exif)
    restored = image_to_bitmap(buffer.getvalue()).astype(int)
    assert np.abs(restored - expected.astype(int)).mean() < 3
    assert np.corrcoef(restored.ravel(), bitmap.ravel())[0, 1] > 0.6
