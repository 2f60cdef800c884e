"""Accuracy of ``npconv serve`` on drawings: MNIST test digits pasted large and off-centre on canvases, sent to
``POST /api/predict`` of a real server, as the page and scripts send them.

The canvases are those of :mod:`canvases` (white PNG, transparent PNG, JPEG; the same images the ``predict``
benchmark uses). Each kind's accuracy is printed, and how many answers agree with the library path of
``npconv predict`` (:class:`npconv.inference.Classifier`) on the same files: both preprocess with
:func:`npconv.data.images.preprocess`, so every answer should agree.

Usage::

    python benchmarks/serve_accuracy.py --model runs/X/model.npz     # a trained model (or its run folder)
    python benchmarks/serve_accuracy.py                              # trains the default cnn first (npconv train)
    python benchmarks/serve_accuracy.py --model M --n 300            # a quicker look: 300 digits of each kind
"""

import argparse
import http.client
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from canvases import KINDS, canvases  # noqa: E402
from served import start_server  # noqa: E402

from npconv.inference import Classifier  # noqa: E402

TARGET = 0.98


def train_default(folder):
    out = os.path.join(folder, "cnn")
    print(f"training the default cnn (npconv train --out {out}) ...", flush=True)
    subprocess.run([sys.executable, "-m", "npconv", "train", "--out", out, "--quiet"], check=True)
    return os.path.join(out, "model.npz")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="model.npz or a run folder (default: train the default cnn first)")
    parser.add_argument("--n", type=int, default=1000, help="test digits per kind of canvas (default: %(default)s)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        model_path = args.model or train_default(tmp)
        if os.path.isdir(model_path):
            model_path = os.path.join(model_path, "model.npz")
        classifier = Classifier(model_path)
        proc, host, port = start_server(model_path)
        conn = http.client.HTTPConnection(host, port, timeout=60)
        rows = []
        try:
            for kind in KINDS:
                content_type = "image/jpeg" if kind == "jpeg" else "image/png"
                right = agree = failed = 0
                start = time.perf_counter()
                for i, (image, label) in enumerate(canvases(kind, args.n)):
                    conn.request("POST", "/api/predict", body=image, headers={"Content-Type": content_type})
                    response = conn.getresponse()
                    body = response.read()
                    if response.status != 200:
                        failed += 1
                        continue
                    answer = json.loads(body)["prediction"]
                    right += answer == label
                    path = os.path.join(tmp, f"{kind}-{i}.{'jpg' if kind == 'jpeg' else 'png'}")
                    with open(path, "wb") as f:
                        f.write(image)
                    agree += answer == classifier.classify([path])[0].index
                rows.append((kind, args.n, right / args.n, agree, failed, time.perf_counter() - start))
        finally:
            proc.terminate()
            proc.wait(timeout=30)

    print(f"model: {args.model or 'the default cnn, trained now'}; {args.n} MNIST test digits per kind of canvas")
    print("\n| canvas | digits | accuracy via POST /api/predict | same answer as npconv predict | failed | s |")
    print("|---|---|---|---|---|---|")
    for kind, n, acc, agree, failed, seconds in rows:
        print(f"| {kind} | {n} | {100 * acc:.2f} % | {agree}/{n} | {failed} | {seconds:.1f} |")
    total = sum(acc * n for _, n, acc, *_ in rows) / sum(n for _, n, *_ in rows)
    worst = min(acc for _, _, acc, *_ in rows)
    print(f"summary: {100 * total:.2f} % of {sum(r[1] for r in rows)} canvases right through POST /api/predict "
          f"(worst kind {100 * worst:.2f} %); answers equal to npconv predict's: "
          f"{sum(r[3] for r in rows)}/{sum(r[1] for r in rows)}; target >= {100 * TARGET:.0f} % "
          f"{'met' if worst >= TARGET else 'NOT met'}")


if __name__ == "__main__":
    main()
