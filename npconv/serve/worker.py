"""The process a run started from the page trains in (:mod:`npconv.serve.training` starts it).

It is a fresh Python process (``multiprocessing``'s ``spawn``), so training
never holds the server's event loop or its cores' time slices beyond its own:
the page and ``POST /api/predict`` keep answering. It trains exactly as
``npconv train`` does -- :func:`~npconv.train.run_training` or
:func:`~npconv.train.resume_training` into a run folder, SIGINT and SIGTERM
stopping it cleanly (:func:`~npconv.train.interrupt.stop_on_signals`: the
checkpoint of the last whole epoch kept, ``summary.json`` saying
``interrupted``) -- and tells the server, through a pipe, two things only:

* ``("started", None)`` once the run folder holds its ``config.json`` (the
  server then lists the run), or ``("error", message)`` when the settings or
  the data cannot be used (nothing was written);
* ``("ended", status)`` when the run ends: ``completed``, ``diverged`` or
  ``interrupted`` (or ``("error", message)``).

Everything else the page shows is read from the run folder, as for any run.
"""

import os
import signal
import sys
import traceback

#: Added to the worker's niceness: when the cores are busy, the server's answers come first.
NICENESS = 5


def train_in_process(job, conn):
    """Train ``job`` (``{"settings": {...}, "out_dir": DIR}`` or ``{"resume": DIR, "epochs": N or None}``),
    telling ``conn`` (a :class:`multiprocessing.connection.Connection`) when it started and ended."""
    from ..errors import NpconvError
    from ..train import resume_training, run_training
    from ..train.interrupt import stop_on_signals
    from ..train.loop import TrainingDiverged
    from ..train.settings import make_config

    try:
        os.nice(NICENESS)
    except OSError:
        pass
    started = False

    def log(line):  # the first line is written once config.json is: the run can be listed
        nonlocal started
        if not started:
            started = True
            _send(conn, ("started", None))

    try:
        with stop_on_signals():
            if "resume" in job:
                resume_training(job["resume"], epochs=job.get("epochs"), progress=False, log=log)
            else:
                run_training(make_config(job["settings"]), job["out_dir"], progress=False, log=log)
        status = "completed"
    except TrainingDiverged:
        status = "diverged"
    except KeyboardInterrupt:
        status = "interrupted"
    except NpconvError as e:
        status = None
        _send(conn, ("error", str(e)))
    except Exception as e:  # a bug: the server says so in one line; the traceback goes to its terminal
        status = None
        traceback.print_exc(file=sys.stderr)
        _send(conn, ("error", f"internal error in the training process ({type(e).__name__})"))
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a late second Ctrl-C cannot cut the last message
    if status is not None:
        _send(conn, ("ended", status))
    conn.close()


def _send(conn, message):
    try:
        conn.send(message)
    except OSError:  # the server has gone: the run folder says everything
        pass
