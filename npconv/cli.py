"""The ``npconv`` command: ``train``, ``evaluate``, ``predict``, ``sweep``, ``study``, ``compare``.

Exit statuses: 0 success; 2 a user error (bad option, missing or malformed
file, busy run folder) -- one line on stderr, no traceback; 3 training diverged
(NaN or infinite loss); 130 interrupted by Ctrl-C (SIGINT); 143 stopped by
SIGTERM. An interrupted ``train`` keeps the checkpoint of its last completed
epoch; ``npconv train --resume DIR`` continues it.
"""

import argparse
import os
import sys
from dataclasses import fields

import numpy as np

from . import __version__, cli_study, data, optim
from .checkpoint import CHECKPOINT_FILE
from .errors import NpconvError
from .interrupt import Interrupted, stop_on_signals
from .models import DROPOUT_LOCATIONS, MODELS
from .run import OPTIMIZERS, TrainConfig, resume_training, run_training
from .training import TrainingDiverged

EXIT_USAGE = 2
EXIT_DIVERGED = 3
EXIT_INTERRUPTED = 130  # 128 + SIGINT
EXIT_TERMINATED = 143   # 128 + SIGTERM

#: The train options that are settings of the run (TrainConfig fields).
_SETTINGS = [f.name for f in fields(TrainConfig)]


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (and exit status 2)."""

    def error(self, message):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _add_data_options(p, default_dataset, default_help="default: %(default)s"):
    p.add_argument("--dataset", choices=sorted(data.DATASETS), default=default_dataset,
                   help=f"built-in dataset ({default_help})")
    p.add_argument("--data-dir", metavar="DIR",
                   help="folder with the four IDX files (train-images-idx3-ubyte[.gz], ...) instead of a built-in dataset")


def build_parser():
    d = TrainConfig()
    parser = _Parser(prog="npconv", description="From-scratch NumPy ConvNets for image classification.")
    parser.add_argument("--version", action="version", version=f"npconv {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    # The settings' defaults are None here, so that cmd_train can tell which
    # ones were given (--resume refuses to change them); TrainConfig fills in the rest.
    t = sub.add_parser("train", help="train a model and write a run folder",
                       description="Train a model; writes config.json, history.csv, health.csv, checkpoint.npz, "
                                   "summary.json, model.npz, curves.png.")
    t.add_argument("--model", choices=MODELS, help=f"default: {d.model}")
    _add_data_options(t, None, f"default: {d.dataset}")
    t.add_argument("--epochs", type=int, metavar="N", help=f"default: {d.epochs}")
    t.add_argument("--batch-size", type=int, metavar="N", help=f"default: {d.batch_size}")
    t.add_argument("--optimizer", choices=OPTIMIZERS, help=f"default: {d.optimizer}")
    t.add_argument("--lr", type=float, metavar="X", help=f"learning rate (default: {d.lr})")
    t.add_argument("--lr-schedule", choices=optim.SCHEDULES,
                   help=f"learning rate per epoch: constant, or cosine annealing towards 0 (default: {d.lr_schedule})")
    t.add_argument("--momentum", type=float, metavar="X",
                   help=f"SGD momentum in [0, 1) (default: {d.momentum}; ignored by adam)")
    t.add_argument("--weight-decay", type=float, metavar="X", help=f"L2 weight decay (default: {d.weight_decay})")
    t.add_argument("--dropout", type=float, metavar="P", help=f"dropout probability in [0, 1) (default: {d.dropout})")
    t.add_argument("--dropout-at", choices=DROPOUT_LOCATIONS, help=f"where dropout goes (default: {d.dropout_at})")
    t.add_argument("--seed", type=int, metavar="N", help=f"default: {d.seed}")
    t.add_argument("--train-subset", type=int, metavar="N", help="train on N random training images")
    t.add_argument("--val-split", type=float, metavar="F",
                   help=f"hold out this fraction of the training images for validation (default: {d.val_split})")
    t.add_argument("--no-normalize", dest="normalize", action="store_const", const=False,
                   help="scale pixels to [0, 1] only, without the mean/std standardization")
    t.add_argument("--dtype", choices=("float32", "float64"), help=f"default: {d.dtype}")
    where = t.add_mutually_exclusive_group()
    where.add_argument("--out", metavar="DIR", help="run folder (default: a new folder under runs/)")
    where.add_argument("--resume", metavar="DIR",
                       help="continue the run in DIR from its last checkpoint, with the settings in DIR/config.json "
                            "(only --epochs may change)")
    t.add_argument("--quiet", action="store_true", help="no progress bar")

    e = sub.add_parser("evaluate", help="test loss, accuracy and confusion matrix of a model file")
    e.add_argument("model_file", metavar="MODEL.npz")
    _add_data_options(e, None)
    e.add_argument("--batch-size", type=int, default=1000, metavar="N", help="default: %(default)s")

    p = sub.add_parser("predict", help="classify image files")
    p.add_argument("model_file", metavar="MODEL.npz")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    cli_study.add_commands(sub)
    return parser


def cmd_train(args):
    given = {name: getattr(args, name) for name in _SETTINGS if getattr(args, name) is not None}
    if args.resume is not None:
        summary = resume_training(args.resume, epochs=given.get("epochs"), settings=given, progress=not args.quiet)
    else:
        summary = run_training(TrainConfig(**given), args.out, progress=not args.quiet)
    print(f"final test accuracy {100 * summary['test_acc']:.2f}%  "
          f"({summary['seconds_per_epoch']:.1f} s/epoch)  -> {summary['out_dir']}")


def confusion_matrix(labels, predictions, num_classes):
    """``m[t, p]`` = how many images of true class t were predicted as p."""
    m = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(m, (labels, predictions), 1)
    return m


def format_confusion(m):
    width = max(5, len(str(m.max())) + 1)
    lines = ["true\\pred" + "".join(f"{j:>{width}}" for j in range(len(m)))]
    lines += [f"{i:>9}" + "".join(f"{v:>{width}}" for v in row) for i, row in enumerate(m)]
    return "\n".join(lines)


def cmd_evaluate(args):
    from .nn import SoftmaxCrossEntropyLoss
    from .serialization import load_model
    from .training import evaluate

    if args.batch_size < 1:
        raise NpconvError(f"--batch-size must be an integer >= 1, got {args.batch_size}")
    model, config = load_model(args.model_file)
    dataset = data.load_dataset(args.dataset or config.get("dataset", "mnist"), args.data_dir)
    if len(dataset.classes) != config["num_classes"]:
        raise NpconvError(f"{args.model_file}: the model has {config['num_classes']} classes, the data {len(dataset.classes)}")
    x = data.to_float(dataset.test_images, config.get("normalize_mean"), config.get("normalize_std"),
                      np.dtype(config["dtype"]))
    loss, acc, predictions = evaluate(model, SoftmaxCrossEntropyLoss(), x, dataset.test_labels, args.batch_size)
    print(f"{dataset.name} test set: {len(x)} images  loss {loss:.4f}  accuracy {100 * acc:.2f}%")
    print("confusion matrix (rows: true class, columns: predicted class)")
    print(format_confusion(confusion_matrix(dataset.test_labels, predictions, config["num_classes"])))


def cmd_predict(args):
    from .predict import predict_images
    from .serialization import load_model

    model, config = load_model(args.model_file)
    classes = config.get("classes") or [str(i) for i in range(config["num_classes"])]
    probs = predict_images(model, config, args.images)
    for path, p in zip(args.images, probs):
        k = int(p.argmax())
        print(f"{path}: {k} ({classes[k]}) p={p[k]:.4f}  probabilities: " + " ".join(f"{v:.4f}" for v in p))


COMMANDS = {"train": cmd_train, "evaluate": cmd_evaluate, "predict": cmd_predict, **cli_study.COMMANDS}


def main(argv=None):
    """Run the command line; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        # SIGINT and SIGTERM stop a run at once but never between the files of
        # an epoch's end (npconv.interrupt), so the checkpoint is always whole.
        with stop_on_signals():
            status = COMMANDS[args.command](args)
    except TrainingDiverged as e:
        print(f"npconv: error: {e}", file=sys.stderr)
        return EXIT_DIVERGED
    except NpconvError as e:
        print(f"npconv: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt as e:
        print(f"npconv: {_interrupted_message(e)}", file=sys.stderr)
        return e.exit_status if isinstance(e, Interrupted) else EXIT_INTERRUPTED
    return status or 0


def _interrupted_message(e):
    if not isinstance(e, Interrupted):
        return "interrupted"
    message = f"interrupted by {e.signal_name}"
    if e.out_dir is None:
        return message
    if not e.epoch:
        return f"{message} before the first epoch finished; there is no checkpoint to resume from"
    return (f"{message} after epoch {e.epoch}; its checkpoint is in {os.path.join(e.out_dir, CHECKPOINT_FILE)}; "
            f"continue with: npconv train --resume {e.out_dir}")


def entry_point():
    sys.exit(main())
