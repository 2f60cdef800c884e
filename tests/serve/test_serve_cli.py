"""``npconv serve`` on the command line: its errors, its warning, how it stops."""

import signal
import socket
import subprocess
import sys

import pytest
from dependencies import require

from .webclient import start_server

from npconv.cli import main
from npconv.cli.serve import is_loopback

require("uvicorn")


def run_cli(*args, cwd=None, code=None):
    command = [sys.executable, "-c", code, *args] if code else [sys.executable, "-m", "npconv", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=cwd)


def one_line_error(result, *words):
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("npconv") and "error:" in lines[0], result.stderr
    for word in words:
        assert word in lines[0], lines[0]


def test_without_the_extra_it_names_the_extra(served):
    code = ("import sys; sys.modules['uvicorn'] = None; from npconv.cli import main; "
            "sys.exit(main(['serve', sys.argv[1]]))")
    one_line_error(run_cli(served.run, code=code), 'pip install "npconv[serve]"')


def test_a_damaged_model_file_is_refused_at_once(tmp_path):
    bad = tmp_path / "model.npz"
    bad.write_bytes(b"PK\x03\x04 not really a zip")
    one_line_error(run_cli("serve", str(bad)), str(bad))


def test_paths_that_serve_nothing(served, tmp_path):
    one_line_error(run_cli("serve", str(tmp_path / "missing")), "no such")
    one_line_error(run_cli("serve", cwd=tmp_path), "runs", "no such")  # the default: ./runs
    one_line_error(run_cli("serve", served.run, "--port", "70000"), "port")


def test_a_port_in_use(served):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        one_line_error(run_cli("serve", served.run, "--port", str(taken.getsockname()[1])), "--port", "cannot listen")


def test_loopback_addresses():
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.0.2.7") and not is_loopback("::")


def test_another_host_gets_a_warning(served, monkeypatch, capsys):
    import uvicorn

    from npconv.cli import serve

    started = []
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, sockets: started.append(self.config.app))
    monkeypatch.setattr(serve, "is_loopback", lambda host: False)  # as for --host 0.0.0.0, without opening it
    assert main(["serve", served.run, "--host", "127.0.0.1", "--port", "0"]) == 0
    err = capsys.readouterr().err
    assert "warning" in err and "anyone who can reach this machine" in err
    assert started and started[0].allowed is None, "any Host name is accepted when serving the network"
    started.clear()
    monkeypatch.undo()
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, sockets: started.append(self.config.app))
    assert main(["serve", served.run, "--port", "0"]) == 0
    assert "warning" not in capsys.readouterr().err and started[0].allowed == ("127.0.0.1", "localhost", "[::1]")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_stops_it_cleanly(served, signum):
    proc, client = start_server([served.run])
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert err.strip().endswith("npconv serve: stopped") and "Traceback" not in err, err
