"""The Train view in a real browser (headless Chromium, as test_browser.py): start a run from the form, watch
its curve and filters change, stop it mid-epoch and resume it, reload mid-run."""

import os
import subprocess
import sys
import time

import pytest
from .test_browser import browser, expect, wait_until  # noqa: F401 (browser is a fixture)
from .webclient import start_server, stop_server


@pytest.fixture(scope="module")
def train_server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("browser-train") / "runs"
    folder.mkdir()
    proc, client = start_server([str(folder)])
    client.folder = str(folder)
    yield client
    stop_server(proc)


@pytest.fixture
def train_page(browser, train_server):  # noqa: F811
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    errors = []
    page.on("console", lambda message: message.type == "error" and errors.append(message.text))
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(f"http://{train_server.host}:{train_server.port}/#/train")
    page.wait_for_selector("#train-form [name=epochs]")
    yield page
    context.close()
    assert errors == [], f"JavaScript errors: {errors}"


def fill(page, **settings):
    for name, value in settings.items():
        field = page.locator(f"#train-form [name={name}]")
        if field.evaluate("e => e.tagName") == "SELECT":
            field.select_option(str(value))
        else:
            field.fill(str(value))


def points(page):
    return int(page.get_attribute("#train-curve", "data-points"))


def filter_pixels(page):
    """The first-layer filter canvases' pixels, and the step they were taken after."""
    pixels = page.eval_on_selector_all("#train-filters canvas.filter", """cs => cs.map(c =>
        Array.from(c.getContext("2d").getImageData(0, 0, c.width, c.height).data))""")
    return page.get_attribute("#train-filters", "data-step"), pixels


def test_start_a_run_and_watch_it_learn(train_page):
    page = train_page
    assert page.input_value("#train-form [name=lr]") == "0.05", "the schema's defaults"
    fill(page, model="cnn", epochs=1, train_subset=800, batch_size=10)
    page.click("#train-start")
    wait_until(page, "() => document.querySelector('#train-filters canvas.filter') !== null")
    first_step, first = filter_pixels(page)
    assert len(first) == 8
    expect(page.locator("#train-status")).to_have_text("completed", timeout=60_000)
    assert points(page) == 80, "every step's loss"
    assert page.locator("#train-curve svg path").count() >= 3
    last_step, last = filter_pixels(page)
    assert int(last_step) == 80 and int(last_step) > int(first_step)
    assert last != first, "the filters changed as the run trained"
    assert page.locator("#train-curve .epoch-table tbody tr").count() == 1
    assert page.locator("#train-stop").is_disabled() and page.locator("#train-resume").is_disabled()


def test_stop_mid_epoch_resume_and_reload(train_page):
    page = train_page
    fill(page, model="cnn", epochs=2, train_subset=8000, batch_size=10, lr=0.02)
    page.click("#train-start")
    wait_until(page, "() => +document.querySelector('#train-curve').dataset.points > 20", seconds=60)
    expect(page.locator("#train-status")).to_have_text("running")
    seen = points(page)
    page.reload()  # a reload re-attaches: everything so far, then more
    wait_until(page, f"() => +document.querySelector('#train-curve')?.dataset.points > {seen}", seconds=60)
    assert page.input_value("#train-form [name=batch_size]") == "10", "the form shows the run's settings"
    # Just into the second epoch (800 steps each: the stop lands well before its end, however fast the machine),
    # then stop: the epoch is cut, the first one's checkpoint kept.
    wait_until(page, "() => +document.querySelector('#train-curve').dataset.points > 820", seconds=90)
    page.click("#train-stop")
    expect(page.locator("#train-status")).to_have_text("stopped", timeout=30_000)
    assert page.get_attribute("#train-curve", "data-epochs") == "1"
    stopped_at = points(page)
    assert 800 < stopped_at < 1600
    expect(page.locator(".train-message")).to_contain_text("checkpoint of epoch 1")
    page.click("#train-resume")
    expect(page.locator("#train-status")).to_have_text("completed", timeout=90_000)
    assert points(page) == 1600, "the cut epoch's steps once, from the resumed run"
    assert page.get_attribute("#train-curve", "data-epochs") == "2"


def test_the_train_view_fits_a_phone(browser, train_server):  # noqa: F811
    context = browser.new_context(viewport={"width": 390, "height": 844}, device_scale_factor=2, has_touch=True)
    page = context.new_page()
    page.goto(f"http://{train_server.host}:{train_server.port}/#/train")
    page.wait_for_selector("#train-form")
    page.wait_for_load_state("networkidle")
    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    context.close()
    assert overflow <= 0, f"#/train is {overflow} px wider than a phone"


def test_the_runs_view_shows_a_command_line_run_as_it_trains(train_page, train_server):
    page = train_page
    out = os.path.join(train_server.folder, "cli-run")
    proc = subprocess.Popen([sys.executable, "-m", "npconv", "train", "--model", "cnn", "--epochs", "2",
                             "--train-subset", "3000", "--batch-size", "10", "--out", out, "--quiet"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not os.path.exists(os.path.join(out, "config.json")):
            assert proc.poll() is None and time.monotonic() < deadline, "the command-line run did not start"
            time.sleep(0.05)
        page.click(".tabs a[data-view=runs]")
        row = page.locator("tr[data-run=cli-run]")
        # Listed while it trains, linking to the Train view (the status column shows when statuses differ).
        expect(row.locator("a", has_text="watch")).to_be_visible(timeout=30_000)
        assert row.locator(".pill").count() == 0 or row.locator(".pill").inner_text() == "running"
        expect(row.locator("a", has_text="draw")).to_be_visible(timeout=60_000)  # completed: it has a model
        assert row.locator(".pill").count() == 0 or row.locator(".pill").inner_text() == "completed"
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
