"""On a free-threaded Python (3.13t and later), npconv keeps the interpreter lock off.

Such a Python turns the lock back on, for the whole process and with a warning, when it imports an extension
module that has not declared it safe without the lock; the engine's threads would then share one interpreter
again. Run in a fresh interpreter, so nothing imported before (a test plugin) decides.
"""

import subprocess
import sys
import sysconfig

import pytest

FREE_THREADED = bool(sysconfig.get_config_var("Py_GIL_DISABLED"))

#: Imports every module of npconv whose own dependencies are installed (an extra may be missing here), trains
#: two steps of cnn-bn with its chunks on two threads, and prints whether the lock is on.
SCRIPT = """
import importlib, pkgutil, sys, warnings
warnings.simplefilter("error", RuntimeWarning)  # "The global interpreter lock (GIL) has been enabled to load ..."
import npconv
for module in pkgutil.walk_packages(npconv.__path__, "npconv."):
    if module.name == "npconv.__main__":  # runs the command line
        continue
    try:
        importlib.import_module(module.name)
    except ModuleNotFoundError as e:
        if e.name.split(".")[0] == "npconv":
            raise
import numpy as np
from npconv import engine, models, nn, optim
model = models.build_model("cnn-bn", rng=np.random.default_rng(0))
net = engine.DataParallel(model, threads=2)
loss_fn, opt = nn.SoftmaxCrossEntropyLoss(), optim.SGD(model.parameters(), lr=0.01)
x = np.random.default_rng(1).standard_normal((100, 1, 28, 28)).astype(np.float32)
for _ in range(2):
    opt.zero_grad()
    loss_fn(net(x), np.arange(100) % 10)
    net.backward(loss_fn.backward(), input_grad=False)
    opt.step()
print("threads", net.threads, "gil", sys._is_gil_enabled())
"""


@pytest.mark.skipif(not FREE_THREADED, reason="this Python has the interpreter lock (not a free-threaded build)")
def test_npconv_keeps_the_interpreter_lock_off():
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"an import turned the lock on, or training failed:\n{done.stderr}"
    assert done.stdout.split() == ["threads", "2", "gil", "False"], done.stdout
