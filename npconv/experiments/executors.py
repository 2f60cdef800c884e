"""Where a sweep's runs are trained: this process, local worker processes, or a Dask cluster.

Every executor runs the same task, :func:`train_task`: it trains one
:class:`~npconv.train.settings.TrainConfig` with one BLAS thread
(threadpoolctl), into one of two places:

* **the run's own folder**, for this process and local worker processes: the
  run is an ordinary run folder from its first epoch on, locked while it
  trains, so a run cut off midway -- Ctrl-C, a crash, ``kill -9`` -- leaves the
  checkpoint of its last completed epoch there, and the next sweep *resumes*
  it (:func:`npconv.train.resume_training`) instead of starting it again;
* **a temporary folder of the worker's machine**, for a Dask cluster, whose
  workers need not share a file system with this process: the task returns
  the folder's files and this process writes them into the run folder
  (:func:`npconv.experiments.sweep.store_result`). A run to be resumed
  travels the other way: this process sends its files with the task.

Either way the run folder ends with the same files, bit for bit but for the
wall-clock seconds, and a resumed run ends exactly as an uninterrupted one.

* :class:`InProcess` -- one run after another in this process, with the
  current run's progress bar (``--workers 1``).
* :class:`LocalProcesses` -- a :mod:`multiprocessing` pool of ``N`` worker
  processes ("spawn": fresh interpreters, nothing inherited); a line per
  finished run instead of progress bars.
* :class:`DaskCluster` -- every run is a task on an existing
  ``dask.distributed`` cluster (``scheduler="tcp://HOST:PORT"``). The workers
  must have the same npconv version installed; a result from another version,
  or computed on a different dataset, is refused (status ``failed``). Dask is
  an optional extra: ``pip install "npconv[dask]"``.

One BLAS thread per run is what lets ``N`` runs share ``N`` cores without
fighting, and it keeps every float sum in the same order, so a run gives the
same figures bit for bit on any executor.
"""

import importlib.util
import json
import multiprocessing
import os
import signal
import socket
import tempfile
import threading
import traceback
import uuid
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict

import numpy as np

from .. import __version__
from ..data import keep_loaded
from ..errors import NpconvError, SettingError
from ..train.runfolder import CHECKPOINT_FILE, CONFIG_FILE


def train_task(config_dict, run_dir=None, resume_files=None, progress=False, log_epochs=False):
    """Train (or resume) one run; return its outcome, and its files when it trained elsewhere.

    Parameters
    ----------
    config_dict : dict
        The :class:`~npconv.train.settings.TrainConfig` fields.
    run_dir : str, optional
        Train in this run folder (local executors): resume the run it holds
        if it has a checkpoint, else start it (clearing what an earlier
        attempt left). None: train in a temporary folder and return its files.
    resume_files : dict, optional
        With ``run_dir`` None: the files (name -> bytes) of a run to resume,
        from its folder's :meth:`~npconv.train.runfolder.RunFolder.files`.
    progress : bool
        Show the per-epoch progress bar (in-process runs only).
    log_epochs : bool
        Print each epoch's line, as ``npconv train`` does.

    Returns
    -------
    dict
        ``status`` (``completed``, ``diverged``, ``interrupted`` or
        ``failed``), ``message`` (why it diverged or failed), ``traceback``
        (failed runs), ``resumed_from`` (the epoch it resumed after, or None),
        ``files`` (file name -> bytes, only for a run trained in a temporary
        folder), ``npconv_version`` and ``host`` of the machine that trained it.
    """
    from threadpoolctl import threadpool_limits

    from .. import engine
    from ..train.interrupt import stop_on_signals

    result = {"status": "completed", "message": None, "resumed_from": None, "npconv_version": __version__,
              "host": socket.gethostname()}
    # A diverging run overflows before its loss turns non-finite; that is
    # reported as status "diverged", so NumPy's overflow warnings are only noise.
    # One thread per run: the workers already use the cores, each on its own run.
    # SIGTERM (a local worker asked to stop) ends the run as Ctrl-C does: with its checkpoint kept.
    threads_before = engine.get_num_threads()
    engine.set_num_threads(1)
    try:
        with threadpool_limits(limits=1, user_api="blas"), stop_on_signals((signal.SIGTERM,)), \
                np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            if run_dir is not None:
                _train_in(run_dir, config_dict, result, progress, log_epochs)
            else:
                with tempfile.TemporaryDirectory(prefix="npconv-run-") as tmp:
                    from ..train.runfolder import RunFolder

                    if resume_files and CHECKPOINT_FILE in resume_files:
                        RunFolder(tmp).store(resume_files)
                    _train_in(tmp, config_dict, result, progress, log_epochs)
                    result["files"] = RunFolder(tmp).files()
    finally:
        engine.set_num_threads(threads_before)
    return result


def _train_in(folder_path, config_dict, result, progress, log_epochs):
    """Train the run in ``folder_path``, resuming it from its checkpoint when it has one; fills ``result``."""
    from ..train import TrainConfig, TrainingDiverged, resume_training, run_training
    from ..train.runfolder import RunFolder

    def log(line):
        if log_epochs and line.startswith(("epoch", "resuming")):  # "training ... -> ..." names the folder
            print("  " + line, flush=True)

    folder = RunFolder(folder_path)
    try:
        done = folder.read_summary()
        if done is not None and done.done:  # finished meanwhile by another sweep into the same folder
            result.update(status=done.status, message=done.message)
            return
        try:
            if os.path.exists(folder.file(CHECKPOINT_FILE)):
                result["resumed_from"] = folder.read_checkpoint().epoch
                summary = resume_training(folder.path, progress=progress, log=log)
            else:
                summary = None
        except TrainingDiverged:
            raise
        except NpconvError as e:  # a damaged checkpoint, data that changed: start the run again
            result.update(resumed_from=None, message=f"could not resume ({e}); trained from the start")
            summary = None
        if summary is None:
            folder.clear()
            summary = run_training(TrainConfig(**config_dict), folder.path, progress=progress, log=log)
        result["status"] = summary.status
    except TrainingDiverged as e:
        result.update(status="diverged", message=str(e))
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM: the run recorded "interrupted" and kept its checkpoint
        result.update(status="interrupted", message="interrupted; the next sweep resumes it",
                      signum=int(getattr(e, "signum", signal.SIGINT)))
    except Exception as e:  # noqa: BLE001 - any failure of one run is recorded; the sweep goes on
        message = str(e) if isinstance(e, NpconvError) else f"{type(e).__name__}: {e}"
        result.update(status="failed", message=" ".join(message.split()), traceback=traceback.format_exc())


class InProcess:
    """Train the runs one after another in this process, each in its run folder."""

    slots = 1
    description = "this process"

    def map(self, runs, *, on_start=None, progress=True):
        """Yield ``(run, result)`` for each run, in order."""
        with keep_loaded():  # the runs train on the same data: read it once
            for index, run in enumerate(runs, start=1):
                if on_start is not None:
                    on_start(index, run)
                yield run, train_task(asdict(run.config), run.folder.path, progress=progress, log_epochs=progress)

    def close(self):
        pass


_worker_keeps_data = None  # a local worker process's keep_loaded() block, open while the process lives


def _start_worker():
    # Ctrl-C reaches the whole process group; the parent alone handles it
    # (and stops the workers), so the workers print no tracebacks.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # tqdm's default lock is a multiprocessing semaphore; a stopped worker ends with os._exit, which would leave
    # it registered, and the resource tracker would warn of "leaked semaphore objects". Workers draw no bars.
    from tqdm import tqdm

    tqdm.set_lock(threading.RLock())
    # A worker trains run after run, mostly on the same data: it reads the data once, for as long as it lives.
    global _worker_keeps_data
    _worker_keeps_data = keep_loaded()
    _worker_keeps_data.__enter__()


def _local_task(config_dict, run_dir):
    """:func:`train_task` in a local worker process, which ends once its run was stopped by SIGTERM."""
    result = train_task(config_dict, run_dir)
    if result["status"] == "interrupted":  # the parent is stopping the pool: the run is recorded, nothing is left
        os._exit(0)
    return result


#: Seconds the workers of a stopped sweep get to record their runs' state (an interrupted summary) before they are
#: killed. The checkpoint of the last epoch is on disk already; this is a few small writes.
STOP_SECONDS = 10


class LocalProcesses:
    """Train the runs on a pool of ``workers`` local processes, as they free up, each in its run folder.

    A worker that dies (killed, out of memory) breaks the pool: the runs
    finished so far are kept and :class:`NpconvError` says so.
    """

    def __init__(self, workers):
        self.slots = workers
        self.description = f"{workers} local worker processes"

    def map(self, runs, *, on_start=None, progress=True):
        """Yield ``(run, result)`` as runs finish (not in order)."""
        pool = ProcessPoolExecutor(self.slots, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_start_worker)
        try:
            futures = {pool.submit(_local_task, asdict(run.config), run.folder.path): run for run in runs}
            for future in as_completed(futures):
                try:
                    result = future.result()
                except BrokenProcessPool:
                    raise NpconvError(
                        "a local worker process died (killed, or out of memory?); the runs finished so far are "
                        "kept: run the same command again to go on, perhaps with fewer --workers"
                    ) from None
                yield futures[future], result
        except BaseException:  # Ctrl-C, a dead worker, or the consumer stopped: stop the workers now
            _stop(pool)
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def close(self):
        pass


def _stop(pool):
    """Stop a process pool's workers, even in the middle of a run.

    Each gets SIGTERM, which ends its run as Ctrl-C ends ``npconv train``
    (the run folder records ``interrupted`` and keeps its last checkpoint);
    a worker still alive after :data:`STOP_SECONDS` is killed.
    """
    # The pool's own table of worker processes is the only handle on them (taken
    # before shutdown, which forgets it); Python 3.14's terminate_workers() would not wait.
    processes = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        process.terminate()
    for process in processes:
        process.join(STOP_SECONDS)
        if process.is_alive():
            process.kill()


class DaskCluster:
    """Train every run as a task on the Dask distributed cluster at ``address``."""

    def __init__(self, address, timeout=20):
        if importlib.util.find_spec("distributed") is None:
            raise SettingError("scheduler", f"{address}: running on a Dask cluster needs Dask, an optional extra: "
                                            'pip install "npconv[dask]"')
        from dask.distributed import Client

        try:
            self.client = Client(address, timeout=f"{timeout}s", set_as_default=False)
        except (OSError, TimeoutError, ValueError, TypeError) as e:
            raise SettingError("scheduler", f"{address}: cannot connect to a Dask scheduler ({e})") from None
        self.slots = max(1, sum(self.client.nthreads().values()))
        self.description = f"the Dask cluster at {address} ({self.slots} worker threads)"

    def map(self, runs, *, on_start=None, progress=True):
        """Yield ``(run, result)`` as the cluster finishes runs (not in order)."""
        from dask.distributed import as_completed as dask_completed

        futures = {}
        try:
            for run in runs:
                key = f"npconv-train-{run.key[:16]}-{uuid.uuid4().hex[:8]}"
                # The worker trains in a folder of its own machine; a run cut off earlier travels with its checkpoint.
                resume = run.folder.files() if os.path.exists(run.folder.file(CHECKPOINT_FILE)) else None
                futures[self.client.submit(train_task, asdict(run.config), None, resume, key=key, pure=False)] = run
            for future in dask_completed(list(futures), loop=self.client.loop):
                try:
                    result = future.result()
                except Exception as e:  # noqa: BLE001 - a lost worker, a task that could not run
                    result = {"status": "failed", "message": f"the Dask task failed: {type(e).__name__}: {e}"}
                yield futures[future], result
        except BaseException:
            self.client.cancel(list(futures))
            raise
        finally:
            self.close()

    def close(self):
        self.client.close()


def default_workers():
    """The number of cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def make_executor(workers=None, scheduler=None, pending=None):
    """The executor for ``workers`` / ``scheduler``; ``pending`` runs to do (for sizing)."""
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise SettingError("workers", f"must be an integer >= 1, got {workers!r}")
    if scheduler:
        if pending == 0:
            return InProcess()  # nothing to train: no need to connect
        return DaskCluster(scheduler)
    workers = default_workers() if workers is None else workers
    if pending is not None:
        workers = min(workers, max(pending, 1))
    return InProcess() if workers == 1 else LocalProcesses(workers)


def check_result(run, result):
    """Refuse a result that does not belong to ``run``'s key: turn it into a failure.

    A worker with another npconv version, or another copy of the dataset,
    would produce figures that do not match the run's key.
    """
    if result.get("status") == "failed":
        return result
    version = result.get("npconv_version")
    if version != __version__:
        return {"status": "failed", "message": f"worker {result.get('host')} runs npconv {version}, "
                                               f"this machine {__version__}: install the same version on every worker"}
    if "files" not in result:  # trained in its run folder, on this machine
        return result
    try:
        sha = json.loads(result["files"][CONFIG_FILE])["dataset_sha256"]
    except (KeyError, ValueError, TypeError):
        return {"status": "failed", "message": f"worker {result.get('host')} returned no {CONFIG_FILE}"}
    if sha != run.dataset_sha256:
        return {"status": "failed", "message": f"worker {result.get('host')} trained on a different copy of "
                                               f"{run.config.dataset} (SHA-256 {sha[:12]}..., "
                                               f"expected {run.dataset_sha256[:12]}...)"}
    return result
