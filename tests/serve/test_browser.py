"""The page in a real browser: headless Chromium driven by Playwright draws a digit and opens every view.

Chromium is Debian's package (``apt-get install chromium``; ``.ci/run`` installs it) at /usr/bin/chromium, or
the one named by NPCONV_CHROMIUM. Outside CI these tests skip, saying why, when there is no Chromium; in CI
(CI=true) they must run.
"""

import json
import os
import time

import pytest
from dependencies import CHROMIUM, require, require_that

from .webclient import draw_digit, on_paper

def expect(locator):
    from playwright.sync_api import expect

    return expect(locator)


def wait_until(page, predicate, seconds=20):
    """Poll a JavaScript predicate. (Not page.wait_for_function: its polling evaluates a string, which the page's
    Content-Security-Policy forbids, as it should.)"""
    deadline = time.monotonic() + seconds
    while not page.evaluate(predicate):
        assert time.monotonic() < deadline, f"still false after {seconds} s: {predicate}"
        page.wait_for_timeout(100)


@pytest.fixture(scope="module")
def browser():
    sync_playwright = require("playwright.sync_api").sync_playwright
    require_that(os.path.exists(CHROMIUM), f"no Chromium at {CHROMIUM} (apt-get install chromium, or set NPCONV_CHROMIUM)")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, server):
    """A fresh page on the server; fails the test on any JavaScript error or console error."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    errors = []
    page.on("console", lambda message: message.type == "error" and errors.append(message.text))
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.base = f"http://{server.host}:{server.port}"
    yield page
    context.close()
    assert errors == [], f"JavaScript errors: {errors}"


def clear_digit(server, mnist):
    """A test digit the served model reads right and sure (so the drawn one must be read right too)."""
    for i in range(50):
        answer = json.loads(server.predict(on_paper(mnist.test_images[i]), "?run=cnn-run")[2])
        if answer["prediction"] == mnist.test_labels[i] and max(answer["probabilities"]) > 0.95:
            return mnist.test_images[i], int(mnist.test_labels[i])
    raise AssertionError("the test model reads none of the first 50 test digits right and sure")


def blank(page, selector):
    """For each element matching ``selector`` (canvases): whether every pixel is the same."""
    return page.eval_on_selector_all(selector, """canvases => canvases.map(c => {
        const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
        for (let i = 4; i < d.length; i++) if (d[i] !== d[i % 4]) return false;
        return true;
    })""")


def test_draw_a_digit_and_see_every_layer(page, server, mnist):
    digit, label = clear_digit(server, mnist)
    page.goto(page.base + "/#/draw/cnn-run")
    page.wait_for_selector("#draw")
    draw_digit(page, digit)
    expect(page.locator("#prediction")).to_have_text(str(label), timeout=20_000)
    page.wait_for_load_state("networkidle")
    assert page.inner_text("#prediction") == str(label)
    # The 28x28 input and the feature maps: 8 + 8 + 8 + 16 + 16 + 16 canvases, drawn, with a size on the page.
    assert blank(page, ".seen canvas") == [False]
    maps = page.locator("canvas.fmap")
    assert maps.count() == 72
    sizes = page.eval_on_selector_all("canvas.fmap", "cs => cs.map(c => [c.width, c.height, c.clientWidth])")
    assert all(w > 0 and h > 0 and shown > 0 for w, h, shown in sizes), sizes
    per_layer = page.eval_on_selector_all(".layer[data-kind=maps]", """layers => layers.map(layer =>
        [...layer.querySelectorAll("canvas.fmap")].map(c => {
            const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
            return d.some((v, i) => v !== d[i % 4]);
        }))""")
    assert [len(maps) for maps in per_layer] == [8, 8, 8, 16, 16, 16]
    assert all(any(drawn) for drawn in per_layer), f"a layer whose every feature map is blank: {per_layer}"
    assert page.locator(".layer[data-kind=vector] canvas.bars").count() == 4
    # Ten labelled probability bars, the predicted one highlighted.
    assert page.locator(".probs .label").all_inner_texts() == [str(k) for k in range(10)]
    assert page.inner_text(".probs .label.top") == str(label)
    page.click("#clear")
    assert page.inner_text("#prediction") == ""


def test_a_model_that_is_guessing_says_not_sure(page, server, mnist):
    digit, _ = clear_digit(server, mnist)
    page.goto(page.base + "/#/draw/untrained-model.npz")  # its output layer is zero: every class 10 %
    page.wait_for_selector("#draw")
    draw_digit(page, digit)
    page.wait_for_selector(".unsure-badge")
    assert page.inner_text(".unsure-badge") == "not sure" and page.inner_text("#prediction") == "0"
    assert page.locator(".probs .value").all_inner_texts() == ["10.0%"] * 10
    page.select_option("#run-select", "cnn-run")  # another model answers the same drawing at once
    expect(page.locator(".unsure-badge")).to_have_count(0)


def test_a_dropped_file_is_classified(page, server, mnist):
    digit, label = clear_digit(server, mnist)
    page.goto(page.base + "/#/draw/cnn-run")
    page.set_input_files("input[type=file]", files=[{"name": "digit.png", "mimeType": "image/png",
                                                    "buffer": on_paper(digit)}])
    expect(page.locator("#prediction")).to_have_text(str(label), timeout=20_000)


def test_model_mistakes_and_runs_views(page, server):
    page.goto(page.base + "/#/draw/cnn-run")
    page.click(".tabs a[data-view=model]")
    page.wait_for_selector("text=Architecture")
    assert page.locator("table tbody tr").first.is_visible()
    assert page.locator("canvas.filter").count() == 8
    assert page.locator(".chart svg path").count() >= 4, "training curves and health charts are drawn"

    page.click(".tabs a[data-view=mistakes]")
    page.wait_for_selector(".thumb", timeout=60_000)
    assert page.locator(".confusion td button").count() == 100
    first = page.inner_text(".cell-panel h2")
    other = page.locator(".confusion td button:not(.zero)").nth(0)
    other.click()
    expect(page.locator(".cell-panel h2")).not_to_have_text(first)
    page.wait_for_selector(".thumb")

    page.click(".tabs a[data-view=runs]")
    page.wait_for_selector(".runs-table")
    assert page.locator(".runs-card").count() == 3  # the sweep, the study, the loose run and model file
    sweep = page.locator(".runs-card").nth(0)
    assert sweep.locator("tbody tr").count() == 2
    lr_column = sweep.locator("tbody tr td:nth-child(2)")
    sweep.locator("th", has_text="lr").click()  # a number column sorts largest first, a second click reverses it
    assert [float(t) for t in lr_column.all_inner_texts()] == [0.1, 0.05]
    sweep.locator("th", has_text="lr").click()
    assert [float(t) for t in lr_column.all_inner_texts()] == [0.05, 0.1]
    page.goto(page.base + "/#/report/study")
    page.wait_for_selector(".report img")
    wait_until(page, "() => [...document.querySelectorAll('.report img')].every(i => i.complete && i.naturalWidth > 0)")
    page.goto(page.base + "/#/runs/sweep")
    page.wait_for_selector(".runs-table tbody tr")
    page.locator(".runs-table tbody tr a", has_text="draw").first.click()
    page.wait_for_selector("#draw")


@pytest.mark.parametrize("view", ["draw/cnn-run", "model/cnn-run", "mistakes/cnn-run", "runs", "report/study"])
def test_views_fit_a_phone(browser, server, view):
    context = browser.new_context(viewport={"width": 390, "height": 844}, device_scale_factor=2, has_touch=True)
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(f"http://{server.host}:{server.port}/#/{view}")
    page.wait_for_selector("main .card", timeout=60_000)
    page.wait_for_load_state("networkidle")
    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    context.close()
    assert overflow <= 0, f"#/{view} is {overflow} px wider than a phone"
    assert errors == []
