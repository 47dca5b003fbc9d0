"""`serve --workers N`: N worker processes on one port, crashed ones restarted, signals relayed.

Each worker is started with its slot number (``--worker 0`` .. ``N-1``, kept across
restarts): its log lines carry it, and worker 0 alone counts the reloads that every
worker performs, so that one reload is counted once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from prometheus_client import multiprocess

from gateway.adapters.metrics import MULTIPROC_ENV

log = logging.getLogger("gateway.supervisor")

RESTART_DELAY = 1.0
MAX_RESTART_DELAY = 30.0
# A worker that lived this long before dying starts the backoff over.
HEALTHY_RUN = 60.0
# Beyond the workers' own grace period: time to close pools and exit.
EXIT_MARGIN = 5.0
# Relayed to every worker: SIGHUP reloads (and reopens audit.output), SIGUSR1 only reopens.
# A worker is started with them blocked and unblocks them once its handlers are installed:
# relayed to a worker still starting, they would otherwise end it.
HELD_SIGNALS = frozenset({signal.SIGHUP, signal.SIGUSR1})


class Supervisor:
    """Keeps ``workers`` processes running until told to stop, then drains them."""

    def __init__(self, config: Path, workers: int, grace: float) -> None:
        self.command = [sys.executable, "-m", "gateway", "serve", "--config", str(config),
                        "--workers", str(workers), "--worker"]  # then the slot number
        self.workers = workers
        self.grace = grace
        self.stopping = asyncio.Event()
        self.processes: dict[int, asyncio.subprocess.Process] = {}
        self._starting = asyncio.Lock()
        self.failed = False

    async def run(self) -> int:
        with _metrics_directory() as directory:
            self.env = {**os.environ, MULTIPROC_ENV: directory}
            self.metrics_dir = directory
            return await self._run()

    async def _run(self) -> int:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.stopping.set)
        for relayed in HELD_SIGNALS:
            loop.add_signal_handler(relayed, self._relay, relayed)
        tasks = [asyncio.create_task(self._keep(slot)) for slot in range(self.workers)]
        await self.stopping.wait()
        log.info("stopping %d worker(s)", len(self.processes))
        self._relay(signal.SIGTERM)
        try:
            async with asyncio.timeout(self.grace + EXIT_MARGIN):
                await asyncio.gather(*tasks)
        except TimeoutError:
            log.error("workers still running after %gs: killing them", self.grace)
            self._relay(signal.SIGKILL)
            self.failed = True
            await asyncio.gather(*tasks, return_exceptions=True)
        return 1 if self.failed else 0

    async def _start(self, slot: int) -> asyncio.subprocess.Process:
        # The child inherits this thread's signal mask across exec. One start at a time, so
        # that one start's unblocking cannot fall inside another's. A signal that arrives
        # meanwhile waits, and is relayed once unblocked.
        async with self._starting:
            signal.pthread_sigmask(signal.SIG_BLOCK, HELD_SIGNALS)
            try:
                return await asyncio.create_subprocess_exec(*self.command, str(slot),
                                                            env=self.env)
            finally:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, HELD_SIGNALS)

    def _relay(self, signum: int) -> None:
        for process in self.processes.values():
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signum)

    async def _keep(self, slot: int) -> None:
        """Run one worker slot; restart its process with backoff whenever it dies early."""
        delay = RESTART_DELAY
        while not self.stopping.is_set():
            started = time.monotonic()
            process = await self._start(slot)
            self.processes[slot] = process
            log.info("worker %d started (pid %d)", slot, process.pid)
            code = await process.wait()
            del self.processes[slot]
            # Its live gauges (in-flight requests) must not count in the sum any more.
            multiprocess.mark_process_dead(  # type: ignore[no-untyped-call]  # untyped upstream
                process.pid, self.metrics_dir)
            if self.stopping.is_set():
                # A worker handles SIGTERM itself before it listens; one that the relayed
                # SIGTERM killed outright was still starting, so it had no request to drain.
                if code == -signal.SIGTERM:
                    log.info("worker %d stopped while starting", slot)
                elif code != 0:
                    log.error("worker %d exited with %d while stopping", slot, code)
                    self.failed = True
                return
            log.error("worker %d (pid %d) died with %d: restarting in %gs", slot, process.pid,
                      code, delay)
            if time.monotonic() - started >= HEALTHY_RUN:
                delay = RESTART_DELAY
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self.stopping.wait()
            delay = min(delay * 2, MAX_RESTART_DELAY)


@contextlib.contextmanager
def _metrics_directory() -> Iterator[str]:
    """The workers' shared metrics directory: the operator's (wiped) or a temporary one."""
    given = os.environ.get(MULTIPROC_ENV)
    if given:
        # Files of an earlier run would add old counts to this one.
        Path(given).mkdir(parents=True, exist_ok=True)
        for stale in Path(given).glob("*.db"):
            stale.unlink()
        yield given
        return
    with tempfile.TemporaryDirectory(prefix="pkjwt-metrics-") as directory:
        yield directory


def supervise(config: Path, workers: int, grace: float) -> int:
    """Run the supervisor until SIGTERM/SIGINT; 0 when every worker drained cleanly."""
    return asyncio.run(Supervisor(config, workers, grace).run())
