"""The ``npconv`` command: ``train``, ``evaluate``, ``predict``, ``sweep``, ``study``, ``compare``, ``serve``,
``export``, ``import``.

Exit statuses: 0 success; 1 a run of a sweep or study failed (the others went
on); 2 a user error (bad option, missing or malformed file, busy run folder)
-- one line on stderr, no traceback; 3 training diverged; 130 interrupted by
Ctrl-C (SIGINT); 143 stopped by SIGTERM. An interrupted ``train`` keeps the
checkpoint of its last completed epoch; ``npconv train --resume DIR`` continues it.
"""

import argparse
import difflib
import os
import sys

from .. import __version__
from ..errors import NpconvError
from ..train.interrupt import Interrupted, stop_on_signals
from ..train.loop import TrainingDiverged
from . import experiments, interop, serve, train
from .options import EXIT_USAGE, error_message

EXIT_DIVERGED = 3
EXIT_INTERRUPTED = 130  # 128 + SIGINT


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (and exit status 2), and an unknown option gets the
    closest known one suggested (what argparse's ``suggest_on_error`` does from Python 3.14 on)."""

    def error(self, message):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")

    def parse_args(self, args=None, namespace=None):
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            command = self._subparsers._group_actions[0].choices.get(getattr(parsed, "command", None))
            hint = suggestion(extras, command or self)
            self.error(f"unrecognized arguments: {' '.join(extras)}" + (f"; did you mean {hint}?" if hint else ""))
        return parsed


def suggestion(extras, parser):
    """The option of ``parser`` closest to the first unknown option in ``extras``, or None.

    An option matches by its flag (``--epoch`` -> ``--epochs``) or by the first words of its help, so that
    ``--learning-rate`` finds ``--lr``, whose help begins "learning rate".
    """
    unknown = next((e.split("=")[0] for e in extras if e.startswith("--")), None)
    if unknown is None:
        return None
    names = {}
    for action in parser._actions:
        for option in action.option_strings:
            if option.startswith("--") and option != "--help":
                names[option] = option
                words = (action.help or "").split("values of:")[-1].replace("(", " ").split()  # sweep: a list of
                for n in (2, 3):  # "learning rate", "weight decay", "batch size"
                    names.setdefault("--" + "-".join(w.strip(",:;").lower() for w in words[:n]), option)
    close = difflib.get_close_matches(unknown, names, n=1, cutoff=0.75)
    return names[close[0]] if close else None


def build_parser():
    parser = _Parser(prog="npconv", description="From-scratch NumPy ConvNets for image classification.")
    parser.add_argument("--version", action="version", version=f"npconv {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    train.add_commands(sub)
    experiments.add_commands(sub)
    serve.add_commands(sub)
    interop.add_commands(sub)
    return parser


COMMANDS = {**train.COMMANDS, **experiments.COMMANDS, **serve.COMMANDS, **interop.COMMANDS}


def main(argv=None):
    """Run the command line; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        # SIGINT and SIGTERM stop a run at once but never between the files of
        # an epoch's end (npconv.train.interrupt), so the checkpoint is always whole.
        with stop_on_signals():
            status = COMMANDS[args.command](args)
    except TrainingDiverged as e:
        print(f"npconv: {e}", file=sys.stderr)
        return EXIT_DIVERGED
    except NpconvError as e:
        print(f"npconv: error: {error_message(e)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt as e:
        completed = train.completed_run(args)
        if completed is not None:  # the signal came after the end: the run is whole, and the exit status says so
            print(train.final_line(completed))
            print(f"npconv: {_signal_name(e)} arrived after the run completed; nothing was lost", file=sys.stderr)
            return 0
        print(f"npconv: {_interrupted_message(e)}", file=sys.stderr)
        return e.exit_status if isinstance(e, Interrupted) else EXIT_INTERRUPTED
    return status or 0


def _signal_name(e):
    return e.signal_name if isinstance(e, Interrupted) else "SIGINT"


def _interrupted_message(e):
    if not isinstance(e, Interrupted):
        return "interrupted"
    message = f"interrupted by {e.signal_name}"
    if e.out_dir is None:
        return message
    if not e.epoch:
        return f"{message} before the first epoch finished: no checkpoint to resume from"
    # Kept short: with npconv train's default folder (runs/cnn-mnist-20261127-101500) it fits in 100 columns.
    return f"{message} after epoch {e.epoch}: npconv train --resume {e.out_dir}"


def entry_point():
    try:
        status = main()
        sys.stdout.flush()
    except BrokenPipeError:  # the reader went away (npconv ... | head): not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        status = 0
    sys.exit(status)
