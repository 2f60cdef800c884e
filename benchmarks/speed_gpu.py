"""Speed of npconv on an NVIDIA GPU (CuPy) against PyTorch CUDA, eager and with the step in a CUDA graph.

``python benchmarks/speed.py --device cuda`` runs this (or ``python benchmarks/speed_gpu.py``). Workloads, the
study's ConvNet with MNIST held on the GPU, SGD with momentum 0.9 and weight decay 5e-4:

* training, batch 100 and batch 1000, seconds per epoch (the 60,000 training images, batches gathered on the
  device from a fresh permutation each epoch);
* inference on the 10,000 test images in one batch.

npconv runs as ``npconv train --device cuda`` does: the same hand-written layers through CuPy, no host
synchronisation inside a step. PyTorch runs eager, and -- the best a PyTorch user can do at this size -- with
the whole training step captured in one CUDA graph (the pattern of PyTorch's CUDA Graphs documentation: static
input tensors, warm-up on a side stream, ``torch.cuda.graph``, ``graph.replay()``). Every timing ends with a
device synchronisation; each figure is the best of ``--repeats`` rounds, npconv and PyTorch taking turns.

NOTE: written and checked for syntax on machines without a GPU; its first run on a GPU is its test. It prints
what it measured, never a figure it did not.
"""

import argparse
import sys
import time

import numpy as np

from npconv import backend, data, engine, models, nn, optim


def npconv_training(x, y, batch, steps):
    """Seconds of ``steps`` npconv training steps on the device (batches gathered there)."""
    cupy = backend.use("cupy")
    model = models.cnn(rng=np.random.default_rng(0))
    net = engine.compile(model)  # as npconv train runs it (on a GPU: the engine's kernels, one batch)
    opt = optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    loss_fn = nn.SoftmaxCrossEntropyLoss()
    xd, yd = backend.to_device(x), backend.to_device(y)
    order = backend.to_device(np.random.default_rng(0).permutation(len(x)))

    def step(i):
        idx = order[(i * batch) % (len(x) - batch + 1):][:batch]
        opt.zero_grad()
        loss_fn(net(xd[idx]), yd[idx])
        net.backward(loss_fn.backward(), input_grad=False)
        opt.step()

    for i in range(10):
        step(i)
    cupy.cuda.Device().synchronize()
    started = time.perf_counter()
    for i in range(steps):
        step(i)
    cupy.cuda.Device().synchronize()
    return time.perf_counter() - started


def npconv_inference(x_test):
    cupy = backend.use("cupy")
    net = engine.compile(models.cnn(rng=np.random.default_rng(0))).eval()
    xd = backend.to_device(x_test)
    with nn.no_grad():
        net(xd).argmax(axis=1)
        cupy.cuda.Device().synchronize()
        started = time.perf_counter()
        net(xd).argmax(axis=1)
        cupy.cuda.Device().synchronize()
    return time.perf_counter() - started


def torch_model():
    import torch.nn as tnn

    return tnn.Sequential(
        tnn.Conv2d(1, 8, 3, padding=1), tnn.ReLU(), tnn.MaxPool2d(2),
        tnn.Conv2d(8, 16, 3, padding=1), tnn.ReLU(), tnn.MaxPool2d(2),
        tnn.Flatten(), tnn.Linear(784, 128), tnn.ReLU(), tnn.Linear(128, 10)).cuda()


def torch_training(x, y, batch, steps, graph):
    """Seconds of ``steps`` PyTorch CUDA training steps, eager or replayed from one captured CUDA graph."""
    import torch

    model = torch_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    xd, yd = torch.from_numpy(x).cuda(), torch.from_numpy(y.astype(np.int64)).cuda()
    order = torch.from_numpy(np.random.default_rng(0).permutation(len(x))).cuda()
    static_x, static_y = xd[:batch].clone(), yd[:batch].clone()

    def step_body():
        opt.zero_grad(set_to_none=False)
        loss = torch.nn.functional.cross_entropy(model(static_x), static_y)
        loss.backward()
        opt.step()

    def load(i):
        idx = order[(i * batch) % (len(x) - batch + 1):][:batch]
        static_x.copy_(xd[idx])
        static_y.copy_(yd[idx])

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up (also what a graph capture needs before it)
        for i in range(10):
            load(i)
            step_body()
    torch.cuda.current_stream().wait_stream(side)
    run = step_body
    if graph:
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            step_body()
        run = g.replay
    torch.cuda.synchronize()
    started = time.perf_counter()
    for i in range(steps):
        load(i)
        run()
    torch.cuda.synchronize()
    return time.perf_counter() - started


def torch_inference(x_test):
    import torch

    model = torch_model().eval()
    xd = torch.from_numpy(x_test).cuda()
    with torch.no_grad():
        model(xd).argmax(1)
        torch.cuda.synchronize()
        started = time.perf_counter()
        model(xd).argmax(1)
        torch.cuda.synchronize()
    return time.perf_counter() - started


def main(argv=None):
    parser = argparse.ArgumentParser(description="npconv (CuPy) vs PyTorch CUDA on MNIST")
    parser.add_argument("--repeats", type=int, default=3, help="rounds; each figure is the best round (default 3)")
    args = parser.parse_args(argv)
    try:
        backend.use_device("cuda")
    except Exception as e:  # noqa: BLE001 - say why and stop: no GPU figure without a GPU
        sys.exit(f"speed_gpu.py needs a CUDA device: {e}")
    backend.use_device("cpu")
    import torch

    mnist = data.load_dataset("mnist")
    mean, std = data.pixel_stats(mnist.train_images)
    x, y = data.to_float(mnist.train_images, mean, std), mnist.train_labels
    x_test = data.to_float(mnist.test_images, mean, std)

    rows = []
    for batch in (100, 1000):
        steps = len(x) // batch
        times = {"npconv": [], "eager": [], "graph": []}
        for _ in range(args.repeats):
            times["npconv"].append(npconv_training(x, y, batch, steps))
            backend.use("numpy")
            times["eager"].append(torch_training(x, y, batch, steps, graph=False))
            times["graph"].append(torch_training(x, y, batch, steps, graph=True))
        rows.append((f"training, batch {batch}, s/epoch", *(min(times[k]) for k in ("npconv", "eager", "graph"))))
    inference = {"npconv": [], "eager": []}
    for _ in range(args.repeats):
        inference["npconv"].append(npconv_inference(x_test))
        backend.use("numpy")
        inference["eager"].append(torch_inference(x_test))
    rows.append(("inference, 10,000 images, s", min(inference["npconv"]), min(inference["eager"]), None))

    import cupy

    print(f"\nGPU: {cupy.cuda.runtime.getDeviceProperties(0)['name'].decode()}; CuPy {cupy.__version__}; "
          f"PyTorch {torch.__version__} (CUDA {torch.version.cuda})")
    print("| workload | npconv (CuPy) | PyTorch eager | PyTorch CUDA graph | npconv / eager | npconv / graph |")
    print("|---|---|---|---|---|---|")
    for label, ours, eager, graph in rows:
        print(f"| {label} | {ours:.4f} | {eager:.4f} | {'' if graph is None else f'{graph:.4f}'} | "
              f"{ours / eager:.2f} | {'' if graph is None else f'{ours / graph:.2f}'} |")
    print("summary: " + "; ".join(f"{label.split(',')[0]} {label.split(',')[1].strip() if 'batch' in label else ''} "
                                  f"{ours / eager:.2f}x PyTorch eager".replace("  ", " ")
                                  for label, ours, eager, _ in rows))


if __name__ == "__main__":
    main()
