"""Speed of npconv against PyTorch on the CPU, side by side in one run: on a quiet machine and under load.

Workloads (float32, MNIST, batch 100, SGD with momentum 0.9 and weight decay 5e-4), one
:class:`Workload` each in :data:`WORKLOADS` -- a new row is one more entry there:

* ``cnn`` and ``mlp`` training: seconds per epoch -- ``--steps`` steps over the shuffled
  training set (600 = one epoch; fewer are scaled up to 600), batching included --
  written as ``npconv train`` runs them: a model from :mod:`npconv.models` compiled by
  :func:`npconv.engine.compile` (fixed chunks, BLAS on one thread, threads chosen by
  timing) and ``optim.SGD``; for PyTorch the same ``torch.nn.Sequential`` and
  ``torch.optim.SGD``, with its default threads;
* ``cnn`` training written as the README's Python API example writes it (its own
  loop over ``data.DataLoader`` with ``net = engine.compile(model)``): a user's loop
  must train at the speed of ``npconv train``;
* ``cnn-bn`` training (the strongest preset: conv-BN-ReLU-pool twice, a BN classifier), seconds per epoch,
  beside PyTorch running the same architecture (no shifts on either side: the same batches);
* ``cnn`` inference on the 10,000 test images, batch 1000 (``no_grad``), best of
  :data:`INFERENCE_PASSES` passes in each round;
* peak memory (RSS) of ``npconv train`` on MNIST (one epoch, in a child process);
* the physical floor: the multiply-adds of one ``cnn`` epoch (forward and backward)
  divided by the float32 matrix-product rate NumPy reaches here (the better of one
  BLAS thread and all of them), timed at the start of every round; the best rate
  against npconv's best epoch, as for every other figure. (Pairing each round's
  epoch with its own round's rate was tried: a rate timed in a fraction of a second
  during one of a VM's slow spells made the floor look 2.3x, below the rounds' 3.6-3.9x.)

npconv runs every workload with the plan ``npconv train`` would use (``--plan measure``: block sizes and
chunks timed on this machine once per model, then read from the plan cache, ``npconv/engine/plan.py``); the
report prints it. The **scaling** table times one training step (batch 100, optimizer included) of ``cnn-bn``
and ``cnn`` on one thread and on two, npconv (its chunks on 1 or 2 threads, and -- on a Python with the
interpreter lock -- in this process and a helper process, ``npconv/engine/processes.py``) and PyTorch
(``torch.set_num_threads``) taking turns; the speed-up is the one-thread step over the two-core one. A run's
tuner takes whichever of npconv's ways is fastest on the machine.
Beside it, the machine's **two-core ceiling** (:func:`two_core_ceiling`): a chunk's share of the ``cnn-bn`` step in
one process alone and in two at once, never waiting for each other -- what two cores give right now, whatever the
software (on a virtual machine whose second core is shared with other work, well under 2).

The loaded table repeats the ``loaded`` workloads (``--loaded-steps`` steps each) while
one CPU-bound process -- started and stopped by this script -- keeps a core busy, as a
browser or an editor would on a student's laptop. It compares npconv's loaded time with its
quiet time and with its quiet time on **one thread** (timed in the quiet rounds too): with one
core of two taken, a batch of two fixed chunks can do no better than one thread on the free
core (``docs/math.md`` section 18), so loaded over quiet is about the one-thread step over the
two-thread one, and loaded over quiet-on-one-thread shows what the load itself costs.

The two libraries take turns, workload by workload, for ``--repeats`` rounds; each
timing is the best round, and every round's ratio is printed too (timings on a shared
machine drift over minutes; interleaving puts both sides under the same drift). The
report names the CPU, its vector instructions (AVX2 / AVX-512), the BLAS library and
kernels, and the threading npconv chose. Usage::

    python benchmarks/speed.py               # about 3 minutes on 2 cores
    python benchmarks/speed.py --steps 200   # a quicker look
    python benchmarks/speed.py --no-load     # the quiet table only
    python benchmarks/speed.py --no-load --no-memory --steps 100 --repeats 1   # the scaling table, quickly
    python benchmarks/speed.py --torch-channels-last   # PyTorch in NHWC, its faster CPU layout for ConvNets
    python3.13t benchmarks/speed.py --torch-python python3.11   # npconv on a free-threaded Python, PyTorch
                                                                # (which has no wheel for it) in a 3.11 process

With ``--torch-python`` PyTorch runs in a child process of that interpreter, which loads the same data and waits,
taking no CPU time, while npconv runs; the turns and the tables are the same.
"""

import argparse
import contextlib
import functools
import importlib.util
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
from threadpoolctl import threadpool_info, threadpool_limits

from npconv import data, engine, models, nn, optim

BATCH = 100
STEPS_PER_EPOCH = 600


# --- the machine ---------------------------------------------------------------

def cpu_description():
    """``(model name, ISA)`` from /proc/cpuinfo (Linux), e.g. ``("AMD EPYC (family 25, model 17)", "AVX-512")``."""
    fields = {}
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    name = fields.get("model name") or platform.processor() or platform.machine()
    if "cpu family" in fields:
        name += f" (family {fields['cpu family']}, model {fields.get('model', '?')})"
    flags = set(fields.get("flags", "").split())
    isa = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2" if flags else "unknown"
    if isa == "AVX-512":
        isa += " (" + "/".join(f.removeprefix("avx512").lstrip("_") for f in
                               ("avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16") if f in flags) + ")"
    return name, isa


def blas_libraries():
    """NumPy's BLAS libraries as threadpoolctl sees them (a dict each)."""
    return [i for i in threadpool_info() if i["user_api"] == "blas"]


def blas_description():
    """NumPy's BLAS as threadpoolctl sees it, e.g. ``"openblas 0.3.31 (SkylakeX kernels, 2 threads)"``."""
    infos = blas_libraries()
    return "; ".join(f"{i['internal_api']} {i.get('version')} ({i.get('architecture')} kernels, "
                     f"{i['num_threads']} threads by default)" for i in infos) or "unknown"


def blas_kernels():
    """NumPy's BLAS and its kernels in a few words, for a summary line, e.g. ``"openblas 0.3.31 SkylakeX"``."""
    return "; ".join(f"{i['internal_api']} {i.get('version')} {i.get('architecture')}"
                     for i in blas_libraries()) or "BLAS unknown"


def machine():
    """The machine in one line, for the benchmarks' reports: CPU, cores, ISA, NumPy and its BLAS."""
    cpu, isa = cpu_description()
    return f"{cpu}, {os.cpu_count()} cores, {isa}; NumPy {np.__version__}, BLAS: {blas_description()}"


# --- the workloads ------------------------------------------------------------

@dataclass
class Data:
    x: np.ndarray
    y: np.ndarray
    x_test: np.ndarray


def torch_twin(model_name):
    """The PyTorch model with the same layers as ``npconv.models.build_model(model_name)``."""
    import torch.nn as tnn

    twins = {
        "cnn": lambda: tnn.Sequential(
            tnn.Conv2d(1, 8, 3, padding=1), tnn.ReLU(), tnn.MaxPool2d(2),
            tnn.Conv2d(8, 16, 3, padding=1), tnn.ReLU(), tnn.MaxPool2d(2),
            tnn.Flatten(), tnn.Linear(784, 128), tnn.ReLU(), tnn.Linear(128, 10)),
        "mlp": lambda: tnn.Sequential(tnn.Flatten(), tnn.Linear(784, 128), tnn.ReLU(), tnn.Linear(128, 10)),
        "cnn-bn": lambda: tnn.Sequential(  # npconv/models/presets.py's cnn-bn
            tnn.Conv2d(1, 16, 3, padding=1), tnn.BatchNorm2d(16), tnn.ReLU(), tnn.MaxPool2d(2),
            tnn.Conv2d(16, 32, 3, padding=1), tnn.BatchNorm2d(32), tnn.ReLU(), tnn.MaxPool2d(2),
            tnn.Flatten(), tnn.Linear(32 * 7 * 7, 128), tnn.BatchNorm1d(128), tnn.ReLU(), tnn.Linear(128, 10)),
    }
    return twins[model_name]()


#: The plan of each model, measured on this machine (or found in the plan cache) as ``npconv train`` does.
PLANS = {}


def plan_of(model_name, model):
    """The plan ``npconv train --plan measure`` uses for ``model_name`` at batch :data:`BATCH`."""
    if model_name not in PLANS:
        PLANS[model_name] = engine.plan_for(model, (1, 28, 28), BATCH)
    return PLANS[model_name]


def npconv_training(model_name, d, steps, report):
    """Seconds for ``steps`` training steps of npconv as ``npconv train`` runs them, batching included."""
    model = models.build_model(model_name, rng=np.random.default_rng(0))
    net = engine.compile(model, plan=plan_of(model_name, model))
    loss_fn = nn.SoftmaxCrossEntropyLoss()
    opt = optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    loader = data.DataLoader(d.x, d.y, BATCH, shuffle=True, rng=np.random.default_rng(0))

    def run(n):
        for i, (xb, yb) in enumerate(loader):
            if i == n:
                break
            opt.zero_grad()
            loss_fn(net(xb), yb)
            net.backward(loss_fn.backward(), input_grad=False)
            opt.step()

    run(10)  # warm-up
    started = time.perf_counter()
    run(steps)
    seconds = time.perf_counter() - started
    report[model_name] = net.describe()
    return seconds


def npconv_api_training(model_name, d, steps, report):
    """Seconds for ``steps`` training steps written as the README's Python API example writes them."""
    model = models.build_model(model_name, rng=np.random.default_rng(0))
    net = engine.compile(model)
    loss_fn, opt = nn.SoftmaxCrossEntropyLoss(), optim.SGD(model.parameters(), lr=0.05, momentum=0.9,
                                                          weight_decay=5e-4)

    def run(n):
        for i, (xb, yb) in enumerate(data.DataLoader(d.x, d.y, batch_size=BATCH, shuffle=True,
                                                     rng=np.random.default_rng(1))):
            if i == n:
                break
            opt.zero_grad()
            loss = loss_fn(net(xb), yb)
            net.backward(loss_fn.backward(), input_grad=False)
            opt.step()
        return loss

    run(10)  # warm-up
    started = time.perf_counter()
    run(steps)
    seconds = time.perf_counter() - started
    report[f"{model_name}, the Python API"] = net.describe()
    return seconds


#: PyTorch's memory format for images and convolution weights: its default, NCHW ("contiguous"), unless
#: ``--torch-channels-last`` sets ``torch.channels_last`` (NHWC), which its CPU convolutions (oneDNN) run faster
#: but which a user has to ask for.
TORCH_FORMAT = "contiguous"


def torch_model(model_name):
    """:func:`torch_twin` in :data:`TORCH_FORMAT`, and the function that turns a NumPy batch into its input."""
    import torch

    model = torch_twin(model_name)
    if TORCH_FORMAT == "contiguous":
        return model, torch.from_numpy
    fmt = getattr(torch, TORCH_FORMAT)
    return model.to(memory_format=fmt), lambda x: torch.from_numpy(x).contiguous(memory_format=fmt)


def torch_training(model_name, d, steps, report):
    """Seconds for ``steps`` training steps of PyTorch, batching included (the same batches as npconv)."""
    import torch

    model, as_input = torch_model(model_name)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    loader = data.DataLoader(d.x, d.y.astype(np.int64), BATCH, shuffle=True, rng=np.random.default_rng(0))

    def run(n):
        for i, (xb, yb) in enumerate(loader):
            if i == n:
                break
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(as_input(xb)), torch.from_numpy(yb))
            loss.backward()
            opt.step()

    run(10)
    started = time.perf_counter()
    run(steps)
    return time.perf_counter() - started


#: Passes over the 10,000 test images per round of the inference row; the best counts. One pass
#: takes 0.1-0.4 s, short enough for this VM's drift to move a single pass by 15 %.
INFERENCE_PASSES = 5


def best_pass(classify, x):
    """The best of :data:`INFERENCE_PASSES` timings of ``classify`` over ``x`` in batches of 1000."""
    best = float("inf")
    for _ in range(INFERENCE_PASSES):
        started = time.perf_counter()
        for i in range(0, len(x), 1000):
            classify(x[i : i + 1000])
        best = min(best, time.perf_counter() - started)
    return best


def npconv_inference(model_name, d, steps, report):
    """Seconds to classify the test images in batches of 1000, best of a few passes (``steps`` is not used)."""
    model = models.build_model(model_name, rng=np.random.default_rng(0))
    net = engine.compile(model, plan=plan_of(model_name, model)).eval()
    with nn.no_grad():
        for i in range(0, 3000, 1000):  # warm-up
            net(d.x_test[i : i + 1000])
        seconds = best_pass(lambda x: net(x).argmax(axis=1), d.x_test)
    report[model_name + " inference"] = net.describe()
    return seconds


def torch_inference(model_name, d, steps, report):
    import torch

    model, as_input = torch_model(model_name)
    model.eval()
    with torch.no_grad():
        model(as_input(d.x_test[:1000]))
        return best_pass(lambda x: model(as_input(x)).argmax(1), d.x_test)


@dataclass
class Workload:
    """One row of the tables: a label and how to time each library: npconv by ``npconv(model, data, steps,
    report)``, PyTorch by the function of :data:`TORCH_SIDES` named ``torch``, through :data:`REFERENCE`."""

    label: str
    model: str
    npconv: Callable
    torch: str
    per_epoch: bool = True  # timed over ``steps`` steps and scaled to an epoch of 600
    loaded: bool = False    # also measured with the CPU-bound process running


WORKLOADS = [
    Workload("cnn training, s/epoch", "cnn", npconv_training, "torch_training", loaded=True),
    Workload("cnn training in the Python API example, s/epoch", "cnn", npconv_api_training, "torch_training"),
    Workload("mlp training, s/epoch", "mlp", npconv_training, "torch_training"),
    Workload("cnn inference, 10k images, s", "cnn", npconv_inference, "torch_inference", per_epoch=False),
    Workload("cnn-bn training, s/epoch", "cnn-bn", npconv_training, "torch_training"),
]


# --- the reference: PyTorch, in this process or in a process of another Python ---------------------------

#: PyTorch's side of the workloads, by the names :class:`Workload` and the reference process use.
TORCH_SIDES = {"torch_training": torch_training, "torch_inference": torch_inference}


def python_description():
    """The interpreter in a few words, e.g. ``"Python 3.13.5, free-threaded (no GIL)"``."""
    gil = getattr(sys, "_is_gil_enabled", lambda: True)()
    return f"Python {platform.python_version()}" + ("" if gil else ", free-threaded (no GIL)")


class TorchHere:
    """PyTorch in this process: ``call(name, *args)`` runs its side of a measurement on this process's data."""

    def __init__(self, d):
        self.d = d
        self.turns = {}  # model name -> torch_steps(...): one model per workload, kept between its turns

    def call(self, name, *args):
        if name == "describe":
            import torch

            return {"torch": torch.__version__, "threads": torch.get_num_threads(), "python": python_description()}
        if name == "torch_step_turn":
            model_name, *turn = args
            if model_name not in self.turns:
                self.turns[model_name] = torch_steps(model_name, self.d)
            return self.turns[model_name](*turn)
        model_name, steps = args
        return TORCH_SIDES[name](model_name, self.d, steps, {})


class TorchProcess:
    """PyTorch in a child process of another Python (``--torch-python``), for an interpreter PyTorch has no
    wheel for (a free-threaded one, say). The child loads the same data and answers :meth:`TorchHere.call`'s
    requests, a line of JSON each way; between them it waits on its input and takes no CPU time."""

    def __init__(self, python, channels_last):
        command = [python, os.path.abspath(__file__), "--serve-torch"]
        if channels_last:
            command.append("--torch-channels-last")
        try:
            self.child = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        except OSError as e:
            sys.exit(f"speed.py: cannot start --torch-python {python}: {e.strerror}")
        self.python = python

    def call(self, name, *args):
        try:
            self.child.stdin.write(json.dumps([name, *args]) + "\n")
            self.child.stdin.flush()
            answer = self.child.stdout.readline()
        except BrokenPipeError:
            answer = ""
        if not answer:
            sys.exit(f"speed.py: the PyTorch process ({self.python}) stopped; its error is above")
        return json.loads(answer)

    def close(self):
        self.child.stdin.close()
        self.child.wait()


def serve_torch(d):
    """The child of :class:`TorchProcess`: answer each request line on standard input with a line of JSON."""
    answers = sys.stdout
    sys.stdout = sys.stderr  # whatever else prints must not mix with the answers
    # npconv's engine raises glibc's thresholds for returning freed memory, for its whole process; PyTorch timed in
    # that process has always had them (its inference at batch 1000 runs about twice as fast with them:
    # docs/performance.md), so the child gets them too and both ways time the same PyTorch.
    engine.memory.keep_freed_memory()
    here = TorchHere(d)
    for line in sys.stdin:
        name, *args = json.loads(line)
        answers.write(json.dumps(here.call(name, *args)) + "\n")
        answers.flush()


#: Where PyTorch runs: a :class:`TorchHere` or a :class:`TorchProcess`, set by :func:`main`.
REFERENCE = None


# --- load, memory, floor ---------------------------------------------------------

@contextlib.contextmanager
def cpu_bound_process():
    """One other process keeping a core busy (a Python busy loop) while the block runs."""
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)  # let it get going
        yield
    finally:
        hog.terminate()
        hog.wait()


def two_core_ceiling(rounds=3, steps=20):
    """What two cores of this machine give right now, whatever the software: the ``cnn-bn`` chunk step of
    ``scaling.py`` (forward and backward of the engine's kernels on 50 images, one BLAS thread) in one process alone,
    then in two at once (each on its own, never waiting for the other), ``rounds`` times in turn.

    Returns ``(ceiling, alone, together)``: the median over the rounds of ``2 * alone / slower of the two`` -- a step
    whose two halves meet must wait for the slower -- and the last round's milliseconds per step. On a machine whose
    cores do not slow each other down it is 2; on a virtual machine whose second core is shared with other work, less.
    """
    import scaling  # beside this file

    ceilings = []
    for _ in range(rounds):
        (alone,) = scaling.free_running("cnn-bn", steps, "processes", count=1)
        together = scaling.free_running("cnn-bn", steps, "processes")
        ceilings.append(2 * alone / max(together))
    return statistics.median(ceilings), alone, together


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
    return STEPS_PER_EPOCH * BATCH * (3 * per_image - conv1)


def matmul_rate():
    """float32 multiply-adds per second of NumPy on the training's largest product, best of 1 and all BLAS threads."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((16, 72)).astype(np.float32)
    b = rng.standard_normal((72, 19600)).astype(np.float32)
    best = float("inf")
    for limit in (1, None):
        with threadpool_limits(limits=limit, user_api="blas"):
            a @ b
            for _ in range(5):
                started = time.perf_counter()
                for _ in range(20):
                    a @ b
                best = min(best, (time.perf_counter() - started) / 20)
    return 16 * 72 * 19600 / best


# --- how a step scales from one thread to two -------------------------------------------

#: The workloads whose training step is timed on one thread and on two (the issue's speed-up figures).
SCALING = ("cnn-bn", "cnn")


#: npconv's ways to run the step table's step: one thread, two threads and, where helper processes can run (a
#: Python with the interpreter lock), this process and one helper -- the tuner of a run picks the fastest.
NPCONV_WAYS = (1, 2, "2 processes") if engine.processes.available() else (1, 2)


def npconv_steps(model_name, d):
    """A function ``turn(way, steps, warm_up) -> seconds per step`` timing npconv's training step (a fixed batch of
    :data:`BATCH`, optimizer included) run one of :data:`NPCONV_WAYS` with the run's plan, after ``warm_up``
    untimed steps."""
    xb, yb = d.x[:BATCH], d.y[:BATCH]
    model = models.build_model(model_name, rng=np.random.default_rng(0))
    plan = plan_of(model_name, model)
    nets = {way: engine.DataParallel(model, plan, threads=2 if way == "2 processes" else way,
                                     processes=way == "2 processes") for way in NPCONV_WAYS}
    loss_fn = nn.SoftmaxCrossEntropyLoss()
    opt = optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)

    def step(way):
        opt.zero_grad()
        loss_fn(nets[way](xb), yb)
        nets[way].backward(loss_fn.backward(), input_grad=False)
        opt.step()

    return functools.partial(timed_turn, step)


def torch_steps(model_name, d):
    """:func:`npconv_steps` for PyTorch, its ``n`` threads set by ``torch.set_num_threads`` for the turn."""
    import torch

    twin, as_input = torch_model(model_name)
    topt = torch.optim.SGD(twin.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    tx, ty = as_input(d.x[:BATCH]), torch.from_numpy(d.y[:BATCH].astype(np.int64))

    def step(n):
        topt.zero_grad()
        torch.nn.functional.cross_entropy(twin(tx), ty).backward()
        topt.step()

    def turn(n, steps, warm_up):
        before = torch.get_num_threads()
        torch.set_num_threads(n)
        try:
            return timed_turn(step, n, steps, warm_up)
        finally:
            torch.set_num_threads(before)

    return turn


def timed_turn(step, n, steps, warm_up):
    """Seconds per ``step(n)``, the mean of ``steps`` calls after ``warm_up`` untimed ones."""
    for _ in range(warm_up):
        step(n)
    started = time.perf_counter()
    for _ in range(steps):
        step(n)
    return (time.perf_counter() - started) / steps


def step_times(model_name, d, rounds, steps=15, warm_up=3):
    """Median seconds of one training step on one and on two cores, npconv (:func:`npconv_steps`, each of
    :data:`NPCONV_WAYS`) and PyTorch (:func:`torch_steps` on 1 and 2 threads, through :data:`REFERENCE`), all
    taking turns ``rounds`` times: ``{(side, way): seconds}``. Each turn starts with ``warm_up`` untimed steps: in
    a run a step follows a step of the same network, not of another library's."""
    turns = {"npconv": npconv_steps(model_name, d),
             "torch": functools.partial(REFERENCE.call, "torch_step_turn", model_name)}
    ways = {"npconv": NPCONV_WAYS, "torch": (1, 2)}
    times = {}
    for r in range(rounds + 1):  # round 0 warms up
        for side, turn in turns.items():
            for n in ways[side]:
                seconds = turn(n, steps, warm_up)
                if r:
                    times.setdefault((side, n), []).append(seconds)
    return {key: statistics.median(values) for key, values in times.items()}


def speedup_table(scaling):
    """Markdown rows: each side's one- and two-core steps and the speed-ups (one-thread step / two-core step)."""
    processes = "2 processes" in NPCONV_WAYS
    head = ["workload", "npconv 1 thread, ms", "npconv 2 threads, ms", "npconv speed-up"]
    head += ["npconv 2 processes, ms", "npconv speed-up in processes"] if processes else []
    head += ["PyTorch 1 thread, ms", "PyTorch 2 threads, ms", "PyTorch speed-up"]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for name, t in scaling.items():
        row = [f"{name} step", f"{1e3 * t['npconv', 1]:.2f}", f"{1e3 * t['npconv', 2]:.2f}",
               f"{t['npconv', 1] / t['npconv', 2]:.2f}"]
        if processes:
            row += [f"{1e3 * t['npconv', '2 processes']:.2f}", f"{t['npconv', 1] / t['npconv', '2 processes']:.2f}"]
        row += [f"{1e3 * t['torch', 1]:.2f}", f"{1e3 * t['torch', 2]:.2f}", f"{t['torch', 1] / t['torch', 2]:.2f}"]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


# --- measuring and reporting -------------------------------------------------------

def one_thread(fn):
    """``fn`` (a workload's npconv side) run with npconv on one thread; its threading report is dropped."""
    def run(model_name, d, steps, report):
        before = engine.get_num_threads()
        engine.set_num_threads(1)
        try:
            return fn(model_name, d, steps, {})
        finally:
            engine.set_num_threads(before)
    return run


def measure(workloads, d, steps, repeats, report, *, one_thread_too=False, rates=None):
    """``{(label, side): [seconds per round]}``, npconv and PyTorch taking turns, workload by workload.

    With ``one_thread_too``, the ``loaded`` workloads are also timed with npconv on one
    thread (side ``"npconv, one thread"``), the reference the loaded table compares with.
    With a list ``rates``, NumPy's :func:`matmul_rate` is timed at the start of every round
    and appended to it.
    """
    times = {}
    scale = STEPS_PER_EPOCH / steps
    for _ in range(repeats):
        if rates is not None:
            rates.append(matmul_rate())
        for w in workloads:
            sides = [("npconv", w.npconv),
                     ("torch", lambda model, d, steps, report, w=w: REFERENCE.call(w.torch, model, steps))]
            if one_thread_too and w.loaded:
                sides.append(("npconv, one thread", one_thread(w.npconv)))
            for side, fn in sides:
                seconds = fn(w.model, d, steps, report)
                times.setdefault((w.label, side), []).append(seconds * scale if w.per_epoch else seconds)
            time.sleep(1)  # PyTorch's OpenMP threads spin for a while after a run: let them stop
    return times


def table(workloads, times, quiet=None):
    """Markdown rows: best round of each side, their ratio; and, for a loaded table, npconv's loaded / quiet
    and loaded / quiet on one thread."""
    header = "| workload | npconv | PyTorch | npconv / PyTorch |"
    if quiet:
        header += " npconv loaded / quiet | npconv loaded / quiet on one thread |"
    lines = [header, "|---" * (6 if quiet else 4) + "|"]
    for w in workloads:
        ours, theirs = min(times[w.label, "npconv"]), min(times[w.label, "torch"])
        line = f"| {w.label} | {ours:.3f} | {theirs:.3f} | {ours / theirs:.2f} |"
        if quiet:
            alone, alone_one_thread = min(quiet[w.label, "npconv"]), min(quiet[w.label, "npconv, one thread"])
            line += f" {ours / alone:.2f} | {ours / alone_one_thread:.2f} |"
        lines.append(line)
    for w in workloads:
        rounds = " ".join(f"{a / b:.2f}" for a, b in zip(times[w.label, "npconv"], times[w.label, "torch"]))
        lines.append(f"{w.label}: npconv / PyTorch in each round: {rounds}")
    return "\n".join(lines)


def ratio(times, label):
    return min(times[label, "npconv"]) / min(times[label, "torch"])


def main(argv=None):
    parser = argparse.ArgumentParser(description="npconv vs PyTorch speed on MNIST, quiet and under load")
    parser.add_argument("--steps", type=int, default=600, help="training steps timed per epoch (default 600)")
    parser.add_argument("--loaded-steps", type=int, default=200,
                        help="training steps timed per epoch under load (default 200)")
    parser.add_argument("--repeats", type=int, default=3, help="rounds; each figure is the best round (default 3)")
    parser.add_argument("--no-load", action="store_true", help="skip the table under load")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory run")
    parser.add_argument("--no-scaling", action="store_true", help="skip the one- against two-thread step timings")
    parser.add_argument("--torch-channels-last", action="store_true",
                        help="PyTorch in its channels_last (NHWC) memory format instead of its default NCHW")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="cuda: npconv on the GPU (CuPy) against PyTorch CUDA, eager and graphed (speed_gpu.py)")
    parser.add_argument("--torch-python", metavar="PYTHON",
                        help="run PyTorch in a process of this interpreter (one with PyTorch installed) instead of "
                             "in this one: for a Python PyTorch has no wheel for, such as a free-threaded one")
    parser.add_argument("--serve-torch", action="store_true", help=argparse.SUPPRESS)  # TorchProcess's child
    args = parser.parse_args(argv)
    if args.device == "cuda":
        import speed_gpu  # beside this file

        return speed_gpu.main(["--repeats", str(args.repeats)])

    if args.torch_python is None and importlib.util.find_spec("torch") is None:
        sys.exit("speed.py compares with PyTorch: pip install -e '.[bench]', or name a Python that has it "
                 "with --torch-python")
    global TORCH_FORMAT, REFERENCE
    TORCH_FORMAT = "channels_last" if args.torch_channels_last else "contiguous"

    mnist = data.load_dataset("mnist")
    mean, std = data.pixel_stats(mnist.train_images)
    d = Data(data.to_float(mnist.train_images, mean, std), mnist.train_labels,
             data.to_float(mnist.test_images, mean, std))
    if args.serve_torch:
        return serve_torch(d)
    REFERENCE = TorchHere(d) if args.torch_python is None else TorchProcess(args.torch_python,
                                                                           args.torch_channels_last)
    try:
        report(args, d)
    finally:
        if isinstance(REFERENCE, TorchProcess):
            REFERENCE.close()


def report(args, d):
    """Measure everything ``args`` asks for and print the tables and the summary line."""
    rss = None if args.no_memory else peak_rss_of_train()
    rates = []  # NumPy's matrix-product rate, at the start of each quiet round
    quiet_report, loaded_report = {}, {}
    # PyTorch is imported at its first run: `npconv train` never loads it.
    quiet = measure(WORKLOADS, d, args.steps, args.repeats, quiet_report, one_thread_too=not args.no_load,
                    rates=rates)
    scaling = {} if args.no_scaling else {name: step_times(name, d, args.repeats * 3) for name in SCALING}
    ceiling = None if args.no_scaling else two_core_ceiling()
    loaded_workloads = [w for w in WORKLOADS if w.loaded]
    loaded = None
    if not args.no_load:
        with cpu_bound_process():
            loaded = measure(loaded_workloads, d, args.loaded_steps, args.repeats, loaded_report)

    torch = REFERENCE.call("describe")
    where = "" if args.torch_python is None else f" in another process ({torch['python']})"
    cpu, isa = cpu_description()
    print(f"\nmachine: {cpu}; {len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()} "
          f"cores; {isa}")
    print(f"software: {python_description()}, NumPy {np.__version__}, BLAS {blas_description()}; "
          f"PyTorch {torch['torch']}{where} with {torch['threads']} threads, "
          f"{'channels_last (NHWC)' if TORCH_FORMAT == 'channels_last' else 'its default NCHW'} memory format")
    for name, plan in PLANS.items():
        print(f"npconv plan, {name}: {plan.describe()}")
    for name, how in quiet_report.items():
        print(f"npconv threading, {name}, quiet: {how}")
    for name, how in loaded_report.items():
        print(f"npconv threading, {name}, loaded: {how}")

    print(f"\nquiet machine ({args.steps} steps per training epoch timed, best of {args.repeats} rounds):")
    print(table(WORKLOADS, quiet))
    if rss is not None:
        print(f"peak RSS of `npconv train` (1 epoch): {rss:.0f} MB")
    if scaling:
        print(f"\none training step of batch {BATCH} on one thread and on two (and in two processes, where helpers "
              f"can run), medians of interleaved rounds (3 untimed steps at the start of each turn):")
        print(speedup_table(scaling))
        if ceiling is not None:
            best, alone, together = ceiling
            print(f"this machine's two-core ceiling: {best:.2f}x -- one chunk of 50 images (the cnn-bn step's work, "
                  f"engine kernels, one BLAS thread) {alone:.2f} ms a step in one process alone, "
                  f"{' and '.join(f'{t:.2f}' for t in together)} ms in two at once (last of 3 rounds); "
                  f"2 x alone / the slower of the two, the median of the rounds")
    if loaded is not None:
        print(f"\nwith one CPU-bound process running ({args.loaded_steps} steps per epoch timed, "
              f"best of {args.repeats} rounds):")
        print(table(loaded_workloads, loaded, quiet))

    cnn = WORKLOADS[0].label
    macs = cnn_epoch_macs()
    floor = macs / max(rates)
    cnn_ours = min(quiet[cnn, "npconv"])
    print(f"\nfloor: one cnn epoch is {macs / 1e9:.2f} G multiply-adds; NumPy's matrix-product rate, timed in each "
          f"round: {' '.join(f'{r / 1e9:.1f}' for r in rates)} G multiply-adds/s; at the best that is {floor:.2f} s; "
          f"npconv's best epoch takes {cnn_ours / floor:.1f}x the floor")

    summary = [f"{w.label.split(',')[0]} {ratio(quiet, w.label):.2f}x PyTorch" for w in WORKLOADS]
    if loaded is not None:
        for w in loaded_workloads:
            summary.append(f"{w.label.split(',')[0]} under load {ratio(loaded, w.label):.2f}x PyTorch and "
                           f"{min(loaded[w.label, 'npconv']) / min(quiet[w.label, 'npconv']):.2f}x its quiet time "
                           f"({min(loaded[w.label, 'npconv']) / min(quiet[w.label, 'npconv, one thread']):.2f}x "
                           f"on one thread)")
    for name, t in scaling.items():
        in_processes = (f" ({t['npconv', 1] / t['npconv', '2 processes']:.2f}x in processes)"
                        if ("npconv", "2 processes") in t else "")
        summary.append(f"{name} step two-thread speed-up npconv {t['npconv', 1] / t['npconv', 2]:.2f}x{in_processes}, "
                       f"PyTorch {t['torch', 1] / t['torch', 2]:.2f}x")
    if ceiling is not None:
        summary.append(f"the machine's two-core ceiling {ceiling[0]:.2f}x")
    summary.append(f"cnn epoch {cnn_ours / floor:.1f}x the floor")
    print("summary: " + "; ".join(summary) + f" ({cpu}, {isa.split(' ')[0]}, {blas_kernels()} kernels, "
          f"{python_description()})")


if __name__ == "__main__":
    main()
