"""The command line as a shell sees it: in this process, in a child, on a terminal."""

from __future__ import annotations

import logging
import os
import pty
import select
import subprocess
import sys
import time
from dataclasses import dataclass

from click.testing import CliRunner

from mpesa_sync.cli import main


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str


def run_module(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """``python -m mpesa_sync ARGS`` in a child process, to its end: what a shell
    sees on real stdout and stderr (no traceback can hide in a test runner)."""
    return subprocess.run(
        [sys.executable, "-m", "mpesa_sync", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
    )


def run_cli(*args: str, env: dict[str, str | None] | None = None) -> CliResult:
    """Run ``mpesa_sync.cli.main`` in this process, as a shell would (exit code,
    stdout, stderr), and leave the logging set-up as it was."""
    handlers, level = logging.root.handlers[:], logging.root.level
    with CliRunner().isolation(env=env) as (out, err, _):
        try:
            main(list(args))
        except SystemExit as exc:
            code = exc.code
        stdout, stderr = out.getvalue().decode(), err.getvalue().decode()
    logging.root.handlers[:], logging.root.level = handlers, level
    return CliResult(code if isinstance(code, int) else 0, stdout, stderr)


def assert_one_line_error(stderr: str, needle: str) -> None:
    """An error as the CLI reports every one: a single prefixed line, no traceback."""
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("mpesa-sync: error: "), stderr
    assert needle in lines[0], stderr


def run_on_terminal(
    args: list[str],
    child_env: dict[str, str] | None = None,
    answers: list[tuple[str, str]] | None = None,
    timeout: float = 60,
) -> tuple[int, str]:
    """``python -m mpesa_sync ARGS`` on a pseudo-terminal (stdin, stdout and
    stderr), answering each ``(prompt, text)`` when the prompt appears;
    returns the exit code and everything the terminal showed."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mpesa_sync", *args],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=child_env,
    )
    os.close(slave)
    screen, pending = b"", list(answers or [])
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if pending and screen.count(pending[0][0].encode() + b":") == 1:
                os.write(master, pending.pop(0)[1].encode() + b"\n")
            if not select.select([master], [], [], 0.1)[0]:
                continue
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            screen += chunk
        else:
            raise AssertionError(f"the command did not finish: {screen!r}")
        return proc.wait(timeout=10), screen.decode(errors="replace")
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
