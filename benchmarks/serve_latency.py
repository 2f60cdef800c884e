"""Latency of ``npconv serve``: ``POST /api/predict?activations=1`` with real HTTP requests.

Starts ``npconv serve MODEL --port 0`` in a child process, as a user would, and sends it real image files
(MNIST test digits pasted on 200-400 px white canvases, :mod:`canvases`) over HTTP on loopback:

* 1 client: requests one after the other;
* 8 clients at once: eight threads, each with its own keep-alive connection.

Each request's time is measured by the client, from sending the request to the last byte of the answer
(activations of every layer included, about 120 kB of JSON). Every answer is checked: status 200, ten
probabilities equal to those the same image gets in this process (``npconv.serve.network.classify``), every
layer's activations present. The table gives the median and the 99th percentile.

For reference, the same per-image work without HTTP is timed in this process: npconv (preprocessing and the
layer-by-layer forward pass that keeps every layer's output) and PyTorch (the same preprocessing, then the
same network with the same weights, keeping every layer's output), both on one thread, as a ratio.

Usage::

    python benchmarks/serve_latency.py                     # an untrained default cnn (latency needs no training)
    python benchmarks/serve_latency.py --model runs/X/model.npz --requests 500
"""

import argparse
import base64
import http.client
import json
import os
import statistics
import sys
import tempfile
import threading
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from canvases import canvases  # noqa: E402
from served import start_server  # noqa: E402
from speed import machine  # noqa: E402

from npconv import models  # noqa: E402
from npconv.inference import Classifier  # noqa: E402
from npconv.serve.network import classify  # noqa: E402
from npconv.train.modelfile import save_model  # noqa: E402


def untrained_model(folder):
    """A default cnn with random weights (its output layer too, so answers differ between images)."""
    rng = np.random.default_rng(0)
    model = models.cnn(rng=rng)
    last = model[len(model) - 1]
    last.weight.data[...] = 0.05 * rng.standard_normal(last.weight.data.shape)
    path = os.path.join(folder, "model.npz")
    save_model(path, model, {"model": "cnn", "dropout": 0.0, "dropout_at": "before-fc", "dtype": "float32",
                             "num_classes": 10, "classes": [str(k) for k in range(10)], "dataset": "mnist",
                             "normalize_mean": 0.1307, "normalize_std": 0.3081})
    return path


class Client:
    """One keep-alive connection; ``send`` returns (seconds, status, parsed answer)."""

    def __init__(self, host, port):
        self.conn = http.client.HTTPConnection(host, port, timeout=60)

    def send(self, image):
        start = time.perf_counter()
        self.conn.request("POST", "/api/predict?activations=1", body=image, headers={"Content-Type": "image/png"})
        response = self.conn.getresponse()
        body = response.read()
        seconds = time.perf_counter() - start
        return seconds, response.status, json.loads(body) if response.status == 200 else body


def check(answer, expected, layers):
    """Whether an answer is complete and right; the reason if not."""
    status_ok, answer = answer
    if not status_ok:
        return f"status: {answer!r:.200}"
    if answer["probabilities"] != expected:
        return "probabilities differ from the in-process answer"
    activations = answer.get("activations") or []
    if len(activations) != layers or any(len(base64.b64decode(a["data"])) != 4 * int(np.prod(a["shape"]))
                                         for a in activations):
        return "activations missing or truncated"
    return None


def run_clients(host, port, images, expected, layers, clients, per_client):
    """``clients`` threads each sending ``per_client`` requests; returns (latencies, failures, wall seconds)."""
    latencies, failures = [], []
    lock = threading.Lock()
    barrier = threading.Barrier(clients)

    def work(k):
        client = Client(host, port)
        barrier.wait()
        for i in range(per_client):
            j = (k * per_client + i) % len(images)
            try:
                seconds, status, answer = client.send(images[j])
                problem = check((status == 200, answer), expected[j], layers)
            except (OSError, http.client.HTTPException, ValueError) as e:
                seconds, problem = None, f"{type(e).__name__}: {e}"
                client = Client(host, port)
            with lock:
                if seconds is not None:
                    latencies.append(seconds)
                if problem:
                    failures.append(problem)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, failures, time.perf_counter() - start


def percentile(values, q):
    return float(np.percentile(np.array(values), q))


def in_process_times(classifier, images, repeats):
    """Median seconds per image without HTTP: npconv's classify with activations, and PyTorch's equivalent,
    both on one thread (one image is far too little work to share; on a busy machine PyTorch's threads spin)."""
    from threadpoolctl import threadpool_limits

    ours = []
    with threadpool_limits(limits=1, user_api="blas"):
        for _ in range(repeats):
            for image in images:
                start = time.perf_counter()
                classify(classifier, image, activations=True)
                ours.append(time.perf_counter() - start)
    try:
        import torch
    except ImportError:
        return statistics.median(ours), None
    torch.set_num_threads(1)
    from npconv.data.images import preprocess

    twin = torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(8, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Flatten(), torch.nn.Linear(784, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10)).eval()
    twin.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v))
                          for k, v in classifier.network.state_dict().items()})
    theirs = []
    with torch.no_grad():
        for _ in range(repeats):
            for image in images:
                start = time.perf_counter()
                x = torch.from_numpy(classifier.inputs(preprocess(image)[None]))
                outputs = []
                for layer in twin:
                    x = layer(x)
                    outputs.append(x.numpy())
                torch.softmax(x, dim=1).numpy()
                theirs.append(time.perf_counter() - start)
    return statistics.median(ours), statistics.median(theirs)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="model.npz (default: an untrained default cnn)")
    parser.add_argument("--requests", type=int, default=300, help="requests per scenario (default: %(default)s)")
    parser.add_argument("--images", type=int, default=32, help="distinct canvases sent (default: %(default)s)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        model_path = args.model or untrained_model(tmp)
        classifier = Classifier(model_path)
        if classifier.config["model"] != "cnn":
            sys.exit("the PyTorch reference here is the default cnn; give a cnn model")
        images = [image for image, _ in canvases("white", args.images)]
        expected = [list(classify(classifier, image).prediction.probabilities.values()) for image in images]
        layers = len(classifier.network)
        ours, theirs = in_process_times(classifier, images, repeats=3)

        proc, host, port = start_server(model_path)
        try:
            warm = Client(host, port)
            for image in images[:8]:
                warm.send(image)
            rows = []
            for clients in (1, 8):
                latencies, failures, wall = run_clients(host, port, images, expected, layers, clients,
                                                        max(1, args.requests // clients))
                rows.append((clients, len(latencies), statistics.median(latencies), percentile(latencies, 99),
                             len(latencies) / wall, failures))
        finally:
            proc.terminate()
            proc.wait(timeout=30)

    print(f"machine: {machine()}")
    print(f"model: {args.model or 'untrained default cnn'}; {len(images)} distinct PNG canvases of 200-400 px")
    print("\n| clients at once | requests | median ms | p99 ms | requests/s | failed |")
    print("|---|---|---|---|---|---|")
    for clients, n, median, p99, rate, failures in rows:
        print(f"| {clients} | {n} | {1000 * median:.1f} | {1000 * p99:.1f} | {rate:.0f} | {len(failures)} |")
    for clients, *_, failures in rows:
        for problem in sorted(set(failures))[:5]:
            print(f"  {clients} clients: {problem}")
    print(f"\nper image without HTTP, one thread (preprocessing + every layer's output): npconv {1000 * ours:.2f} ms"
          + (f", PyTorch {1000 * theirs:.2f} ms, ratio npconv/PyTorch {ours / theirs:.2f}" if theirs else
             " (PyTorch not installed: no reference)"))
    one, eight = rows
    verdict = "met" if one[2] <= 0.020 else "NOT met"
    print(f"summary: POST /api/predict with activations, median {1000 * one[2]:.1f} ms (p99 {1000 * one[3]:.1f}) "
          f"at 1 client, {1000 * eight[2]:.1f} ms (p99 {1000 * eight[3]:.1f}) at 8 clients; "
          f"{len(one[5]) + len(eight[5])} failed answers; target <= 20 ms median {verdict}"
          + (f"; in-process compute {ours / theirs:.2f}x PyTorch" if theirs else ""))


if __name__ == "__main__":
    main()
