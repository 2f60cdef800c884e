"""Speed of npconv against PyTorch on the CPU, side by side in one run.

Workloads (float32, MNIST, batch 100, SGD with momentum 0.9 and weight decay 5e-4):

* ``cnn`` and ``mlp`` training: seconds per epoch -- 600 steps over the shuffled
  training set, batching included -- written as a user writes it: an
  ``nn.Sequential`` from :mod:`npconv.models` and ``optim.SGD`` for npconv, the
  same ``torch.nn.Sequential`` and ``torch.optim.SGD`` for PyTorch;
* ``cnn-bn`` training (the strongest preset: conv-BN-ReLU-pool twice, a BN classifier), seconds per epoch,
  beside PyTorch running the same architecture (no shifts on either side: the same batches);
* ``cnn`` inference on the 10,000 test images, batch 1000;
* peak memory (RSS) of ``npconv train`` on MNIST (one epoch, in a child process);
* the physical floor: the multiply-adds of one ``cnn`` epoch (forward and
  backward) divided by the float32 matrix-product rate NumPy reaches here.

PyTorch runs with its default threads, warmed up. The two libraries take turns,
workload by workload, for ``--repeats`` rounds; each timing is the best round,
and the ratio of every round is printed too. Usage::

    python benchmarks/speed.py              # about 3 minutes on 2 cores
    python benchmarks/speed.py --steps 100  # a quicker look (epoch times extrapolated from 100 steps)
"""

import argparse
import importlib.util
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

from npconv import data, models, nn, optim
from npconv.train import parallel

BATCH = 100


def npconv_epoch(model_name, x, y, steps, rng):
    """Seconds for ``steps`` training steps of npconv, batching included."""
    model = models.build_model(model_name, rng=np.random.default_rng(0))
    loss_fn = nn.SoftmaxCrossEntropyLoss()
    opt = optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    loader = data.DataLoader(x, y, BATCH, shuffle=True, rng=rng)

    def run(n):
        for i, (xb, yb) in enumerate(loader):
            if i == n:
                break
            opt.zero_grad()
            loss_fn(model(xb), yb)
            model.backward(loss_fn.backward(), input_grad=False)
            opt.step()

    run(10)  # warm-up
    started = time.perf_counter()
    run(steps)
    return time.perf_counter() - started


def torch_twin(model_name):
    import torch.nn as tnn

    if model_name == "cnn-bn":
        return torch_cnn_bn()
    if model_name == "cnn":
        return tnn.Sequential(
            tnn.Conv2d(1, 8, 3, padding=1), tnn.ReLU(), tnn.MaxPool2d(2),
            tnn.Conv2d(8, 16, 3, padding=1), tnn.ReLU(), tnn.MaxPool2d(2),
            tnn.Flatten(), tnn.Linear(784, 128), tnn.ReLU(), tnn.Linear(128, 10),
        )
    return tnn.Sequential(tnn.Flatten(), tnn.Linear(784, 128), tnn.ReLU(), tnn.Linear(128, 10))


def torch_cnn_bn():
    """PyTorch's twin of npconv's ``cnn-bn`` preset (npconv/models/presets.py)."""
    import torch.nn as tnn

    return tnn.Sequential(
        tnn.Conv2d(1, 16, 3, padding=1), tnn.BatchNorm2d(16), tnn.ReLU(), tnn.MaxPool2d(2),
        tnn.Conv2d(16, 32, 3, padding=1), tnn.BatchNorm2d(32), tnn.ReLU(), tnn.MaxPool2d(2),
        tnn.Flatten(), tnn.Linear(32 * 7 * 7, 128), tnn.BatchNorm1d(128), tnn.ReLU(), tnn.Linear(128, 10),
    )


def torch_epoch(model_name, x, y, steps, rng):
    """Seconds for ``steps`` training steps of PyTorch, batching included (same batches as npconv)."""
    import torch

    model = torch_twin(model_name)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    loader = data.DataLoader(x, y.astype(np.int64), BATCH, shuffle=True, rng=rng)

    def run(n):
        for i, (xb, yb) in enumerate(loader):
            if i == n:
                break
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(torch.from_numpy(xb)), torch.from_numpy(yb))
            loss.backward()
            opt.step()

    run(10)
    started = time.perf_counter()
    run(steps)
    return time.perf_counter() - started


def npconv_inference(x):
    model = parallel.DataParallel(models.cnn(rng=np.random.default_rng(0))).eval()
    with nn.no_grad():
        model(x[:1000])
        started = time.perf_counter()
        for i in range(0, len(x), 1000):
            model(x[i : i + 1000]).argmax(axis=1)
    return time.perf_counter() - started


def torch_inference(x):
    import torch

    model = torch_twin("cnn").eval()
    with torch.no_grad():
        model(torch.from_numpy(x[:1000]))
        started = time.perf_counter()
        for i in range(0, len(x), 1000):
            model(torch.from_numpy(x[i : i + 1000])).argmax(1)
    return time.perf_counter() - started


def peak_rss_of_train():
    """Peak RSS in MB of ``npconv train`` (1 epoch) in a child process."""
    with tempfile.TemporaryDirectory() as out:
        subprocess.run([sys.executable, "-m", "npconv", "train", "--epochs", "1", "--quiet", "--out", out],
                       check=True, stdout=subprocess.DEVNULL)
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def cnn_epoch_macs():
    """Multiply-adds of one cnn training epoch (600 steps of 100): forward, dW and dx products."""
    per_image = (
        28 * 28 * 8 * 9          # conv1: 8 outputs per pixel, 3x3x1 each
        + 14 * 14 * 16 * 72      # conv2: 16 outputs per pixel, 3x3x8 each
        + 784 * 128 + 128 * 10   # the two Linear layers
    )
    conv1 = 28 * 28 * 8 * 9
    # forward + weight gradient (same size) + input gradient (all but conv1, which needs none)
    return 600 * BATCH * (3 * per_image - conv1)


def matmul_rate():
    """float32 multiply-adds per second NumPy reaches on this training's largest products."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((16, 72)).astype(np.float32)
    b = rng.standard_normal((72, 19600)).astype(np.float32)
    a @ b
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(20):
            a @ b
        best = min(best, (time.perf_counter() - started) / 20)
    return 16 * 72 * 19600 / best


def main(argv=None):
    parser = argparse.ArgumentParser(description="npconv vs PyTorch speed on MNIST")
    parser.add_argument("--steps", type=int, default=600, help="training steps timed per epoch (default 600)")
    parser.add_argument("--repeats", type=int, default=3, help="rounds; each figure is the best round (default 3)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory run")
    args = parser.parse_args(argv)

    if importlib.util.find_spec("torch") is None:
        sys.exit("speed.py compares with PyTorch: pip install -e '.[bench]'")

    mnist = data.load_dataset("mnist")
    mean, std = data.pixel_stats(mnist.train_images)
    x, y = data.to_float(mnist.train_images, mean, std), mnist.train_labels
    x_test = data.to_float(mnist.test_images, mean, std)
    scale = 600 / args.steps

    labels = ["cnn training, s/epoch", "mlp training, s/epoch", "cnn inference, 10k images, s",
              "cnn-bn training, s/epoch"]
    ours_fns = [lambda: npconv_epoch("cnn", x, y, args.steps, np.random.default_rng(0)) * scale,
                lambda: npconv_epoch("mlp", x, y, args.steps, np.random.default_rng(0)) * scale,
                lambda: npconv_inference(x_test),
                lambda: npconv_epoch("cnn-bn", x, y, args.steps, np.random.default_rng(0)) * scale]
    theirs_fns = [lambda: torch_epoch("cnn", x, y, args.steps, np.random.default_rng(0)) * scale,
                  lambda: torch_epoch("mlp", x, y, args.steps, np.random.default_rng(0)) * scale,
                  lambda: torch_inference(x_test),
                  lambda: torch_epoch("cnn-bn", x, y, args.steps, np.random.default_rng(0)) * scale]

    # Rounds, each timing every workload with npconv and then with PyTorch: timings on a
    # shared machine drift over minutes, and interleaving puts both sides under the same
    # drift. After a PyTorch run, a pause lets its OpenMP threads stop spinning before
    # NumPy runs again. PyTorch is imported only at its first run: `npconv train` never
    # loads it, and npconv's first round runs without it.
    rss = None if args.no_memory else peak_rss_of_train()
    rate = matmul_rate()
    times = {(side, i): [] for side in ("ours", "theirs") for i in range(len(labels))}
    for _ in range(args.repeats):
        for i in range(len(labels)):
            times["ours", i].append(ours_fns[i]())
            times["theirs", i].append(theirs_fns[i]())
            time.sleep(1)
    rows = [(label, min(times["ours", i]), min(times["theirs", i])) for i, label in enumerate(labels)]

    import torch

    floor = cnn_epoch_macs() / rate
    print(f"\nmachine: {os.cpu_count()} cores; npconv splits batches of {2 * parallel.MIN_CHUNK}+ over "
          f"{parallel.get_num_threads()} threads; "
          f"PyTorch {torch.__version__} with {torch.get_num_threads()} threads; numpy {np.__version__}")
    print("| workload | npconv | PyTorch | ratio npconv/PyTorch |")
    print("|---|---|---|---|")
    for label, ours, theirs in rows:
        print(f"| {label} | {ours:.3f} | {theirs:.3f} | {ours / theirs:.2f} |")
    if not args.no_memory:
        print(f"| peak RSS of `npconv train`, MB | {rss:.0f} | | |")
    for i, label in enumerate(labels):
        per_round = " ".join(f"{a / b:.2f}" for a, b in zip(times["ours", i], times["theirs", i]))
        print(f"{label}: ratio in each round {per_round}")
    cnn_ours = rows[0][1]
    print(f"\nfloor: one cnn epoch is {cnn_epoch_macs() / 1e9:.2f} G multiply-adds; at NumPy's "
          f"{rate / 1e9:.1f} G multiply-adds/s that is {floor:.2f} s; npconv takes {cnn_ours / floor:.1f}x the floor")
    print("summary: " + "; ".join(f"{label} {ours / theirs:.2f}x PyTorch" for label, ours, theirs in rows))


if __name__ == "__main__":
    main()
