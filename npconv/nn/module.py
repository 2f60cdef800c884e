"""``Parameter`` and ``Module``: the contract every layer follows.

A layer is a :class:`Module` with two methods:

* ``forward(x) -> y`` computes the output and keeps exactly what ``backward``
  needs (the input for Linear, the mask for ReLU, the routing masks for max-pool ...);
* ``backward(dy) -> dx`` takes the gradient of the loss with respect to the
  output, ``dy = dL/dy`` (same shape as ``y``), adds the gradient with respect to
  each parameter into that parameter's ``.grad`` and returns ``dx = dL/dx``
  (same shape as ``x``). It never recomputes what forward kept, and never
  changes a weight: only an optimizer (:mod:`npconv.optim`) does that.

A layer may also own **buffers** (:class:`Buffer`): state that is not
trained but belongs to the model, such as batch normalization's running
statistics. The layer updates them itself in a training-mode forward pass;
they are saved and loaded with the parameters (:meth:`Module.state_dict`, under
PyTorch's names), and optimizers never see them (``parameters()`` does not list
them).

Gradients accumulate (``grad += ...``) as in PyTorch, so call the optimizer's
``zero_grad()`` before each backward pass. Layers with parameters also accept
``backward(dy, input_grad=False)``: fill the parameters' gradients but skip
``dx``, for the first layer of a network, whose input is data.

Layout conventions, declared once for the whole package: images are NCHW --
``(N, C, H, W)`` = (batch, channels, height, width); a Linear weight is
``(out_features, in_features)``, a Conv2d weight is
``(out_channels, in_channels, KH, KW)``, and every bias is ``(out,)``.
"""

import contextlib
import contextvars

from .. import backend as B

#: Whether forward passes keep what backward needs: per thread (and asyncio task), never for the process.
_grad_enabled = contextvars.ContextVar("npconv_grad_enabled", default=True)
_NOTHING_KEPT = object()  # what a forward under no_grad() leaves for backward


@contextlib.contextmanager
def no_grad():
    """Inside this block forward passes keep nothing for backward, like ``torch.no_grad()``.

    For inference: layers skip computing their caches (ReLU's mask, max-pool's
    routing), which makes evaluation faster; ``backward`` is then an error.

    The switch holds for the thread (or asyncio task) that entered the block
    only: inference in one thread never changes a training step in another.
    A new thread starts with gradients enabled.
    """
    token = _grad_enabled.set(False)
    try:
        yield
    finally:
        _grad_enabled.reset(token)


def grad_enabled():
    """False inside :func:`no_grad`: a forward pass need not keep anything for backward."""
    return _grad_enabled.get()


class _State:
    """An array a module owns and saves in its ``state_dict``: a :class:`Parameter` or a :class:`Buffer`."""

    def __init__(self, data):
        self.data = data

    @property
    def shape(self):
        return self.data.shape

    @property
    def dtype(self):
        return self.data.dtype

    def __repr__(self):
        return f"{type(self).__name__}(shape={self.data.shape}, dtype={self.data.dtype})"


class Parameter(_State):
    """A trainable array and the gradient of the loss with respect to it.

    Attributes
    ----------
    data : array
        The values; optimizers update it in place.
    grad : array, same shape and dtype as ``data``
        Accumulated ``dL/d(data)``; starts at zero.
    """

    def __init__(self, data):
        super().__init__(data)
        self.grad = B.xp.zeros_like(data)


class Buffer(_State):
    """A state array saved with the model but not trained (e.g. batch normalization's running mean).

    The layer that owns it updates ``data`` in place during a training-mode
    forward pass; it has no gradient and no optimizer touches it.

    Attributes
    ----------
    data : array
        The values (any dtype: running statistics are floats, a batch count is an int64 scalar).
    """


class Module:
    """Base class of every layer, loss and container.

    Subclasses set their parameters, buffers and sub-modules as attributes in
    ``__init__``; :meth:`named_parameters` and :meth:`named_buffers` find them
    in definition order.
    """

    training = True

    def __call__(self, *args):
        return self.forward(*args)

    def forward(self, x):
        raise NotImplementedError

    def backward(self, dy):
        raise NotImplementedError

    # --- what backward needs -------------------------------------------
    def _save(self, *tensors):
        """Keep what ``backward`` will need (called by ``forward``; nothing under :func:`no_grad`)."""
        self._saved = tensors if _grad_enabled.get() else _NOTHING_KEPT

    def _saved_tensors(self):
        """Return what ``forward`` kept; a clear error if it never ran."""
        saved = getattr(self, "_saved", None)
        if saved is None:
            raise RuntimeError(f"{type(self).__name__}.backward() called before forward()")
        if saved is _NOTHING_KEPT:
            raise RuntimeError(f"{type(self).__name__}.backward() after a forward under no_grad(), which keeps nothing")
        return saved

    # --- parameters and sub-modules ------------------------------------
    def children(self):
        """Direct sub-modules as ``(name, module)`` pairs, in definition order."""
        for name, value in vars(self).items():
            if isinstance(value, Module):
                yield name, value

    def modules(self):
        """This module and every module below it, depth first, in definition order."""
        return [module for _, module in self._prefixed_modules()]

    def _prefixed_modules(self, prefix=""):
        """``(prefix, module)`` for this module and every one below it; ``prefix`` starts each of its names."""
        yield prefix, self
        for name, child in self.children():
            yield from child._prefixed_modules(prefix + name + ".")

    def _named(self, kind, prefix=""):
        """``(dotted_name, obj)`` of every attribute of type ``kind``, own ones first, then each child's."""
        for name, value in vars(self).items():
            if isinstance(value, kind):
                yield prefix + name, value
        for name, child in self.children():
            yield from child._named(kind, prefix + name + ".")

    def named_parameters(self, prefix=""):
        """All parameters as ``(dotted_name, Parameter)``, in definition order.

        The names are PyTorch's ``state_dict`` keys, e.g. ``"0.weight"``.
        """
        return self._named(Parameter, prefix)

    def parameters(self):
        """All parameters in definition order (what an optimizer takes)."""
        return [p for _, p in self.named_parameters()]

    def named_buffers(self, prefix=""):
        """All buffers as ``(dotted_name, Buffer)``, e.g. ``("1.running_mean", ...)``, in definition order."""
        return self._named(Buffer, prefix)

    def buffers(self):
        """All buffers in definition order."""
        return [b for _, b in self.named_buffers()]

    def state_dict(self):
        """``{name: array}`` of every parameter's and buffer's values (the arrays themselves, not copies).

        In PyTorch's order: a module's own parameters, then its own buffers,
        then each child's, so ``"1.weight", "1.bias", "1.running_mean", "1.running_var",
        "1.num_batches_tracked"`` for a batch normalization layer at index 1.
        """
        state = {}
        for prefix, module in self._prefixed_modules():
            for kind in (Parameter, Buffer):
                state.update((prefix + name, v.data) for name, v in vars(module).items() if isinstance(v, kind))
        return state

    def load_state_dict(self, state):
        """Copy values into the parameters and buffers; names, shapes and dtypes must match exactly.

        Every module then checks the values it was given (:meth:`check_state`:
        a negative running variance, say); any problem is a ``ValueError``.
        """
        own = dict(self._named(_State))
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        if missing or unexpected:
            raise ValueError(f"state dict does not fit the model: missing {missing}, unexpected {unexpected}")
        for name, p in own.items():
            value = state[name]
            if value.shape != p.data.shape:
                raise ValueError(f"{name}: shape {value.shape} does not fit the model's {p.data.shape}")
            if value.dtype != p.data.dtype:
                raise ValueError(f"{name}: dtype {value.dtype} does not fit the model's {p.data.dtype}")
            p.data[...] = B.to_device(value)  # a host array (from a file) goes to the backend's device
        for prefix, module in self._prefixed_modules():
            module.check_state(prefix)

    def check_state(self, prefix):
        """Raise ``ValueError`` if loaded values cannot be right for this layer (names start with ``prefix``).

        Nothing to check by default; batch normalization checks its running statistics.
        """

    # --- modes -----------------------------------------------------------
    def train(self, mode=True):
        """Training mode (dropout active, batch normalization on batch statistics); returns ``self``."""
        self.training = mode
        for _, child in self.children():
            child.train(mode)
        return self

    def eval(self):
        """Evaluation mode (dropout is the identity, batch normalization uses running statistics); returns ``self``."""
        return self.train(False)

    def zero_grad(self):
        """Set every parameter's gradient to zero."""
        for p in self.parameters():
            p.grad[...] = 0

    def extra_repr(self):
        return ""

    def __repr__(self):
        return f"{type(self).__name__}({self.extra_repr()})"
