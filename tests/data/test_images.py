"""MNIST-style preprocessing of image files: ink from alpha or gray level, crop, fit, centre by mass."""

import io
import zlib

import numpy as np
import pytest
from PIL import Image

from npconv.data import load_dataset
from npconv.data.images import DIGIT_BOX, ImageError, fit_and_centre, ink, open_image, preprocess


@pytest.fixture(scope="module")
def digit():
    """A real MNIST test digit (white on black, uint8 28x28)."""
    return load_dataset("mnist").test_images[0]


def png(img, fmt="PNG", **kwargs):
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def pasted(digit, kind, scale=3, size=300, at=(20, 200)):
    """The digit enlarged and pasted off-centre on a large canvas of some kind."""
    big = Image.fromarray(digit).resize((28 * scale, 28 * scale), Image.Resampling.BICUBIC)
    if kind == "white":
        canvas = Image.new("L", (size, size), 255)
        canvas.paste(Image.eval(big, lambda v: 255 - v), at)
        return canvas
    color = {"transparent-dark": (10, 10, 10), "transparent-light": (250, 250, 250)}[kind]
    canvas = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    layer = Image.new("RGBA", big.size, color + (0,))
    layer.putalpha(big)
    canvas.paste(layer, at, layer)
    return canvas


def centre_of_mass(a):
    a = a.astype(np.float64)
    return (a.sum(axis=1) @ np.arange(a.shape[0]) / a.sum(), a.sum(axis=0) @ np.arange(a.shape[1]) / a.sum())


@pytest.mark.parametrize("kind", ["white", "transparent-dark", "transparent-light"])
def test_a_pasted_digit_comes_back_like_mnist(digit, kind):
    out = preprocess(png(pasted(digit, kind)))
    assert out.shape == (28, 28) and out.dtype == np.uint8
    cy, cx = centre_of_mass(out)
    assert abs(cy - 13.5) <= 0.5 and abs(cx - 13.5) <= 0.5, f"centre of mass at ({cy:.2f}, {cx:.2f})"
    rows, cols = np.flatnonzero(out.max(axis=1) > 50), np.flatnonzero(out.max(axis=0) > 50)
    assert max(rows[-1] - rows[0], cols[-1] - cols[0]) + 1 <= DIGIT_BOX + 1, "fitted into 20x20"
    assert out.max() >= 250 and out[0].max() == out[-1].max() == 0, "white ink on a black border"
    reference = fit_and_centre(digit.astype(np.float32) / 255)
    corr = np.corrcoef(out.ravel().astype(float), reference.ravel().astype(float))[0, 1]
    assert corr > 0.9, f"{kind}: correlation with the original digit made the same way {corr:.3f}"


def test_dark_and_light_digits_on_transparency_are_the_same_ink(digit):
    dark, light = (preprocess(png(pasted(digit, k))) for k in ("transparent-dark", "transparent-light"))
    assert np.abs(dark.astype(int) - light.astype(int)).max() <= 2
    flat = Image.new("RGBA", (50, 50), (0, 0, 0, 0))  # transparent everywhere: no ink at all
    with pytest.raises(ImageError, match="no ink"):
        preprocess(png(flat))


def test_a_jpeg_with_noise_still_finds_the_digit(digit):
    out = preprocess(png(pasted(digit, "white").convert("RGB"), "JPEG", quality=75))
    cy, cx = centre_of_mass(out)
    assert abs(cy - 13.5) <= 0.6 and abs(cx - 13.5) <= 0.6


def test_ink_of_a_gray_background_is_zero():
    gray = Image.new("L", (40, 40), 128)
    assert ink(gray).max() == 0 and fit_and_centre(ink(gray)).max() == 0
    with pytest.raises(ImageError, match="no ink"):
        preprocess(png(gray))


@pytest.mark.parametrize("blank", [Image.new("L", (60, 40), 255), Image.new("L", (60, 40), 0),
                                   Image.new("RGBA", (30, 30), (0, 0, 0, 0)), Image.new("L", (1, 1), 255),
                                   Image.new("RGB", (1, 1), (0, 0, 0))],
                         ids=["white", "black", "clear", "1x1", "1x1-rgb"])
def test_a_blank_image_has_no_ink_to_classify(blank):
    with pytest.raises(ImageError, match="^blank.png: no ink: the image is blank"):
        preprocess(png(blank), name="blank.png")


@pytest.mark.parametrize("size", [1, 3])
def test_a_speck_of_ink_is_refused_but_a_small_digit_is_not(digit, size):
    paper = Image.new("L", (200, 200), 255)
    paper.paste(Image.new("L", (size, size), 0), (120, 40))  # one dark pixel (or a 3x3 dot) on white paper
    with pytest.raises(ImageError, match=f"too little ink to classify: a speck of {size}x{size} pixels"):
        preprocess(png(paper), name="speck.png")
    small = Image.new("L", (200, 200), 255)
    small.paste(Image.fromarray(255 - digit).resize((8, 8)), (50, 50))  # a digit drawn 8 pixels tall still counts
    assert preprocess(png(small)).max() > 128


def test_a_wide_shape_keeps_its_aspect_ratio():
    bar = np.zeros((100, 100), dtype=np.uint8)
    bar[45:55, 10:90] = 255  # 80 x 10
    out = preprocess(png(Image.fromarray(bar)))
    rows, cols = np.flatnonzero(out.max(axis=1) > 128), np.flatnonzero(out.max(axis=0) > 128)
    assert cols[-1] - cols[0] + 1 in (19, 20, 21) and rows[-1] - rows[0] + 1 in (2, 3, 4)


@pytest.mark.parametrize("data, message", [
    (b"", "empty"), (b"not an image at all", "not a readable image"),
    (b"\x89PNG\r\n\x1a\n" + b"\x00" * 20, "not a readable image"),
])
def test_bad_bytes_are_clear_errors(data, message):
    with pytest.raises(ImageError, match=message) as caught:
        open_image(data, "upload")
    assert "0x" not in str(caught.value) and "BytesIO" not in str(caught.value), caught.value


def test_files_that_are_not_images(tmp_path):
    with pytest.raises(ImageError, match="no such file"):
        open_image(tmp_path / "missing.png")
    with pytest.raises(ImageError, match="is a directory"):
        open_image(tmp_path)
    huge = png(Image.new("L", (1, 1)))
    # A PNG header that claims 100000 x 100000 pixels: refused before decoding.
    header = bytearray(huge)
    header[16:24] = (100_000).to_bytes(4, "big") * 2
    header[29:33] = zlib.crc32(bytes(header[12:29])).to_bytes(4, "big")  # the IHDR chunk's checksum
    with pytest.raises(ImageError, match="too large"):
        open_image(bytes(header), "bomb.png")
