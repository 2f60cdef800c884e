"""``npconv train``, ``npconv evaluate`` and ``npconv predict``."""

from ..errors import SettingError
from ..train import resume_training, run_training
from ..train.settings import SETTINGS, make_config
from .options import add_train_options, settings_given


def _add_data_options(p):
    spec = SETTINGS["dataset"]
    p.add_argument("--dataset", choices=spec.choices, help="built-in dataset (default: the model's own)")
    p.add_argument("--data-dir", metavar="DIR", help=SETTINGS["data_dir"].help)


def add_commands(sub):
    t = sub.add_parser("train", help="train a model and write a run folder",
                       description="Train a model; writes config.json, history.csv, health.csv, checkpoint.npz, "
                                   "summary.json, model.npz, curves.png.")
    add_train_options(t)
    where = t.add_mutually_exclusive_group()
    where.add_argument("--out", metavar="DIR", help="run folder (default: a new folder under runs/)")
    where.add_argument("--resume", metavar="DIR",
                       help="continue the run in DIR from its last checkpoint, with the settings in DIR/config.json "
                            "(only --epochs may change)")
    t.add_argument("--quiet", action="store_true", help="no progress bar")

    e = sub.add_parser("evaluate", help="test loss, accuracy and confusion matrix of a model file")
    e.add_argument("model_file", metavar="MODEL.npz")
    _add_data_options(e)
    e.add_argument("--batch-size", type=int, default=1000, metavar="N", help="default: %(default)s")

    p = sub.add_parser("predict", help="classify image files")
    p.add_argument("model_file", metavar="MODEL.npz")
    p.add_argument("images", nargs="+", metavar="IMAGE")


def cmd_train(args):
    given = settings_given(args)
    if args.resume is not None:
        summary = resume_training(args.resume, epochs=given.get("epochs"), settings=given, progress=not args.quiet)
    else:
        summary = run_training(make_config(given), args.out, progress=not args.quiet)
    print(f"final test accuracy {100 * summary.test_acc:.2f}%  "
          f"({summary.seconds_per_epoch:.1f} s/epoch)  -> {summary.out_dir}")


def format_confusion(m):
    width = max(5, len(str(m.max())) + 1)
    lines = ["true\\pred" + "".join(f"{j:>{width}}" for j in range(len(m)))]
    lines += [f"{i:>9}" + "".join(f"{v:>{width}}" for v in row) for i, row in enumerate(m)]
    return "\n".join(lines)


def cmd_evaluate(args):
    from ..inference import confusion_matrix, evaluate_model_file

    if args.batch_size < 1:
        raise SettingError("batch_size", f"must be an integer >= 1, got {args.batch_size}")
    result = evaluate_model_file(args.model_file, args.dataset, args.data_dir, args.batch_size)
    print(f"{result.dataset} test set: {len(result.labels)} images  loss {result.loss:.4f}  "
          f"accuracy {100 * result.accuracy:.2f}%")
    print("confusion matrix (rows: true class, columns: predicted class)")
    print(format_confusion(confusion_matrix(result.labels, result.predictions, result.num_classes)))


def cmd_predict(args):
    from ..inference import predict_images
    from ..train.modelfile import load_model

    model, config = load_model(args.model_file)
    classes = config.get("classes") or [str(i) for i in range(config["num_classes"])]
    probs = predict_images(model, config, args.images)
    for path, p in zip(args.images, probs):
        k = int(p.argmax())
        print(f"{path}: {k} ({classes[k]}) p={p[k]:.4f}  probabilities: " + " ".join(f"{v:.4f}" for v in p))


COMMANDS = {"train": cmd_train, "evaluate": cmd_evaluate, "predict": cmd_predict}
