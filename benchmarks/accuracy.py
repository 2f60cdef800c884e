"""Accuracy of ``npconv train``'s defaults on MNIST, beside PyTorch trained identically.

For each model, npconv trains through :func:`npconv.train.run_training` -- exactly
what ``npconv train --model M`` does, the model's own defaults included -- and
PyTorch (CPU) trains the same architecture (:func:`torch_twin`, layer by layer)
from the *same initial weights*, on the *same mini-batches in the same order*
(shifted alike, with ``augment_shift``), with ``torch.optim.SGD`` and the same
cosine schedule. Same start, same data, same update rule: the two test
accuracies should agree closely, and the ratio of epoch times shows what the
from-scratch code costs.

    python benchmarks/accuracy.py                  # cnn and mlp, 10 epochs each (~10 min on 2 cores)
    python benchmarks/accuracy.py --models lenet5,cnn-bn   # the other presets, with their own defaults
    python benchmarks/accuracy.py --models mlp --epochs 2 --train-subset 5000   # a quick look

PyTorch is optional (``pip install -e ".[bench]"``); without it only npconv runs.
"""

import argparse
import math
import sys
import tempfile
import time

import numpy as np

from npconv import data, models, nn
from npconv.train import run_training
from npconv.train.run import seed_streams
from npconv.train.settings import make_config


def torch_twin(model):
    """The PyTorch ``Sequential`` of an npconv ``Sequential``, layer for layer, with its weights and buffers."""
    import torch
    import torch.nn as tnn

    def twin(layer):
        if isinstance(layer, nn.Conv2d):
            return tnn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, layer.padding)
        if isinstance(layer, nn.Linear):
            return tnn.Linear(layer.in_features, layer.out_features)
        if isinstance(layer, (nn.BatchNorm1d, nn.BatchNorm2d)):
            kind = tnn.BatchNorm1d if isinstance(layer, nn.BatchNorm1d) else tnn.BatchNorm2d
            return kind(layer.num_features, layer.eps, layer.momentum, layer.affine)
        if isinstance(layer, nn.MaxPool2d):
            return tnn.MaxPool2d(layer.kernel_size, layer.stride)
        if isinstance(layer, nn.AvgPool2d):
            return tnn.AvgPool2d(layer.kernel_size, layer.stride, layer.padding)
        if isinstance(layer, nn.Dropout):
            return tnn.Dropout(layer.p)
        return {nn.ReLU: tnn.ReLU, nn.Sigmoid: tnn.Sigmoid, nn.Tanh: tnn.Tanh, nn.Flatten: tnn.Flatten}[type(layer)]()

    twins = tnn.Sequential(*[twin(layer) for layer in model])
    twins.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in model.state_dict().items()})
    return twins


def torch_reference(config, dataset):
    """Train a PyTorch twin of ``config``; returns (final test accuracy, seconds per epoch)."""
    import torch
    import torch.nn as tnn

    init_rng, data_rng, _ = seed_streams(config.seed)
    ours = models.build_model(config.model, layers=config.model_layers, rng=init_rng)  # npconv's very first weights
    twin = torch_twin(ours)

    mean, std = data.pixel_stats(dataset.train_images)
    images, labels = dataset.train_images, dataset.train_labels
    if config.train_subset is not None:
        images, labels = data.random_subset(images, labels, config.train_subset, data_rng)
    x_train = data.to_float(images, mean, std)
    x_test = torch.from_numpy(data.to_float(dataset.test_images, mean, std))
    y_test = torch.from_numpy(dataset.test_labels.astype(np.int64))
    background = data.to_float(np.zeros((1, 1, 1), np.uint8), mean, std).item()  # as npconv/train/run.py shifts
    augment = (lambda xb, rng: data.random_shift(xb, config.augment_shift, background, rng)) \
        if config.augment_shift else None
    batches = data.DataLoader(x_train, labels, config.batch_size, shuffle=True, rng=data_rng, augment=augment)
    opt = torch.optim.SGD(twin.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=config.epochs)
    seconds = 0.0
    for _ in range(config.epochs):
        twin.train()
        started = time.perf_counter()
        for xb, yb in batches:
            opt.zero_grad()
            loss = tnn.functional.cross_entropy(twin(torch.from_numpy(xb)), torch.from_numpy(yb.astype(np.int64)))
            loss.backward()
            opt.step()
        seconds += time.perf_counter() - started
        sched.step()
    twin.eval()
    with torch.no_grad():
        accuracy = (twin(x_test).argmax(1) == y_test).float().mean().item()
    return accuracy, seconds / config.epochs


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="cnn,mlp")
    parser.add_argument("--epochs", type=int, help="default: each model's own (npconv train's)")
    parser.add_argument("--train-subset", type=int)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch reference")
    args = parser.parse_args(argv)

    try:
        import torch
    except ImportError:
        torch = None
    use_torch = torch is not None and not args.no_torch
    dataset = data.load_dataset("mnist")
    given = {"epochs": args.epochs, "train_subset": args.train_subset, "seed": args.seed}
    configs = [make_config({"model": name, **{k: v for k, v in given.items() if v is not None}})
               for name in args.models.split(",")]
    summaries = []
    for config in configs:
        with tempfile.TemporaryDirectory() as out:
            summaries.append(run_training(config, out, progress=False,
                                          log=lambda line: print("  " + line, file=sys.stderr)))
    # PyTorch after all of npconv: its OpenMP threads keep spinning after it runs and would slow NumPy.
    references = [torch_reference(c, dataset) if use_torch else (math.nan, math.nan) for c in configs]
    rows = [(c.model, s.test_acc, s.train_loss, s.seconds_per_epoch, *ref)
            for c, s, ref in zip(configs, summaries, references)]

    epochs = ", ".join(f"{c.model} {c.epochs}" for c in configs)
    print(f"\nMNIST, epochs: {epochs}, npconv train defaults (seed {args.seed}); "
          f"PyTorch {getattr(torch, '__version__', 'absent')}")
    print("| model | npconv test acc | PyTorch test acc | npconv final train loss | npconv s/epoch | PyTorch s/epoch "
          "| time ratio npconv/PyTorch |")
    print("|---|---|---|---|---|---|---|")
    for name, acc, loss, sec, t_acc, t_sec in rows:
        print(f"| {name} | {100 * acc:.2f} % | {100 * t_acc:.2f} % | {loss:.4f} | {sec:.2f} | {t_sec:.2f} "
              f"| {sec / t_sec:.2f} |")
    print("summary: " + "; ".join(
        f"{name} {100 * acc:.2f} % (PyTorch {100 * t_acc:.2f} %), {sec:.1f} s/epoch = {sec / t_sec:.2f}x PyTorch"
        for name, acc, _, sec, t_acc, t_sec in rows))


if __name__ == "__main__":
    main()
