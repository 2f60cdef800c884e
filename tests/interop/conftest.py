"""The ONNX tests' fixtures: onnx and ONNX Runtime (required in CI, see :func:`.cases.require`), real MNIST
test images."""

import pytest

from npconv.data import load_dataset

from .cases import require


@pytest.fixture(scope="session")
def onnx():
    return require("onnx")


@pytest.fixture(scope="session")
def ort():
    return require("onnxruntime")


@pytest.fixture(scope="session")
def mnist():
    return load_dataset("mnist")


@pytest.fixture(scope="session")
def test_images(mnist):
    """The first 1,000 MNIST test images, uint8 (1000, 28, 28)."""
    return mnist.test_images[:1000]
