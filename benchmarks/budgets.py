"""Time budgets of things a user waits for: loading MNIST, refusing a bad IDX file, a small answer of npconv serve.

The tests check what these do (the data, the error, the answer); how long they take depends on the machine and
its load, so it is measured here, on a quiet machine, against a budget:

* **loading MNIST** -- ``npconv.data.load_dataset("mnist")``: the vendored gz files decompressed, checked
  against their SHA-256 sums and parsed (budget 3 s);
* **refusing an absurd IDX header** -- ``read_idx`` on a file whose header promises 10^12 bytes: the error must
  come from the header, before anything is read or allocated (budget 0.5 s);
* **a small answer on a kept-alive connection** -- ``GET`` of a missing run from a real ``npconv serve`` in a
  child process, seven requests on one connection, the median: with Nagle's algorithm left on, each such
  answer waits for the client's delayed ACK (budget 30 ms).

Usage::

    python benchmarks/budgets.py            # a few seconds; prints a table and a summary: line

Exit status 1 when a budget is exceeded.
"""

import gzip
import http.client
import os
import statistics
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from served import start_server  # noqa: E402
from speed import machine  # noqa: E402

from npconv import models  # noqa: E402
from npconv.data import load_dataset, read_idx  # noqa: E402
from npconv.errors import DataError  # noqa: E402
from npconv.train.modelfile import save_model  # noqa: E402

REPEATS = 3


def best_seconds(work, repeats=REPEATS):
    """The best of ``repeats`` wall-clock timings of ``work()``."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return min(times)


def load_mnist():
    dataset = load_dataset("mnist")
    assert dataset.train_images.shape == (60000, 28, 28)


def absurd_header(folder):
    """A gzip IDX file whose header promises 10^6 x 10^6 bytes; returns a function that reads it (and must fail)."""
    path = os.path.join(folder, "absurd-idx3-ubyte.gz")
    header = bytes([0, 0, 0x08, 2]) + (10**6).to_bytes(4, "big") * 2
    with open(path, "wb") as f:
        f.write(gzip.compress(header + b"\x00" * 100, mtime=0))

    def read():
        try:
            read_idx(path)
        except DataError:
            return
        raise AssertionError(f"{path}: read without an error")

    return read


def small_answers(folder, requests=7):
    """Median seconds of ``requests`` small answers (a 404) on one kept-alive connection to ``npconv serve``."""
    model = models.cnn(rng=np.random.default_rng(0))
    path = os.path.join(folder, "model.npz")
    save_model(path, model, {"model": "cnn", "dropout": 0.0, "dropout_at": "before-fc", "dtype": "float32",
                             "num_classes": 10, "classes": [str(k) for k in range(10)], "dataset": "mnist",
                             "normalize_mean": 0.1307, "normalize_std": 0.3081})
    proc, host, port = start_server(path)
    try:
        conn = http.client.HTTPConnection(host, port, timeout=30)
        times = []
        for _ in range(requests):
            start = time.perf_counter()
            conn.request("GET", "/api/runs/nope")
            response = conn.getresponse()
            response.read()
            times.append(time.perf_counter() - start)
            assert response.status == 404, response.status
        conn.close()
        return statistics.median(times)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main():
    with tempfile.TemporaryDirectory() as folder:
        rows = [
            ("load MNIST (best of 3)", best_seconds(load_mnist), 3.0),
            ("refuse an absurd IDX header (best of 3)", best_seconds(absurd_header(folder)), 0.5),
            ("npconv serve: a small answer, kept-alive connection (median of 7)", small_answers(folder), 0.030),
        ]
    print(machine())
    print("\n| what | seconds | budget | |\n|---|---|---|---|")
    for what, seconds, budget in rows:
        print(f"| {what} | {seconds:.4f} | {budget:g} | {'within' if seconds <= budget else 'OVER'} |")
    over = [what for what, seconds, budget in rows if seconds > budget]
    print("summary: " + "; ".join(f"{what.split(' (')[0]} {seconds:.3f} s (budget {budget:g})"
                                  for what, seconds, budget in rows)
          + (f"; OVER BUDGET: {', '.join(over)}" if over else "; all within budget"))
    return 1 if over else 0


if __name__ == "__main__":
    sys.exit(main())
