"""Every code block of the README and the documentation runs, as written (issue 24).

Each page's blocks run in order, in one fresh folder and, for Python, in one namespace (a tutorial's blocks build
on each other):

* ```python blocks are executed; a ``# prints: TEXT`` comment says what the block prints, and TEXT must be a line of
  its output (numbers with a decimal point may differ by :data:`TOLERANCE`: the last digits of a training run move
  with the CPU's rounding);
* ```bash blocks: each ``npconv ...`` line runs as ``python -m npconv ...`` and must exit 0; ``pip install``,
  ``pytest`` and ``mkdocs`` lines are what the README's commands do around the tests, and are not run here;
* a ```toml block whose first line is ``# PATH: ...`` is written to PATH, so that the blocks after it can use it;
* a block right after a ``<!-- docs-test: skip REASON -->`` line is not run (the reason says why: a full training
  run, a server that waits for Ctrl-C, a path of the reader's own).
"""

import contextlib
import io
import linecache
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
#: The pages whose blocks run: the README and every page of the site but the generated study reports.
PAGES = [ROOT / "README.md", *sorted(p for p in (ROOT / "docs").rglob("*.md") if "study" not in p.parts)]
#: How far a printed number with a decimal point may be from the one a ``# prints:`` comment shows.
TOLERANCE = 0.5
#: Lines of bash blocks that are the README's install and test commands, not run here.
NOT_RUN = ("python -m pip ", "pip ", "python -m pytest", "mkdocs ", "cd ")

FENCE = re.compile(r"^```(\w*)\s*$")
SKIP = re.compile(r"^<!-- docs-test: skip (.+) -->$")


def blocks(page):
    """``(language, first line number, code, skip reason or None)`` for each fenced block of a page."""
    lines = page.read_text(encoding="utf-8").splitlines()
    out, i = [], 0
    while i < len(lines):
        opened = FENCE.match(lines[i])
        if opened is None:
            i += 1
            continue
        before = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        skip = SKIP.match(before.strip())
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        out.append((opened.group(1), i + 1, "\n".join(lines[i + 1 : end]), skip.group(1) if skip else None))
        i = end + 1
    return out


def test_the_pages_have_blocks_and_every_skip_marks_a_block():
    assert ROOT / "README.md" in PAGES and len(PAGES) >= 10, PAGES
    assert any(lang == "python" for lang, *_ in blocks(ROOT / "README.md"))
    for page in PAGES:
        lines = page.read_text(encoding="utf-8").splitlines()
        for k, line in enumerate(lines):
            if line.startswith("<!-- docs-test: skip"):
                after = next((x for x in lines[k + 1:] if x.strip()), "")
                assert SKIP.match(line) and after.startswith("```"), f"{page}:{k + 1}: a skip marks no block"


def numbers_agree(expected, line):
    """Whether an output line is the expected one, up to :data:`TOLERANCE` in its numbers with a decimal point."""
    pattern = r"(-?\d+\.\d+)"
    want, got = re.split(pattern, expected.strip()), re.split(pattern, line.strip())
    if len(want) != len(got):
        return False
    for k, (a, b) in enumerate(zip(want, got)):
        if k % 2 == 0 and a != b:
            return False
        if k % 2 == 1 and abs(float(a) - float(b)) > TOLERANCE:
            return False
    return True


def test_numbers_agree_within_the_tolerance_only():
    assert numbers_agree("test accuracy: 98.02 %", "test accuracy: 97.85 %")
    assert not numbers_agree("test accuracy: 98.02 %", "test accuracy: 96.02 %")
    assert not numbers_agree("(4, 2) (2, 3)", "(4, 2) (2, 4)") and numbers_agree("(4, 2)", "(4, 2)")


def run_python(code, namespace, where):
    linecache.cache[where] = (len(code), None, code.splitlines(True), where)  # a failure shows the page's line
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, where, "exec"), namespace)  # noqa: S102 - the documentation's own code
    printed = out.getvalue().splitlines()
    for expected in re.findall(r"#\s*prints:\s*(.+)$", code, flags=re.M):
        assert any(numbers_agree(expected, line) for line in printed), \
            f"{where}: prints {printed}, the page says {expected!r}"


def run_bash(code, cwd, where):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    for line in code.splitlines():
        command = line.split("  #")[0].strip()
        if not command or command.startswith("#") or command.startswith(NOT_RUN):
            continue
        assert command.startswith("npconv "), f"{where}: {command!r} is not an npconv command; mark the block"
        args = shlex.split(command)[1:]
        result = subprocess.run([sys.executable, "-m", "npconv", *args], cwd=cwd, env=env, capture_output=True,
                                text=True, timeout=300)
        assert result.returncode == 0, f"{where}: {command}\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_every_block_of_the_page_runs(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "__docs__"}
    for language, line, code, skip in blocks(page):
        where = f"{page.relative_to(ROOT)}:{line}"
        if skip is not None:
            continue
        if language == "python":
            run_python(code, namespace, where)
        elif language == "bash":
            run_bash(code, tmp_path, where)
        elif language == "toml" and re.match(r"#\s*([\w./-]+\.toml):", code):
            path = tmp_path / re.match(r"#\s*([\w./-]+\.toml):", code).group(1)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(code + "\n", encoding="utf-8")
