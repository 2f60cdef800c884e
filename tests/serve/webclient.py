"""Helpers of the serve tests: a real HTTP client, a real ``npconv serve`` process, test images."""

import base64
import http.client
import io
import json
import subprocess
import sys
import time

import numpy as np
from PIL import Image


class Client:
    """Real HTTP requests to a running server (http.client sends paths as given: nothing normalized)."""

    def __init__(self, host, port):
        self.host, self.port = host, port

    def request(self, method, path, body=None, headers=None, timeout=60):
        conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            conn.close()

    def get(self, path, **kwargs):
        return self.request("GET", path, **kwargs)

    def json(self, path):
        status, _, body = self.get(path)
        assert status == 200, f"GET {path}: {status} {body[:300]!r}"
        return json.loads(body)

    def predict(self, image_bytes, query="", content_type="image/png"):
        return self.request("POST", "/api/predict" + query, body=image_bytes, headers={"Content-Type": content_type})


def start_server(paths, *extra):
    """``python -m npconv serve PATHS --port 0`` in a subprocess; returns (process, host, port) once it answers."""
    proc = subprocess.Popen([sys.executable, "-m", "npconv", "serve", *paths, "--port", "0", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if "http://" not in line:
        proc.kill()
        raise AssertionError(f"npconv serve did not start: {line!r} {proc.stderr.read()!r}")
    address = line.split("http://")[1].split("/")[0]
    host, port = address.rsplit(":", 1)
    client = Client(host.strip("[]"), int(port))
    deadline = time.monotonic() + 30
    while True:
        try:
            if client.get("/api/runs")[0] == 200:
                return proc, client
        except OSError:
            if time.monotonic() > deadline:
                proc.kill()
                raise
            time.sleep(0.1)


def stop_server(proc):
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def on_paper(digit, scale=8, size=300, at=(40, 30)):
    """A 28x28 MNIST digit enlarged and pasted dark on white paper, as PNG bytes."""
    big = Image.fromarray(255 - digit).resize((28 * scale, 28 * scale), Image.Resampling.BICUBIC)
    paper = Image.new("L", (size, size), 255)
    paper.paste(big, at)
    buf = io.BytesIO()
    paper.save(buf, "PNG")
    return buf.getvalue()


def decode_activation(a):
    """One activation of a ``POST /api/predict?activations=1`` answer as an array."""
    return np.frombuffer(base64.b64decode(a["data"]), dtype="<f4").reshape(a["shape"])


def draw_digit(page, digit, threshold=100):
    """Draw a 28x28 digit on the page's ``#draw`` canvas with mouse strokes: one stroke along each run of inked
    pixels of each row, scaled to the canvas (the pen is about two pixels of the digit wide)."""
    box = page.locator("#draw").bounding_box()
    scale = box["width"] / 28
    at = lambda x, y: (box["x"] + (x + 0.5) * scale, box["y"] + (y + 0.5) * scale)
    for y in range(28):
        x = 0
        while x < 28:
            if digit[y, x] > threshold:
                start = x
                while x < 28 and digit[y, x] > threshold:
                    x += 1
                page.mouse.move(*at(start, y))
                page.mouse.down()
                page.mouse.move(*at(x - 1, y), steps=3)
                page.mouse.up()
            x += 1
