"""Does ``npconv serve`` stay responsive while a run started from its Train view trains?

Starts ``npconv serve`` on a fresh folder of runs and a model file (an untrained default cnn: latency needs no
training) in a child process, as a user would, and times real HTTP requests on loopback, one after the other:

* ``POST /api/predict?activations=1`` (a digit on a 300 px canvas; every layer's output in the answer),
* ``GET /api/runs/RUN`` (what the page asks for a run, its step losses included),

first with nothing training (idle), then while a run started with ``POST /api/train`` trains in the server's
worker process (a cnn on ``--images`` images for ``--epochs`` epochs), until it ends. Each request's time is
measured by the client, from sending the request to the last byte of the answer; every predict answer is checked
(status 200, ten probabilities). The issue's must: the median of ``POST /api/predict`` while training <= 200 ms
on 2 cores.

Usage::

    python benchmarks/serve_train.py                      # cnn, 2 epochs of 10 000 images
    python benchmarks/serve_train.py --images 20000 --epochs 3
"""

import argparse
import http.client
import json
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from canvases import canvases  # noqa: E402
from serve_latency import untrained_model  # noqa: E402
from served import start_server  # noqa: E402
from speed import machine  # noqa: E402

from npconv.text import plural  # noqa: E402

MUST_MS = 200


def timed(conn, method, path, body=None, headers=None):
    """``(milliseconds, status, body)`` of one request on the keep-alive connection ``conn``."""
    started = time.perf_counter()
    conn.request(method, path, body=body, headers=headers or {})
    response = conn.getresponse()
    data = response.read()
    return 1000 * (time.perf_counter() - started), response.status, data


def sample(conn, images, run, until, gap):
    """Alternate predict and run-detail requests until ``until()`` says stop; the times of each, in ms."""
    predict, detail, i = [], [], 0
    while not until():
        ms, status, body = timed(conn, "POST", "/api/predict?activations=1", images[i % len(images)],
                                 {"Content-Type": "image/png"})
        answer = json.loads(body)
        if status != 200 or len(answer["probabilities"]) != 10:
            sys.exit(f"a predict request failed: {status} {body[:200]!r}")
        predict.append(ms)
        if run is not None:
            ms, status, body = timed(conn, "GET", f"/api/runs/{run}")
            if status != 200:
                sys.exit(f"GET /api/runs/{run} failed: {status} {body[:200]!r}")
            detail.append(ms)
        i += 1
        time.sleep(gap)
    return predict, detail


def row(name, times):
    if not times:
        return f"| {name} | 0 | — | — | — |"
    ordered = sorted(times)
    p90 = ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]
    return f"| {name} | {len(times)} | {statistics.median(times):.1f} | {p90:.1f} | {max(times):.1f} |"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=10_000, help="training images of the run (default: 10000)")
    parser.add_argument("--epochs", type=int, default=2, help="its epochs (default: 2)")
    parser.add_argument("--idle", type=int, default=50, help="predict requests timed before training (default: 50)")
    parser.add_argument("--gap", type=float, default=0.05, help="seconds between requests (default: 0.05)")
    args = parser.parse_args()

    images = [png for png, _ in canvases("white", n=50)]
    with tempfile.TemporaryDirectory() as tmp:
        runs = os.path.join(tmp, "runs")
        os.mkdir(runs)
        proc, host, port = start_server(runs, untrained_model(tmp))
        try:
            conn = http.client.HTTPConnection(host, port, timeout=60)
            count = iter(range(args.idle + 1))
            idle, _ = sample(conn, images, None, lambda: next(count) >= args.idle, args.gap)
            settings = {"model": "cnn", "epochs": args.epochs, "train_subset": args.images}
            _, status, body = timed(conn, "POST", "/api/train", json.dumps(settings).encode(),
                                    {"Content-Type": "application/json"})
            if status != 202:
                sys.exit(f"POST /api/train failed: {status} {body!r}")
            run = json.loads(body)["run"]
            started = time.monotonic()

            def over():
                _, _, body = timed(conn, "GET", f"/api/runs/{run}")
                return json.loads(body)["status"] != "running"

            busy, detail = sample(conn, images, run, over, args.gap)
            seconds = time.monotonic() - started
            final = json.loads(timed(conn, "GET", f"/api/runs/{run}")[2])
        finally:
            proc.terminate()
            proc.wait(timeout=60)

    print(f"# npconv serve while a run trains -- {machine()}")
    print(f"run: cnn, {args.images} images, {plural(args.epochs, 'epoch')}, {seconds:.1f} s in the worker, "
          f"status {final['status']}, {len(final['losses'])} step losses")
    print()
    print("| requests (ms, one client) | n | median | p90 | max |")
    print("|---|---|---|---|---|")
    print(row("POST /api/predict, idle", idle))
    print(row("POST /api/predict, while training", busy))
    print(row("GET /api/runs/RUN, while training", detail))
    median = statistics.median(busy) if busy else float("nan")
    verdict = "holds" if median <= MUST_MS else "FAILS"
    print(f"\nsummary: predict median {statistics.median(idle):.1f} ms idle, {median:.1f} ms while training "
          f"(must <= {MUST_MS} ms: {verdict})")


if __name__ == "__main__":
    main()
