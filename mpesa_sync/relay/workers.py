"""``mpesa-sync relay --workers N``: N relay processes on one port.

The parent binds the port with SO_REUSEPORT without listening on it (so a
busy or bad address is a one-line error before anything starts, and port 0
is resolved once), then starts N workers: each is ``mpesa-sync relay`` with
``--worker I/N``, binds the same port with SO_REUSEPORT and listens, and the
kernel spreads new connections over them. Each worker is a whole relay: its
own LISTEN connection, catch-up, pool and fan-out. A client is served by one
worker; a reconnect may land on another, and its Last-Event-ID resumes it
there exactly, since every worker reads the same log.

Only worker 0 writes the stdout lines; the parent passes them on and
remembers the last event, so that a restarted worker 0 carries on after it
(``--since``). A worker that dies is started again, after a pause that
grows while it keeps dying; one that exits with 2 (a bad setting, the same
for every worker) stops the relay with 2. SIGINT and SIGTERM stop every
worker and then the parent, exit 0.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from typing import TextIO

from mpesa_sync.errors import ConfigError
from mpesa_sync.relay.service import listen_socket, netloc

logger = logging.getLogger(__name__)

EXIT_CONFIG = 2
_RESTART_FIRST = 0.5  # seconds before a dead worker is started again; doubles while it keeps dying
_RESTART_MAX = 30.0
_STABLE = 10.0  # a worker that lived this long starts again at once next time
_STOP_GRACE = 10.0


class Workers:
    """The parent of N workers."""

    def __init__(
        self,
        dsn: str,
        http: tuple[str, int],
        count: int,
        worker_args: Sequence[str],
        since: str | None,
        out: TextIO = sys.stdout,
    ) -> None:
        self.dsn = dsn
        self.count = count
        self.worker_args = list(worker_args)
        self.out = out
        self._since = since  # for worker 0 (re)starts: where stdout stands
        self._holder = listen_socket(*http, reuse_port=True, listen=False)
        host, port = self._holder.getsockname()[:2]
        self.address = netloc(host, port)
        self._procs: list[subprocess.Popen[str] | None] = [None] * count
        self._started: list[float] = [0.0] * count
        self._delay: list[float] = [_RESTART_FIRST] * count
        self._due: list[float] = [0.0] * count
        self._runs: list[int] = [0] * count
        self._stopping = False
        self._pumps: list[threading.Thread] = []

    def run(self) -> int:
        """Start the workers and keep them running until SIGINT/SIGTERM; the exit code."""
        previous = {
            sig: signal.signal(sig, lambda *_: self._request_stop())
            for sig in (signal.SIGINT, signal.SIGTERM)
        }
        try:
            for index in range(self.count):
                self._start(index)
            return self._supervise()
        finally:
            self._stop_all()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self._holder.close()
            for pump in self._pumps:
                pump.join(5)

    def _request_stop(self) -> None:
        self._stopping = True

    def _supervise(self) -> int:
        while not self._stopping:
            now = time.monotonic()
            for index, proc in enumerate(self._procs):
                if proc is None:
                    if now >= self._due[index]:
                        self._start(index)
                    continue
                code = proc.poll()
                if code is None or self._stopping:
                    continue
                self._procs[index] = None
                if code == EXIT_CONFIG and self._runs[index] == 1:
                    return EXIT_CONFIG  # a bad setting at first start; the worker said why
                if code == EXIT_CONFIG and index == 0:
                    self._since = None  # its stdout position went bad meanwhile: from the newest
                lived = now - self._started[index]
                if lived >= _STABLE:
                    self._delay[index] = _RESTART_FIRST
                delay = self._delay[index]
                self._delay[index] = min(_RESTART_MAX, delay * 2)
                self._due[index] = now + delay
                how = f"signal {-code}" if code < 0 else f"exit {code}"
                logger.warning(
                    "worker %d/%d exited (%s); starting it again in %.1f s",
                    index,
                    self.count,
                    how,
                    delay,
                    extra={"action": "relay_worker_exited"},
                )
            time.sleep(0.1)  # supervision tick; workers are processes, not events to await
        return 0

    def _start(self, index: int) -> None:
        args = [
            sys.executable,
            "-m",
            "mpesa_sync",
            "relay",
            "--http",
            self.address,
            "--worker",
            f"{index}/{self.count}",
            *self.worker_args,
        ]
        if index == 0 and self._since is not None:
            args += ["--since", self._since]
        proc = subprocess.Popen(
            args,
            stdout=subprocess.PIPE if index == 0 else subprocess.DEVNULL,
            text=True,
            bufsize=1,
            # The DSN goes in the environment, never on a command line.
            env={**os.environ, "MPESA_SYNC_DSN": self.dsn},
        )
        self._procs[index] = proc
        self._runs[index] += 1
        self._started[index] = time.monotonic()
        logger.info(
            "worker %d/%d started (pid %d)",
            index,
            self.count,
            proc.pid,
            extra={"action": "relay_worker_started"},
        )
        if index == 0:
            pump = threading.Thread(target=self._pass_on, args=(proc,), daemon=True)
            pump.start()
            self._pumps.append(pump)

    def _pass_on(self, proc: subprocess.Popen[str]) -> None:
        """Worker 0's stdout lines to ours, remembering where they stand."""
        assert proc.stdout is not None
        for line in proc.stdout:
            try:
                self.out.write(line)
                self.out.flush()
            except BrokenPipeError:
                self._request_stop()
                return
            self._since = _position_after(line) or self._since

    def _stop_all(self) -> None:
        running = [p for p in self._procs if p is not None and p.poll() is None]
        for proc in running:
            proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + _STOP_GRACE
        for proc in running:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _position_after(line: str) -> str | None:
    """The position a stdout line leaves its reader at, as --since takes it."""
    try:
        item = json.loads(line)
    except ValueError:
        return None
    if item.get("reset"):
        return f"{item['generation']}:{item['newest_event_id']}"
    event_id = item.get("event_id")
    return str(event_id) if isinstance(event_id, int) else None


def parse_worker(text: str) -> tuple[int, int]:
    """``I/N`` as given to a worker; ConfigError otherwise."""
    index, sep, count = text.partition("/")
    if not (sep and index.isdigit() and count.isdigit() and int(index) < int(count)):
        raise ConfigError(f"--worker {text[:20]!r} is not I/N")
    return int(index), int(count)
