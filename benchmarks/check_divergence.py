"""Does any healthy run trip npconv's divergence rule? Check every history of a study (or sweep) folder.

npconv stops a run as diverged when an epoch's mean training loss is not
finite or exceeds ``DIVERGENCE_FACTOR * ln K`` (230 for 10 classes; see
``npconv.train.loop.divergence_threshold``). This script reads every run
folder under the given folders (``STUDY/runs/*``, ``runs/*``, ...) and prints
the runs whose training loss came closest to the threshold, then a summary:
how many completed runs would trip the rule (there must be none) and the
largest training loss any completed run reached, as a fraction of the
threshold. A ``results.csv`` (e.g. ``docs/study/results.csv``, whose run
folders are not kept) is checked on its final training losses only.

    python benchmarks/check_divergence.py study/              # after npconv study
    python benchmarks/check_divergence.py docs/study/results.csv study-quick/ docs/study/collapse/

Exit status 0 when no completed run trips the rule, 1 otherwise.
"""

import csv
import math
import sys

from npconv.experiments.runlist import find_run_folders
from npconv.train.loop import DIVERGENCE_FACTOR, divergence_threshold, exploded
from npconv.train.runfolder import RunFolder


def runs_in(path):
    """``(name, status, training losses per epoch, number of classes)`` for every run found at ``path``."""
    if path.endswith(".csv"):
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                loss = float(row["train_loss"]) if row.get("train_loss") else None
                yield row["run"], row["status"], [] if loss is None else [loss], 10
        return
    for folder in find_run_folders(path):
        run = RunFolder(folder)
        summary = run.read_summary()
        config = run.read_config()
        yield (folder, summary.status if summary else "unfinished", [h.train_loss for h in run.read_history()],
               int(config.get("num_classes", 10)))


def main(paths):
    rows = []
    for path in paths:
        for name, status, losses, k in runs_in(path):
            if losses:
                rows.append((max(losses), name, status, divergence_threshold(k)))
    if not rows:
        print("no run histories found")
        return 1
    rows.sort(key=lambda r: -r[0] / r[3] if math.isfinite(r[0]) else -math.inf)
    print(f"{'largest train loss':>18}  {'/ threshold':>11}  {'status':<10}  run")
    for loss, name, status, threshold in rows[:15]:
        print(f"{loss:>18.4g}  {loss / threshold:>11.4f}  {status:<10}  {name}")
    healthy = [r for r in rows if r[2] == "completed"]
    tripped = [r for r in healthy if exploded(r[0], r[3])]
    worst = max(healthy, key=lambda r: r[0] / r[3]) if healthy else None
    print(f"summary: {len(rows)} runs, {len(healthy)} completed; rule: train loss > {DIVERGENCE_FACTOR} ln K "
          f"({divergence_threshold(10):.0f} for 10 classes); completed runs that trip it: {len(tripped)}"
          + (f"; the largest completed train loss is {worst[0]:.4g}, {worst[0] / worst[3]:.2%} of the threshold"
             if worst else ""))
    return 1 if tripped else 0


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    sys.exit(main(sys.argv[1:]))
