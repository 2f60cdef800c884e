"""Where the second core goes: the interpreter lock's share against what two busy cores cost each other.

For ``cnn`` and ``cnn-bn`` (float32, one BLAS thread), one **chunk step** -- forward and backward of the engine's
kernels on a chunk of 50 images, as each thread of a two-thread ``npconv train`` step runs it -- is timed

* **alone**, the other core idle;
* in **two threads** of one process, each with its own model, running freely (never meeting): the extra time
  over "alone" is what the interpreter lock costs two threads (a thread waits while the other holds it);
* in **two processes**, each with its own model, running freely: the extra time is what the two busy cores
  cost each other (shared caches, memory, the machine's clock), with no lock between them;

then the real **two-thread step** of a batch of 100 (two chunks that meet at every batch norm and at the end,
optimizer included) against the same step on one thread, and PyTorch's step on one thread and on two, in the
same run. If the processes lose little and the threads much, the lock is the limit and running chunks in
processes would pay; if both lose much, the machine is (docs/performance.md, 2026-12-06 afternoon).

Each figure is the median of ``--rounds`` rounds taking turns. Usage::

    python benchmarks/scaling.py              # about a minute
    python benchmarks/scaling.py --rounds 5
"""

import argparse
import multiprocessing
import statistics
import sys
import threading
import time

import numpy as np
from threadpoolctl import threadpool_limits

import speed  # beside this file: the machine's description, PyTorch's twins
from npconv import engine, models, nn, optim

CHUNK = 50
BATCH = 100
MODELS = ("cnn", "cnn-bn")


def chunk_stepper(model_name):
    """A function running one chunk step of its own ``model_name`` (engine kernels, one thread, no optimizer)."""
    model = models.build_model(model_name, rng=np.random.default_rng(0))
    net = engine.DataParallel(model, None, threads=1).train()
    x = np.random.default_rng(1).standard_normal((CHUNK, 1, 28, 28)).astype(np.float32)

    def step():
        y = net(x)
        net.backward(np.ones_like(y), input_grad=False)

    return step


def ms_per_step(step, steps):
    """Median milliseconds of ``step`` over 5 blocks of ``steps`` calls, after 10 warm-up calls."""
    for _ in range(10):
        step()
    blocks = []
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(steps):
            step()
        blocks.append((time.perf_counter() - started) / steps * 1e3)
    return statistics.median(blocks)


def _in_process(model_name, steps, ready, out):
    """A process of the 'processes' case: once all are ready, time its own chunk steps."""
    engine.memory.keep_freed_memory()
    with threadpool_limits(1, user_api="blas"):
        step = chunk_stepper(model_name)
        step()
        ready.wait()  # every process has imported npconv and taken a first step
        out.put(ms_per_step(step, steps))


def free_running(model_name, steps, kind, count=2):
    """Milliseconds per chunk step of each of ``count`` threads or processes (``kind``) running at once."""
    if kind == "threads":
        steppers = [chunk_stepper(model_name) for _ in range(count)]
        times = [None] * count

        def run(i):
            times[i] = ms_per_step(steppers[i], steps)

        threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return times
    context = multiprocessing.get_context("spawn")
    ready, out = context.Barrier(count), context.Queue()
    processes = [context.Process(target=_in_process, args=(model_name, steps, ready, out)) for _ in range(count)]
    for p in processes:
        p.start()
    times = [out.get(timeout=300) for _ in processes]
    for p in processes:
        p.join()
    return times


def training_steps(model_name, steps):
    """``{(side, threads): ms}``: one training step of a batch of 100 (optimizer included), npconv's chunks on one
    and on two threads, PyTorch with one and two threads."""
    import torch

    rng = np.random.default_rng(2)
    x = rng.standard_normal((BATCH, 1, 28, 28)).astype(np.float32)
    y = rng.integers(0, 10, BATCH)
    model = models.build_model(model_name, rng=np.random.default_rng(0))
    loss_fn = nn.SoftmaxCrossEntropyLoss()
    opt = optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    twin, as_input = speed.torch_model(model_name)
    topt = torch.optim.SGD(twin.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    tx, ty = as_input(x), torch.from_numpy(y.astype(np.int64))
    before = torch.get_num_threads()
    out = {}
    for n in (1, 2):
        net = engine.DataParallel(model, None, threads=n)

        def npconv_step(net=net):
            opt.zero_grad()
            loss_fn(net(x), y)
            net.backward(loss_fn.backward(), input_grad=False)
            opt.step()

        def torch_step():
            topt.zero_grad()
            torch.nn.functional.cross_entropy(twin(tx), ty).backward()
            topt.step()

        out[("npconv", n)] = ms_per_step(npconv_step, steps)
        torch.set_num_threads(n)
        out[("torch", n)] = ms_per_step(torch_step, steps)
        torch.set_num_threads(before)
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description="the interpreter lock's share against what two busy cores cost")
    parser.add_argument("--rounds", type=int, default=3, help="rounds taking turns; medians count (default 3)")
    parser.add_argument("--steps", type=int, default=20, help="steps per timed block (default 20)")
    args = parser.parse_args(argv)
    engine.memory.keep_freed_memory()
    results = {}  # (model, what) -> list over rounds
    for _ in range(args.rounds):
        for name in MODELS:
            with threadpool_limits(1, user_api="blas"):
                results.setdefault((name, "alone"), []).append(ms_per_step(chunk_stepper(name), args.steps))
                results.setdefault((name, "threads"), []).append(
                    statistics.mean(free_running(name, args.steps, "threads")))
            results.setdefault((name, "processes"), []).append(
                statistics.mean(free_running(name, args.steps, "processes")))
            for key, ms in training_steps(name, args.steps).items():
                results.setdefault((name, key), []).append(ms)

    def med(name, what):
        return statistics.median(results[(name, what)])

    print(f"\nmachine: {speed.machine()}; {speed.python_description()}")
    print(f"one chunk step ({CHUNK} images, forward and backward, one BLAS thread), ms, medians of {args.rounds} "
          f"rounds; then the training step of {BATCH} on one and on two threads:")
    print("| model | alone | two free threads (loss) | two free processes (loss) | npconv step 1 / 2 threads "
          "(speed-up) | PyTorch step 1 / 2 threads (speed-up) |")
    print("|---|---|---|---|---|---|")
    summary = []
    for name in MODELS:
        alone, threads, processes = med(name, "alone"), med(name, "threads"), med(name, "processes")
        n1, n2 = med(name, ("npconv", 1)), med(name, ("npconv", 2))
        t1, t2 = med(name, ("torch", 1)), med(name, ("torch", 2))
        lock, cores = threads / alone - 1, processes / alone - 1
        print(f"| {name} | {alone:.2f} | {threads:.2f} ({100 * lock:+.0f} %) | {processes:.2f} ({100 * cores:+.0f} %) "
              f"| {n1:.2f} / {n2:.2f} ({n1 / n2:.2f}x) | {t1:.2f} / {t2:.2f} ({t1 / t2:.2f}x) |")
        summary.append(f"{name}: free threads {100 * lock:+.0f} %, free processes {100 * cores:+.0f} %, "
                       f"step speed-up npconv {n1 / n2:.2f}x, PyTorch {t1 / t2:.2f}x")
    cpu, isa = speed.cpu_description()
    print(f"summary: {'; '.join(summary)} ({cpu}, {isa}, {speed.blas_kernels()} kernels, "
          f"{speed.python_description()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
