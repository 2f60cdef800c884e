"""A real ``npconv serve`` in a child process, for the benchmarks that send it requests."""

import subprocess
import sys


def start_server(*paths):
    """``npconv serve PATHS --port 0`` (a free loopback port); returns ``(process, host, port)`` once it listens."""
    proc = subprocess.Popen([sys.executable, "-m", "npconv", "serve", *paths, "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if "http://" not in line:
        proc.kill()
        sys.exit(f"npconv serve did not start: {line} {proc.stderr.read()}")
    host, port = line.split("http://")[1].split("/")[0].rsplit(":", 1)
    return proc, host, int(port)
