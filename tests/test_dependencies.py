"""The tests' dependencies (``dependencies.py``): a missing one skips a test outside CI and fails it in CI; in CI
everything the README's test command and ``.ci/run`` install is present."""

import os

import pytest
from dependencies import CHROMIUM, DEV_MODULES, in_ci, require, require_fashion_mnist, require_that

Skipped, Failed = pytest.skip.Exception, pytest.fail.Exception


@pytest.mark.parametrize("value, expected", [("true", True), ("1", True), ("yes", True), ("TRUE", True),
                                             ("", False), ("false", False), ("0", False)])
def test_ci_is_read_from_the_environment(monkeypatch, value, expected):
    monkeypatch.setenv("CI", value)
    assert in_ci() is expected


def test_a_missing_module_skips_outside_ci_and_fails_in_ci(monkeypatch):
    monkeypatch.setenv("CI", "false")
    with pytest.raises(Skipped, match="needs npconv_no_such_module"):
        require("npconv_no_such_module")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(Failed, match="needs npconv_no_such_module .*CI \\(CI=true\\) must run this test"):
        require("npconv_no_such_module")


def test_a_present_module_is_returned_in_and_outside_ci(monkeypatch):
    for ci in ("true", "false"):
        monkeypatch.setenv("CI", ci)
        assert require("json").dumps([1]) == "[1]"
        require_that(True, "never said")


def test_a_failed_condition_skips_outside_ci_and_fails_in_ci(monkeypatch):
    monkeypatch.setenv("CI", "")
    with pytest.raises(Skipped, match="no chromium here"):
        require_that(False, "no chromium here")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(Failed, match="no chromium here"):
        require_that(False, "no chromium here")


def test_missing_fashion_mnist_skips_outside_ci_and_fails_in_ci(monkeypatch, tmp_path):
    import npconv.data.datasets as datasets

    monkeypatch.setattr(datasets, "default_search_dirs", lambda info: [tmp_path])  # an empty folder: not there
    monkeypatch.setenv("CI", "false")
    with pytest.raises(Skipped, match="needs Fashion-MNIST"):
        require_fashion_mnist()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(Failed, match="needs Fashion-MNIST"):
        require_fashion_mnist()


@pytest.mark.parametrize("module", DEV_MODULES)
def test_every_dev_dependency_is_installed(module):
    """Skips outside CI (saying what is missing); in CI a missing one fails the suite here, once, by name."""
    require(module)


def test_chromium_and_fashion_mnist_are_installed():
    """What ``.ci/run`` installs from Debian: the browser tests' Chromium and the Fashion-MNIST tests' data."""
    require_that(os.path.exists(CHROMIUM), f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    assert require_fashion_mnist().test_images.shape == (10000, 28, 28)
