"""The optimizer base class: the one place where weights change."""

from .. import backend as B


def _check(name, value, low, high=float("inf"), high_open=False):
    """Raise a clear ValueError unless ``low <= value < high`` (or ``<= high``)."""
    ok = low <= value and (value < high if high_open else value <= high)
    if not ok:
        bound = f"[{low}, {high})" if high_open else f"[{low}, {high}]"
        raise ValueError(f"{name} must be in {bound}, got {value}")


def _check_lr(lr):
    if not 0 < lr < float("inf"):
        raise ValueError(f"lr must be a finite number > 0, got {lr}")


class Optimizer:
    """Holds the parameters and per-parameter state; subclasses define ``step()``.

    Parameters
    ----------
    params : iterable of Parameter
        Usually ``model.parameters()``.
    """

    def __init__(self, params):
        self.params = list(params)
        if not self.params:
            raise ValueError("optimizer got an empty parameter list")
        self.step_count = 0

    def zero_grad(self):
        """Set every parameter's ``.grad`` to zero (gradients accumulate otherwise)."""
        for p in self.params:
            p.grad[...] = 0

    def step(self):
        raise NotImplementedError

    # --- state, for checkpoints -------------------------------------------
    def _buffers(self):
        """``{name: list of arrays, one per parameter}`` of the optimizer's state."""
        return {}

    def state_dict(self):
        """The optimizer's state as flat ``{key: array}`` (keys like ``"momentum.0"``)."""
        state = {"step_count": B.xp.asarray(self.step_count)}
        for name, arrays in self._buffers().items():
            for i, a in enumerate(arrays):
                state[f"{name}.{i}"] = a
        return state

    def load_state_dict(self, state):
        """Restore what :meth:`state_dict` returned (shapes must match)."""
        self.step_count = int(B.to_numpy(state["step_count"]))
        for name, arrays in self._buffers().items():
            for i, a in enumerate(arrays):
                value = state[f"{name}.{i}"]
                if value.shape != a.shape:
                    raise ValueError(f"optimizer state {name}.{i}: shape {value.shape}, expected {a.shape}")
                a[...] = B.to_device(value)
