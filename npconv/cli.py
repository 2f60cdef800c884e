"""The ``npconv`` command: ``train``, ``evaluate``, ``predict``.

Exit statuses: 0 success; 2 a user error (bad option, missing or malformed
file) -- one line on stderr, no traceback; 3 training diverged (NaN or infinite
loss); 130 interrupted (Ctrl-C).
"""

import argparse
import sys

import numpy as np

from . import __version__, data, optim
from .errors import NpconvError
from .models import DROPOUT_LOCATIONS, MODELS
from .run import OPTIMIZERS, TrainConfig, run_training
from .training import TrainingDiverged

EXIT_USAGE = 2
EXIT_DIVERGED = 3
EXIT_INTERRUPTED = 130


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (and exit status 2)."""

    def error(self, message):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _add_data_options(p, default_dataset):
    p.add_argument("--dataset", choices=sorted(data.DATASETS), default=default_dataset,
                   help="built-in dataset (default: %(default)s)")
    p.add_argument("--data-dir", metavar="DIR",
                   help="folder with the four IDX files (train-images-idx3-ubyte[.gz], ...) instead of a built-in dataset")


def build_parser():
    d = TrainConfig()
    parser = _Parser(prog="npconv", description="From-scratch NumPy ConvNets for image classification.")
    parser.add_argument("--version", action="version", version=f"npconv {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    t = sub.add_parser("train", help="train a model and write a run folder",
                       description="Train a model; writes config.json, history.csv, summary.json, model.npz, curves.png.")
    t.add_argument("--model", choices=MODELS, default=d.model, help="default: %(default)s")
    _add_data_options(t, d.dataset)
    t.add_argument("--epochs", type=int, default=d.epochs, metavar="N", help="default: %(default)s")
    t.add_argument("--batch-size", type=int, default=d.batch_size, metavar="N", help="default: %(default)s")
    t.add_argument("--optimizer", choices=OPTIMIZERS, default=d.optimizer, help="default: %(default)s")
    t.add_argument("--lr", type=float, default=d.lr, metavar="X", help="learning rate (default: %(default)s)")
    t.add_argument("--lr-schedule", choices=optim.SCHEDULES, default=d.lr_schedule,
                   help="learning rate per epoch: constant, or cosine annealing towards 0 (default: %(default)s)")
    t.add_argument("--momentum", type=float, default=d.momentum, metavar="X",
                   help="SGD momentum in [0, 1) (default: %(default)s; ignored by adam)")
    t.add_argument("--weight-decay", type=float, default=d.weight_decay, metavar="X", help="L2 weight decay (default: %(default)s)")
    t.add_argument("--dropout", type=float, default=d.dropout, metavar="P",
                   help="dropout probability in [0, 1) (default: %(default)s)")
    t.add_argument("--dropout-at", choices=DROPOUT_LOCATIONS, default=d.dropout_at,
                   help="where dropout goes (default: %(default)s)")
    t.add_argument("--seed", type=int, default=d.seed, metavar="N", help="default: %(default)s")
    t.add_argument("--train-subset", type=int, metavar="N", help="train on N random training images")
    t.add_argument("--val-split", type=float, default=d.val_split, metavar="F",
                   help="hold out this fraction of the training images for validation (default: %(default)s)")
    t.add_argument("--no-normalize", dest="normalize", action="store_false",
                   help="scale pixels to [0, 1] only, without the mean/std standardization")
    t.add_argument("--dtype", choices=("float32", "float64"), default=d.dtype, help="default: %(default)s")
    t.add_argument("--out", metavar="DIR", help="run folder (default: a new folder under runs/)")
    t.add_argument("--quiet", action="store_true", help="no progress bar")

    e = sub.add_parser("evaluate", help="test loss, accuracy and confusion matrix of a model file")
    e.add_argument("model_file", metavar="MODEL.npz")
    _add_data_options(e, None)
    e.add_argument("--batch-size", type=int, default=1000, metavar="N", help="default: %(default)s")

    p = sub.add_parser("predict", help="classify image files")
    p.add_argument("model_file", metavar="MODEL.npz")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    return parser


def cmd_train(args):
    config = TrainConfig(
        model=args.model, dataset=args.dataset, data_dir=args.data_dir, epochs=args.epochs,
        batch_size=args.batch_size, optimizer=args.optimizer, lr=args.lr, lr_schedule=args.lr_schedule, momentum=args.momentum,
        weight_decay=args.weight_decay, dropout=args.dropout, dropout_at=args.dropout_at, seed=args.seed,
        train_subset=args.train_subset, val_split=args.val_split, normalize=args.normalize, dtype=args.dtype,
    )
    summary = run_training(config, args.out, progress=not args.quiet)
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


COMMANDS = {"train": cmd_train, "evaluate": cmd_evaluate, "predict": cmd_predict}


def main(argv=None):
    """Run the command line; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        COMMANDS[args.command](args)
    except TrainingDiverged as e:
        print(f"npconv: error: {e}", file=sys.stderr)
        return EXIT_DIVERGED
    except NpconvError as e:
        print(f"npconv: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("npconv: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0


def entry_point():
    sys.exit(main())
