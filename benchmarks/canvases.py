"""Real MNIST test digits pasted onto large canvases, the way people feed images to a trained model.

Each digit is enlarged 1.5-4x (bicubic) and pasted at a random position of a
200-400 px square canvas of one of three kinds:

* ``white`` -- a PNG, dark digit on a white background (ink on paper);
* ``transparent`` -- a PNG with alpha: a digit drawn in a random dark or light colour on a transparent
  background (what a drawing app exports);
* ``jpeg`` -- the white canvas saved as a JPEG at quality 75 (compression noise around the strokes).

``canvases(kind, n, seed)`` yields ``(file bytes, true label)``; the benchmarks that measure ``npconv predict``
and ``npconv serve`` on drawings both use it, so they measure the same images.
"""

import io

import numpy as np
from PIL import Image

from npconv.data import load_dataset

KINDS = ("white", "transparent", "jpeg")


def canvas(digit, kind, rng):
    """One MNIST digit (uint8 28x28, white on black) pasted on a canvas of ``kind``; returns the file's bytes."""
    scale = rng.uniform(1.5, 4.0)
    side = int(rng.integers(200, 401))
    big = Image.fromarray(digit).resize((round(28 * scale), round(28 * scale)), Image.Resampling.BICUBIC)
    at = (int(rng.integers(0, side - big.width + 1)), int(rng.integers(0, side - big.height + 1)))
    buf = io.BytesIO()
    if kind in ("white", "jpeg"):
        paper = Image.new("L", (side, side), 255)
        paper.paste(Image.eval(big, lambda v: 255 - v), at)
        paper.save(buf, "JPEG", quality=75) if kind == "jpeg" else paper.save(buf, "PNG")
    elif kind == "transparent":
        shade = int(rng.choice([rng.integers(0, 60), rng.integers(200, 256)]))
        layer = Image.new("RGBA", big.size, (shade, shade, shade, 0))
        layer.putalpha(big)
        sheet = Image.new("RGBA", (side, side), (0, 0, 0, 0))
        sheet.paste(layer, at, layer)
        sheet.save(buf, "PNG")
    else:
        raise ValueError(f"unknown canvas kind {kind!r}; choose from {', '.join(KINDS)}")
    return buf.getvalue()


def canvases(kind, n=1000, seed=0):
    """``(bytes, label)`` for the first ``n`` MNIST test digits on canvases of ``kind``, reproducibly."""
    mnist = load_dataset("mnist")
    rng = np.random.default_rng([seed, KINDS.index(kind)])
    for digit, label in zip(mnist.test_images[:n], mnist.test_labels[:n]):
        yield canvas(digit, kind, rng), int(label)
