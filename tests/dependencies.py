"""What a test needs beyond NumPy, and what happens when it is missing: skip on a developer's machine, fail in CI.

The README's test command installs the ``[dev]`` extra (pytest, hypothesis, PyTorch, Dask, Starlette, uvicorn,
markdown-it-py, Playwright), and ``.ci/run`` installs Debian's ``chromium`` and ``dataset-fashion-mnist``. Under
``CI=true`` a test that needs one of them and does not find it **fails**: a suite that skipped them would pass
without testing what it claims. Elsewhere it skips, saying what is missing. Every such test asks here::

    torch = require("torch")                                   # the module, or skip / fail
    require_that(os.path.exists(CHROMIUM), "no Chromium at ...")
    fashion = require_fashion_mnist()                          # the dataset, or skip / fail
"""

import importlib
import os

import pytest

#: The Chromium the browser tests drive: Debian's, or the one named by NPCONV_CHROMIUM.
CHROMIUM = os.environ.get("NPCONV_CHROMIUM", "/usr/bin/chromium")
#: The modules of the ``[dev]`` extra that some test imports (``pip install -e ".[dev]"`` gives them).
DEV_MODULES = ("pytest", "hypothesis", "torch", "dask.distributed", "starlette", "uvicorn", "markdown_it",
               "playwright.sync_api")


def in_ci():
    """Whether this is a CI run (``CI`` set to ``true``, ``1`` or ``yes``, as CI services and ``.ci/run`` do)."""
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def missing(why):
    """A test's dependency is missing: fail under CI, skip elsewhere; ``why`` says what is missing."""
    if in_ci():
        pytest.fail(f"{why}: CI (CI=true) must run this test; the [dev] extra and .ci/run install it", pytrace=False)
    pytest.skip(why, allow_module_level=True)


def require(module):
    """The module named ``module`` (``"torch"``, ``"dask.distributed"``), or :func:`missing` when it cannot be
    imported."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        missing(f"needs {module} ({e})")


def require_that(condition, why):
    """:func:`missing` with ``why`` unless ``condition`` holds (a program or a file that must be there)."""
    if not condition:
        missing(why)


def require_fashion_mnist():
    """Fashion-MNIST, loaded without downloading (Debian's ``dataset-fashion-mnist``, or npconv's cache), or
    :func:`missing`."""
    from npconv.data import load_dataset
    from npconv.errors import NpconvError

    try:
        return load_dataset("fashion-mnist", download=False)
    except NpconvError as e:
        missing(f"needs Fashion-MNIST (apt-get install dataset-fashion-mnist): {e}")
