"""Our own redis-server processes for tests: loopback, free ports, restartable, always killed.

Outside CI a missing ``redis-server``/``redis-cli`` skips with the reason; with CI=true it
fails, since CI must have them.
"""

from __future__ import annotations

import functools
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.ports import PORT_LIMIT, free_port

IN_CI = os.environ.get("CI", "").lower() == "true"
SENTINEL_MASTER = "gwmaster"


def unavailable(reason: str) -> None:
    """Skip outside CI (visibly); fail in CI, where Redis must be there."""
    if IN_CI:
        pytest.fail(reason)
    pytest.skip(reason)


def answers_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2) as conn:
            conn.sendall(b"PING\r\n")
            return conn.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def cli(port: int, *args: str) -> str:
    result = subprocess.run(["redis-cli", "-p", str(port), *args], capture_output=True,
                            text=True, timeout=10, check=True)
    return result.stdout


class Server:
    """One redis-server on a loopback port; restartable on the same port."""

    def __init__(self, port: int, args: list[str], workdir: Path) -> None:
        self.port = port
        self.args = args
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start (again) and wait until it answers PING; raises RuntimeError otherwise."""
        log = (self.workdir / "server.log").open("ab")
        with log:
            self.proc = subprocess.Popen(["redis-server", *self.args], cwd=self.workdir,
                                         stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while not answers_ping(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                tail = (self.workdir / "server.log").read_text(errors="replace")[-500:]
                raise RuntimeError(f"redis-server on {self.port} did not start: {tail}")
            time.sleep(0.02)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()  # SIGKILL ends a SIGSTOPped server too
            self.proc.wait(timeout=10)

    def pause(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)


class Servers:
    """Starts servers in a temp dir and owns them: ``stop_all`` kills every one it started."""

    def __init__(self, root: Path) -> None:
        if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
            unavailable("redis-server and redis-cli are not on PATH")
        self.root = root
        self.started: list[Server] = []

    def start(self, *extra: str, sentinel_of: int | None = None) -> Server:
        """A plain server with ``extra`` arguments, or a sentinel watching ``sentinel_of``."""
        failure = "no attempt"
        # The cluster bus listens on port + 10000, which must be a valid port too.
        below = PORT_LIMIT - 10000 if "--cluster-enabled" in extra else PORT_LIMIT
        for _ in range(5):  # a free port can be taken between probe and bind
            port = free_port(below)
            workdir = self.root / str(port)
            workdir.mkdir()
            args: list[str] = []
            if sentinel_of is not None:  # sentinel rewrites its config: a file of its own
                (workdir / "sentinel.conf").write_text(
                    f"sentinel monitor {SENTINEL_MASTER} 127.0.0.1 {sentinel_of} 1\n"
                    f"sentinel down-after-milliseconds {SENTINEL_MASTER} 5000\n")
                args = ["sentinel.conf", "--sentinel"]
            args += ["--port", str(port), "--bind", "127.0.0.1", "--save", "",
                     "--appendonly", "no", "--dir", str(workdir), *extra]
            server = Server(port, args, workdir)
            self.started.append(server)
            try:
                server.start()
            except RuntimeError as exc:
                failure = str(exc)
                continue
            return server
        raise RuntimeError(f"could not start redis-server on a free port: {failure}")

    def start_cluster(self, masters: int = 3) -> list[Server]:
        """``masters`` cluster nodes, no replicas, every slot assigned and the state ok."""
        nodes = [self.start("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                            "--cluster-node-timeout", "5000") for _ in range(masters)]
        subprocess.run(["redis-cli", "--cluster", "create", *(node.address for node in nodes),
                        "--cluster-replicas", "0", "--cluster-yes"],
                       capture_output=True, timeout=30, check=True)
        for node in nodes:
            wait_until(functools.partial(cluster_ok, node.port), f"cluster_state:ok on {node.port}")
        return nodes

    def stop_all(self) -> list[int]:
        """Kill every server; returns the pids still alive afterwards (should be none)."""
        for server in self.started:
            server.kill()
        return [s.proc.pid for s in self.started if s.proc is not None and s.proc.poll() is None]


def wait_until(check: Callable[[], bool], what: str, seconds: float = 20) -> None:
    """Poll ``check`` until true; raises RuntimeError after ``seconds``."""
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.05)


def cluster_ok(port: int) -> bool:
    return "cluster_state:ok" in cli(port, "cluster", "info")
