"""The documentation site builds strictly: no broken link, no missing page, no docstring mkdocstrings cannot read.

``mkdocs build --strict`` is what CI runs through this test (it is part of the README's test command). The
site's math is rendered by the KaTeX copy in ``docs/assets/katex``: nothing is fetched from the network.
"""

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    if importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("mkdocstrings_handlers") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("mkdocs and mkdocstrings are in the [dev] extra: CI must have them")
        pytest.skip('needs the docs extra: pip install -e ".[docs]"')
    out = tmp_path_factory.mktemp("site")
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)], cwd=ROOT,
                            capture_output=True, text=True, timeout=120,
                            env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert result.returncode == 0, result.stderr[-4000:]
    return out


def test_the_site_builds_strictly_with_every_page(site):
    for page in ("index.html", "cli.html", "math.html", "tutorials/1-one-layer.html", "reference/nn.html",
                 "study/REPORT.html", "changelog.html", "performance.html"):
        assert (site / page).is_file(), page
    assert "Conv2d" in (site / "reference" / "nn.html").read_text(encoding="utf-8")  # generated from docstrings
    assert "## 0.2.3" not in (site / "changelog.html").read_text(encoding="utf-8")    # the changelog, rendered


def test_math_is_served_from_the_sites_own_files(site):
    html = (site / "math.html").read_text(encoding="utf-8")
    assert html.count('class="arithmatex"') > 100, "math.md's formulas are marked for KaTeX"
    scripts = re.findall(r'<script[^>]+src="([^"]+)"', html) + re.findall(r'<link[^>]+href="([^"]+\.css)"', html)
    assert any("katex.min.js" in s for s in scripts), scripts
    assert not [s for s in scripts if s.startswith(("http:", "https:", "//"))], "nothing from a CDN"
    assert (site / "assets" / "katex" / "fonts" / "KaTeX_Main-Regular.woff2").is_file()
