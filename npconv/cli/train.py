"""``npconv train``, ``npconv evaluate`` and ``npconv predict``."""

import csv
import io
import json
import sys

import numpy as np

from ..errors import NpconvError, SettingError
from ..inference import LOW_CONFIDENCE
from ..train import RunFolder, resume_training, run_training
from ..train.run import default_out_dir, settings_with_initial
from ..train.settings import SETTINGS, make_config
from ..text import WIDTH, shorten_start
from .options import EXIT_USAGE, add_train_options, positive_int, settings_given

FORMATS = ("table", "json", "csv")


def _add_data_options(p):
    spec = SETTINGS["dataset"]
    p.add_argument("--dataset", choices=spec.choices, help="built-in dataset (default: the model's own)")
    p.add_argument("--data-dir", metavar="DIR", help=SETTINGS["data_dir"].help)


def _add_device_option(p):
    """``--device`` and ``--engine``, from their settings: where and by what a model file is computed."""
    for name in ("device", "engine"):
        spec = SETTINGS[name]
        p.add_argument(spec.flag, choices=spec.choices, default=spec.default,
                       help=f"{spec.help} (default: %(default)s)")


def add_commands(sub):
    t = sub.add_parser("train", help="train a model and write a run folder",
                       description="Train a model; writes config.json, history.csv, health.csv, checkpoint.npz, "
                                   "summary.json, model.npz, curves.png.")
    add_train_options(t)
    where = t.add_mutually_exclusive_group()
    where.add_argument("--out", metavar="DIR", help="run folder (default: a new folder under runs/)")
    where.add_argument("--resume", metavar="DIR",
                       help="continue the run in DIR from its last checkpoint, with the settings in DIR/config.json "
                            "(only --epochs and --device may change)")
    t.add_argument("--quiet", action="store_true", help="no progress bar")

    e = sub.add_parser("evaluate", help="test loss, accuracy and confusion matrix of a model file")
    e.add_argument("model_file", metavar="MODEL.npz|RUN_DIR", help="a model file, or the run folder that holds it")
    _add_data_options(e)
    e.add_argument("--batch-size", type=int, default=1000, metavar="N", help="default: %(default)s")
    _add_device_option(e)

    p = sub.add_parser(
        "predict", help="classify image files",
        description="Classify images (PNG, JPEG, ...; a folder stands for its images, a quoted pattern such as "
                    "'digits/*.png' for the files it matches). Each image is preprocessed as MNIST's digits were "
                    "made: cropped to its ink, fitted into 20x20, centred by mass in 28x28. A prediction whose top "
                    f"probability is below {LOW_CONFIDENCE} is flagged 'not sure'.")
    p.add_argument("model_file", metavar="MODEL.npz|RUN_DIR", help="a model file, or the run folder that holds it")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="an image file, a folder of images or a pattern")
    p.add_argument("--format", choices=FORMATS, default="table",
                   help="table: one line per image, for reading; json, csv: every class's probability "
                        "(default: %(default)s)")
    p.add_argument("--top", type=positive_int, default=3, metavar="K",
                   help="table: show the K most likely classes with their probabilities (default: %(default)s)")
    _add_device_option(p)


def cmd_train(args):
    given = settings_given(args)
    if args.resume is not None:
        summary = resume_training(args.resume, epochs=given.get("epochs"), settings=given, progress=not args.quiet)
    else:
        config = make_config(settings_with_initial(given))
        config.validate()
        if args.out is None:  # named here, so that a signal after the run completed finds it (completed_run)
            args.out = default_out_dir(config)
        summary = run_training(config, args.out, progress=not args.quiet)
    print(final_line(summary))


def final_line(summary):
    return (f"final test accuracy {100 * summary.test_acc:.2f}%  ({summary.seconds_per_epoch:.1f} s/epoch)"
            f"  -> {summary.out_dir}")


def completed_run(args):
    """The :class:`Summary` of the run ``npconv train`` completed, or None (another command, or not completed).

    A signal that arrives after a run completed -- its model and summary are
    written -- interrupts nothing: the command then exits 0, as the summary says.
    """
    if args.command != "train":
        return None
    folder = args.resume if args.resume is not None else args.out
    try:
        summary = RunFolder(folder).read_summary() if folder is not None else None
    except NpconvError:
        return None
    return summary if summary is not None and summary.status == "completed" else None


def format_confusion(m):
    width = max(5, len(str(m.max())) + 1)
    lines = ["true\\pred" + "".join(f"{j:>{width}}" for j in range(len(m)))]
    lines += [f"{i:>9}" + "".join(f"{v:>{width}}" for v in row) for i, row in enumerate(m)]
    return "\n".join(lines)


def cmd_evaluate(args):
    from ..inference import confusion_matrix, evaluate_model_file

    if args.batch_size < 1:
        raise SettingError("batch_size", f"must be an integer >= 1, got {args.batch_size}")
    result = evaluate_model_file(args.model_file, args.dataset, args.data_dir, args.batch_size, args.device,
                                 args.engine)
    if result.warning:
        print(f"npconv: warning: {result.warning}", file=sys.stderr)
    print(f"{result.dataset} test set: {len(result.labels)} images  loss {result.loss:.4f}  "
          f"accuracy {100 * result.accuracy:.2f}%")
    print("confusion matrix (rows: true class, columns: predicted class)")
    print(format_confusion(confusion_matrix(result.labels, result.predictions, result.num_classes)))


def cmd_predict(args):
    from ..data.images import ImageError
    from ..inference import Classifier, image_files

    classifier = Classifier(args.model_file, args.device, args.engine)
    arrays, names, failed = [], [], 0
    for path in image_files(args.images):
        try:
            arrays.append(classifier.preprocess(path))
            names.append(path)
        except ImageError as e:  # one line per image that cannot be read; the others are still classified
            print(f"npconv: error: {e}", file=sys.stderr)
            failed += 1
    predictions = classifier.predictions(np.stack(arrays), names) if arrays else []
    formats = {"table": format_table, "json": format_json, "csv": format_csv}
    if predictions:
        sys.stdout.write(formats[args.format](predictions, classifier.classes, args.top))
    return EXIT_USAGE if failed else 0


def format_table(predictions, classes, top=3):
    """One line per image: the image, its class, the probability, the next most likely classes, a flag.

    Every line fits in :data:`WIDTH` columns: a long path is shortened from
    its start, and the list of next classes stops where the line would end.
    """
    class_width = max(5, *(len(c) for c in classes))
    flagged = any(p.not_sure for p in predictions)
    note = "  not sure" if flagged else ""
    image_width = min(max(5, *(len(p.image) for p in predictions)), WIDTH // 3)
    lines = [f"{'image':<{image_width}}  {'class':<{class_width}}  {'p':>6}" + ("  next" if top > 1 else "")]
    for p in predictions:
        head = f"{shorten_start(p.image, image_width):<{image_width}}  {p.label:<{class_width}}  {p.probability:6.4f}"
        tail = "  not sure" if p.not_sure else ""
        room = WIDTH - len(head) - len(note)
        others = ""
        for label, value in p.top(top)[1:]:
            item = f"  {label} {value:.4f}"
            if len(others) + len(item) > room:
                break
            others += item
        lines.append(head + others + tail)
    if flagged:
        lines.append(f"not sure: the top probability is below {LOW_CONFIDENCE} (the first choice is more likely wrong "
                     "than right)")
    return "\n".join(line.rstrip() for line in lines) + "\n"


def format_json(predictions, classes, top=None):
    """A JSON array: per image its class, probability, ``not_sure`` flag and every class's probability."""
    return json.dumps([p.to_json() for p in predictions], indent=2) + "\n"


def format_csv(predictions, classes, top=None):
    """CSV: ``image,class,probability,not_sure`` and one column per class with its probability."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["image", "class", "probability", "not_sure", *classes])
    for p in predictions:
        writer.writerow([p.image, p.label, repr(p.probability), p.not_sure, *map(repr, p.probabilities.values())])
    return buf.getvalue()


COMMANDS = {"train": cmd_train, "evaluate": cmd_evaluate, "predict": cmd_predict}
