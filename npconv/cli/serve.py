"""``npconv serve``: the local web page (draw a digit, look inside the network, browse runs and mistakes)."""

import argparse
import ipaddress
import socket
import sys

from ..errors import NpconvError

EXTRA = 'pip install "npconv[serve]"'
DEFAULT_RUNS = "runs"


def add_commands(sub):
    p = sub.add_parser(
        "serve", help="a local web page: draw a digit and watch every layer answer; runs, models, mistakes; "
                      "train and watch it learn",
        description="Serve a web page for trained models: draw a digit and see the prediction and every layer's "
                    "activations, the model's architecture, filters and training curves, its mistakes on the test "
                    "set, and tables of runs (with a study's report); start a run and watch it train (runs go into the "
                    "first folder of runs given). Also a JSON API under /api/. "
                    f"Needs the serve extra: {EXTRA}.")
    p.add_argument("paths", nargs="*", metavar="RUN_DIR|MODEL.npz|FOLDER",
                   help="run folders, model files, and folders of runs (a sweep, a study, runs/); "
                        f"default: {DEFAULT_RUNS}/")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default: %(default)s, this machine only; any other address lets "
                        "anyone who can reach it on the network use the page)")
    p.add_argument("--port", type=port_number, default=8000, help="port (default: %(default)s; 0: any free port)")
    p.add_argument("--token", metavar="TEXT",
                   help="require this token to start, stop or resume runs from the page (default: none on "
                        "loopback; a new random one, printed at start, on any other address)")
    p.add_argument("--max-epochs", type=positive, default=30, metavar="N",
                   help="the most epochs a run started from the page may have (default: %(default)s)")
    p.add_argument("--max-train-images", type=positive, default=60000, metavar="N",
                   help="the most training images a run started from the page may use (default: %(default)s)")


def positive(text):
    value = int(text) if text.isdigit() else 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}")
    return value


def port_number(text):
    value = int(text) if text.isdigit() else -1
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port number from 0 to 65535, got {text!r}")
    return value


def is_loopback(host):
    """Whether ``host`` (a name or an address) is this machine only."""
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except socket.gaierror:
        return False
    return all(ipaddress.ip_address(info[4][0].split("%")[0]).is_loopback for info in infos)


def listen(host, port):
    """A listening socket on ``host``:``port``; :class:`NpconvError` if that cannot be had."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as e:
        raise NpconvError(f"--host {host}: not an address of this machine ({e.strerror})") from None
    # proto must say TCP: asyncio turns Nagle's algorithm off (TCP_NODELAY) only on sockets that do. With it on,
    # a small answer's body waits for the client's delayed ACK of its headers (Linux delays an ACK up to 40 ms).
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as e:
        sock.close()
        raise NpconvError(f"--port {port}: cannot listen on {host} ({e.strerror})") from None
    sock.listen(128)
    return sock


def cmd_serve(args):
    try:
        import uvicorn

        from ..serve.app import LOOPBACK_NAMES, create_app
        from ..serve.training import Trainer, new_token
    except ImportError as e:
        raise NpconvError(f"npconv serve needs the web server packages ({e.name} is missing): {EXTRA}") from None

    from ..serve.catalog import Catalog

    from ..train.modelfile import load_model

    catalog = Catalog.from_paths(args.paths or [DEFAULT_RUNS])
    for run in catalog.runs.values():
        if run.kind == "model":
            load_model(run.path)  # a model file named on the command line is checked now: a bad one is exit 2
    loopback = is_loopback(args.host)
    # On loopback only the server's own names are accepted in Host (DNS rebinding); elsewhere any name.
    token = args.token if args.token is not None else None if loopback else new_token()
    if token is not None and not token.strip():
        raise NpconvError("--token must not be empty")
    trainer = Trainer(catalog, token=token, max_epochs=args.max_epochs, max_train_images=args.max_train_images)
    app = create_app(catalog, allowed_hosts=LOOPBACK_NAMES if loopback else None, trainer=trainer)
    sock = listen(args.host, args.port)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    if not loopback:
        print(f"npconv serve: warning: listening on {args.host}: anyone who can reach this machine on the "
              f"network can use the page and read the served runs (there is no login)", file=sys.stderr)
    count = len(catalog.runs)
    print(f"npconv serve: {count} run{'s' * (count != 1)} at http://{shown}:{port}/  (Ctrl-C stops)", flush=True)
    if token is not None and args.token is None:
        print(f"npconv serve: token to start and stop runs from the page: {token}", flush=True)
    # Event streams of the Train view never end by themselves: on Ctrl-C they get a second, then are cut.
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off", timeout_graceful_shutdown=1)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn has shut down cleanly and passes the Ctrl-C on
        pass
    finally:
        sock.close()
        trainer.shutdown()  # a run training now stops as on Ctrl-C: its checkpoint is kept
    print("npconv serve: stopped", file=sys.stderr)
    return 0


COMMANDS = {"serve": cmd_serve}
