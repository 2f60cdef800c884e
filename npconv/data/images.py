"""Image files as the network saw its training data: MNIST-style preprocessing.

MNIST's digits were made from scanned handwriting in a fixed way (LeCun et al.):
the digit's bounding box was fitted into a 20x20 box keeping its aspect ratio,
with anti-aliasing, and the result was placed in a 28x28 image so that its
centre of mass sits at the centre. Digits are white (255) on black (0).
Fashion-MNIST's products were made alike, fitted into the whole 28x28. An
image that is not made the same way -- a small digit in the corner of a large
picture, a photo with a white background -- looks nothing like the training
data, and a network trained on MNIST guesses. So every image goes through the
same steps here:

1. **Ink.** The image becomes an *ink* map in [0, 1] (1 = full stroke, 0 =
   background). With transparency (a PNG with alpha), the alpha channel is the
   ink: the strokes are what is opaque, whatever their colour, so a dark digit
   and a light digit on a transparent background both work. Without it, the
   gray level is the ink, inverted when the border of the image -- the
   background -- is light (a dark digit on white paper). The background's own
   level is subtracted (a gray paper, a JPEG's noise) and the ink scaled so that
   its strongest stroke is 1.
2. **Crop** to the bounding box of the pixels with at least :data:`INK_THRESHOLD` of ink.
3. **Fit** the crop into ``fit`` x ``fit`` pixels (20 for digits, 28 for
   Fashion-MNIST), keeping its aspect ratio, with an anti-aliasing filter.
4. **Centre** it in 28x28 by its centre of mass.

:func:`preprocess` does all four; ``npconv predict`` and ``npconv serve`` call it.
"""

import io
import os
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import NpconvError

#: Refuse images over this many pixels before decoding them (a decompression bomb).
MAX_PIXELS = 50_000_000
#: Side of the network's input image.
SIZE = 28
#: The box a digit's bounding box is fitted into (MNIST); Fashion-MNIST fills the whole image.
DIGIT_BOX = 20
#: Share of the strongest stroke a pixel needs to count as ink for the bounding box.
INK_THRESHOLD = 0.2
#: Ink whose bounding box is smaller than this on both sides is a speck (dust, a stray pixel), not a drawing:
#: fitted into 20x20 it would become a square blob the network answers with confidence.
MIN_INK_SIDE = 4


class ImageError(NpconvError):
    """An image cannot be read: missing, empty, not an image, damaged or too large."""


def open_image(source, name=None):
    """Decode an image from a path or from bytes; returns a loaded :class:`PIL.Image.Image`.

    ``name`` names the image in messages (default: the path, or "image").
    Raises :class:`ImageError` for a missing, empty, unreadable or too large image;
    the size is checked from the header, before the pixels are decoded.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        name = name or "image"
        if not source:
            raise ImageError(f"{name}: empty, not an image")
        stream = io.BytesIO(source)
    else:
        path = os.fspath(source)
        name = name or path
        if os.path.isdir(path):
            raise ImageError(f"{name}: is a directory, not an image")
        if not os.path.isfile(path):
            raise ImageError(f"{name}: no such file")
        if os.path.getsize(path) == 0:
            raise ImageError(f"{name}: empty file, not an image")
        stream = path
    too_large = f"{name}: image too large (more than {MAX_PIXELS} pixels); refused before decoding it"
    try:
        # Image.open reads only the header. PIL warns (DecompressionBombWarning)
        # or raises (DecompressionBombError) for huge sizes; either is our error.
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(stream)
            if img.width * img.height > MAX_PIXELS:
                raise ImageError(f"{name}: image of {img.width}x{img.height} pixels is too large "
                                 f"(at most {MAX_PIXELS} pixels); refused before decoding it")
            img.load()
            return img
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError(too_large) from None
    except UnidentifiedImageError:  # its message names Python's stream object (<_io.BytesIO object at 0x...>)
        raise ImageError(f"{name}: not a readable image (not a format Pillow knows)") from None
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        # PIL raises OSError for truncated data, SyntaxError from some format parsers.
        raise ImageError(f"{name}: not a readable image ({' '.join(str(e).split())})") from None


def ink(img):
    """The ink map of an image: float32 (H, W) in [0, 1], 1 where the strokes are (step 1 of the module docstring)."""
    img = img.convert("RGBA") if img.mode in ("P", "LA", "PA") else img
    if img.mode == "RGBA" and img.getextrema()[3][0] < 255:  # some transparency: the opaque part is the drawing
        level = np.asarray(img.getchannel("A"), dtype=np.float32) / 255
    else:
        level = np.asarray(img.convert("L"), dtype=np.float32) / 255
        border = np.concatenate([level[0], level[-1], level[:, 0], level[:, -1]])
        if np.median(border) > 0.5:  # a light background: the ink is dark
            level = 1 - level
    border = np.concatenate([level[0], level[-1], level[:, 0], level[:, -1]])
    level = np.clip(level - np.median(border), 0, None)  # the background's own level is not ink
    top = level.max()
    return level / top if top > 0 else level


def fit_and_centre(ink_map, fit=DIGIT_BOX, size=SIZE):
    """Crop to the ink, fit into ``fit`` x ``fit`` keeping the aspect ratio, centre by mass in ``size`` x ``size``.

    Returns uint8 (size, size), white ink on black, as MNIST stores its digits.
    A blank image (no ink) gives a blank result.
    """
    rows = np.flatnonzero((ink_map >= INK_THRESHOLD).any(axis=1))
    cols = np.flatnonzero((ink_map >= INK_THRESHOLD).any(axis=0))
    out = np.zeros((size, size), dtype=np.float32)
    if rows.size == 0:
        return out.astype(np.uint8)
    crop = ink_map[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    h, w = crop.shape
    scale = fit / max(h, w)
    new_h, new_w = max(1, round(h * scale)), max(1, round(w * scale))
    box = Image.fromarray(crop, mode="F").resize((new_w, new_h), Image.Resampling.LANCZOS)
    box = np.clip(np.asarray(box, dtype=np.float32), 0, 1)
    # Centre of mass of the fitted digit, then the offset that puts it at the image's centre.
    mass = box.sum()
    cy = (box.sum(axis=1) @ np.arange(new_h)) / mass if mass > 0 else (new_h - 1) / 2
    cx = (box.sum(axis=0) @ np.arange(new_w)) / mass if mass > 0 else (new_w - 1) / 2
    top = int(round((size - 1) / 2 - cy))
    left = int(round((size - 1) / 2 - cx))
    # Paste, clipping whatever would fall outside (only for very lopsided shapes).
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + new_h, size), min(left + new_w, size)
    if y1 > y0 and x1 > x0:
        out[y0:y1, x0:x1] = box[y0 - top : y1 - top, x0 - left : x1 - left]
    return np.round(255 * out).astype(np.uint8)


def check_ink(ink_map, name="image"):
    """Refuse an ink map with nothing to classify: no ink at all (a blank image), or only a speck of it.

    Raises :class:`ImageError`: a network trained on digits answers *something* for any input, and for a blank
    image or a single dark pixel its answer means nothing.
    """
    mask = ink_map >= INK_THRESHOLD
    if not mask.any():
        raise ImageError(f"{name}: no ink: the image is blank (one level everywhere), nothing to classify")
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    h, w = rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1
    if max(h, w) < MIN_INK_SIDE:
        raise ImageError(f"{name}: too little ink to classify: a speck of {w}x{h} pixels (a drawing spans at "
                         f"least {MIN_INK_SIDE})")


def preprocess(source, fit=DIGIT_BOX, name=None):
    """An image file (path or bytes) as a 28x28 uint8 array made like the training data (see the module docstring).

    Raises :class:`ImageError` for an image that cannot be read, and for one with no ink or only a speck of it
    (:func:`check_ink`).
    """
    img = open_image(source, name)
    ink_map = ink(img)
    check_ink(ink_map, name or ("image" if isinstance(source, (bytes, bytearray, memoryview)) else os.fspath(source)))
    return fit_and_centre(ink_map, fit)
