"""An uploaded image (PNG/JPEG, either polarity, any size) to the same 28x28 bitmap the renderer makes."""
from __future__ import annotations

import io
import warnings

import numpy as np

from doodle_lib.drawing import BOX, LINE_WIDTH, PADDING, SIDE, DrawingError

MAX_BYTES = 10 * 1024 * 1024
# Pixels decoded, at most: a few kB of PNG can declare millions (decoding 16 million took seconds and a GB). A JPEG is
# decoded at a fraction of its size first (its DCT scaling), so a phone's 12-megapixel photo stays within it.
MAX_PIXELS = 4096 * 1024
# Larger images are shrunk to this many pixels by Pillow before any NumPy copy, each copy being 4 bytes a pixel: the
# drawing ends up 26 pixels wide anyway.
WORKING_PIXELS = 2048 * 2048
INK_THRESHOLD = 8  # a pixel this far from the background counts as ink
# The renderer maps the 256-unit box plus half a line on each side into this many pixels;
# antialiasing touches one more pixel at the edges, which a crop of the ink includes.
DRAWING_SIDE = SIDE * (BOX + LINE_WIDTH) / (BOX + 2 * PADDING + LINE_WIDTH) + 1


def image_to_bitmap(data: bytes) -> np.ndarray:
    """Decode, crop to the drawing, keep its aspect, centre it and invert dark-on-light: (28, 28) uint8."""
    from PIL import Image, ImageOps

    if not data:
        raise DrawingError("the image is empty")
    if len(data) > MAX_BYTES:
        raise DrawingError(f"the image is too large: {len(data)} bytes (at most {MAX_BYTES})")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            if image.format not in ("PNG", "JPEG"):
                raise DrawingError(f"unsupported image format {image.format}: send PNG or JPEG")
            declared = image.size
            if image.format == "JPEG":
                image.draft(image.mode, (1024, 1024))  # decoded at 1/2, 1/4 or 1/8 of its size, no smaller than this
            if image.width * image.height > MAX_PIXELS:
                raise DrawingError(f"the image is too large: {declared[0]}x{declared[1]} pixels (at most {MAX_PIXELS})")
            image.load()
            image = ImageOps.exif_transpose(image)  # a phone's photo stands the way it was taken
    except DrawingError:
        raise
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):  # Pillow's own limit, met before ours
        raise DrawingError(f"the image is too large: more than {MAX_PIXELS} pixels") from None
    except Image.UnidentifiedImageError:
        raise DrawingError("not a readable PNG or JPEG image: its bytes are no image format Pillow knows") from None
    except Exception as error:  # Pillow's decoders raise OSError, SyntaxError, ValueError, ... on corrupt data
        reason = str(error)[:120] or "no reason given"
        raise DrawingError(f"not a readable PNG or JPEG image ({error.__class__.__name__}: {reason})") from None
    return _normalise(_grayscale(image))


def _grayscale(image) -> np.ndarray:
    """Luminance as float, with transparency flattened onto the opposite of the ink's colour."""
    from PIL import Image

    if image.mode.startswith("I"):  # a 16-bit greyscale PNG: Pillow's conversion to L clips at 255, it does not scale
        image = image.convert("I").point(lambda value: value / 257)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = _shrunk(image.convert("RGBA"))
        alpha = np.asarray(rgba.getchannel("A"), dtype=np.float32) / 255
        gray = np.asarray(rgba.convert("L"), dtype=np.float32)
        # Transparent drawings are ink on nothing: put the ink on a background of the other extreme.
        ink_is_dark = (gray * alpha).sum() < (255 * alpha).sum() / 2
        background = 255.0 if ink_is_dark else 0.0
        return gray * alpha + background * (1 - alpha)
    return np.asarray(_shrunk(image.convert("L")), dtype=np.float32)


def _shrunk(image):
    """The image with at most WORKING_PIXELS pixels, its aspect kept (box filter: each pixel the mean of its area)."""
    from PIL import Image

    factor = (image.width * image.height / WORKING_PIXELS) ** 0.5
    if factor <= 1:
        return image
    return image.resize((max(1, round(image.width / factor)), max(1, round(image.height / factor))), Image.BOX)


def _normalise(gray: np.ndarray) -> np.ndarray:
    """White-on-black, cropped to the ink, scaled like the renderer scales the 256-unit box."""
    from PIL import Image

    border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    if np.median(border) > 127:  # light background: dark ink, Quick, Draw! wants the opposite
        gray = 255 - gray
    gray = np.clip(gray - np.median(border if np.median(border) <= 127 else 255 - border), 0, 255)
    ink = np.argwhere(gray > INK_THRESHOLD)
    if len(ink) == 0:
        raise DrawingError("the image holds no drawing: it is blank")
    (top, left), (bottom, right) = ink.min(axis=0), ink.max(axis=0) + 1
    crop = Image.fromarray(gray[top:bottom, left:right].astype(np.uint8))
    size = max(1, round(DRAWING_SIDE))
    # A crop many times the target size is first reduced by a whole factor (exact means of k x k blocks), so that the
    # square around it stays small: for a long thin image that square would not fit in memory.
    factor = max(crop.size) // (8 * size)
    if factor > 1:
        crop = crop.reduce(factor)
    side = max(crop.size)
    square = Image.new("L", (side, side))
    square.paste(crop, ((side - crop.width) // 2, (side - crop.height) // 2))
    scaled = square.resize((size, size), Image.BOX if side > size else Image.BILINEAR)
    bitmap = np.zeros((SIDE, SIDE), dtype=np.uint8)
    offset = (SIDE - size) // 2
    bitmap[offset : offset + size, offset : offset + size] = np.asarray(scaled)
    if not bitmap.any():
        raise DrawingError("the drawing vanishes at 28x28: its ink is far thinner than it is long")
    return bitmap
