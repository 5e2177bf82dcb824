"""An uploaded image (PNG/JPEG, either polarity, any size) to the same 28x28 bitmap the renderer makes."""
from __future__ import annotations

import io
import warnings

import numpy as np

from doodle_lib.drawing import BOX, LINE_WIDTH, PADDING, SIDE, DrawingError

MAX_BYTES = 10 * 1024 * 1024
MAX_PIXELS = 4096 * 4096
INK_THRESHOLD = 8  # a pixel this far from the background counts as ink
# The renderer maps the 256-unit box plus half a line on each side into this many pixels;
# antialiasing touches one more pixel at the edges, which a crop of the ink includes.
DRAWING_SIDE = SIDE * (BOX + LINE_WIDTH) / (BOX + 2 * PADDING + LINE_WIDTH) + 1


def image_to_bitmap(data: bytes) -> np.ndarray:
    """Decode, crop to the drawing, keep its aspect, centre it and invert dark-on-light: (28, 28) uint8."""
    from PIL import Image

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
            if image.width * image.height > MAX_PIXELS:
                raise DrawingError(f"the image is too large: {image.width}x{image.height} pixels")
            image.load()
    except DrawingError:
        raise
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):  # Pillow's own limit, met before ours
        raise DrawingError(f"the image is too large: more than {MAX_PIXELS} pixels") from None
    except Exception as error:  # Pillow's decoders raise OSError, SyntaxError, ValueError, ... on corrupt data
        raise DrawingError(f"not a readable PNG or JPEG image ({error.__class__.__name__})") from None
    return _normalise(_grayscale(image))


def _grayscale(image) -> np.ndarray:
    """Luminance as float, with transparency flattened onto the opposite of the ink's colour."""
    from PIL import Image

    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        alpha = np.asarray(rgba.getchannel("A"), dtype=np.float64) / 255
        gray = np.asarray(rgba.convert("L"), dtype=np.float64)
        # Transparent drawings are ink on nothing: put the ink on a background of the other extreme.
        ink_is_dark = (gray * alpha).sum() < (255 * alpha).sum() / 2
        background = 255.0 if ink_is_dark else 0.0
        return gray * alpha + background * (1 - alpha)
    return np.asarray(image.convert("L"), dtype=np.float64)


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
    crop = gray[top:bottom, left:right]
    side = max(crop.shape)
    square = np.zeros((side, side))
    oy, ox = (side - crop.shape[0]) // 2, (side - crop.shape[1]) // 2
    square[oy : oy + crop.shape[0], ox : ox + crop.shape[1]] = crop
    size = max(1, round(DRAWING_SIDE))
    scaled = Image.fromarray(square.astype(np.uint8)).resize((size, size), Image.BOX if side > size else Image.BILINEAR)
    bitmap = np.zeros((SIDE, SIDE), dtype=np.uint8)
    offset = (SIDE - size) // 2
    bitmap[offset : offset + size, offset : offset + size] = np.asarray(scaled)
    return bitmap
