"""Numbers over seeds: mean ± sample standard deviation, and when two settings cannot be told apart.

* each table cell is the mean ± the sample standard deviation (``ddof=1``)
  over the seeds;
* two settings are *indistinguishable* when their mean test accuracies differ
  by less than the sum of their standard deviations (their ±1 std intervals
  overlap): the seeds cannot tell them apart.

Pure functions of numbers: nothing here reads a file.
"""

import math
from dataclasses import dataclass


@dataclass
class Stat:
    """Mean and sample standard deviation of the finite values among ``n`` seeds."""

    values: list
    n: int

    @property
    def mean(self):
        return sum(self.values) / len(self.values) if self.values else math.nan

    @property
    def std(self):
        if len(self.values) < 2:
            return 0.0
        m = self.mean
        return math.sqrt(sum((v - m) ** 2 for v in self.values) / (len(self.values) - 1))

    def __bool__(self):
        return bool(self.values)


def stat(values, n=None):
    """A :class:`Stat` of the finite ones among ``values`` (None and NaN are missing seeds)."""
    finite = [float(v) for v in values if v is not None and math.isfinite(v)]
    return Stat(finite, len(values) if n is None else n)


def fmt(s, scale=1.0, digits=2):
    """``"93.51 ± 0.21"`` (scaled), ``"93.51"`` for one value, ``"—"`` for none; notes missing seeds."""
    if not s:
        return "—"
    text = f"{scale * s.mean:.{digits}f}"
    if len(s.values) > 1:
        text += f" ± {scale * s.std:.{digits}f}"
    if len(s.values) < s.n:
        text += f" ({len(s.values)}/{s.n} seeds)"
    return text


def pct(s):
    """An accuracy Stat (fractions) as percentages."""
    return fmt(s, 100.0, 2)


def indistinguishable(a, b):
    """Whether two Stats overlap at ±1 std (see the module docstring)."""
    return abs(a.mean - b.mean) < a.std + b.std

