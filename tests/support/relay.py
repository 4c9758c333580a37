"""The relay as tests drive it: a real `mpesa-sync relay` process, an SSE
reader, and the status changes and events they check it against.

Every wait has a deadline; output is read by threads into queues, never
waited for with sleeps.
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import re
import resource
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx

from mpesa_sync.relay.app import RelayApp
from mpesa_sync.relay.listener import Relay
from mpesa_sync.relay.service import listen_socket
from tests.support.database import Database

EVENT_FIELDS = {"event_id", "bar_id", "mpesa_enabled", "source", "at"}


@asynccontextmanager
async def serving(relay: Relay, dsn: str, **app_options: Any) -> AsyncIterator[str]:
    """The relay's HTTP app on a free port, in this event loop; yields its
    base URL once it is listening, and stops it on exit."""
    sock = listen_socket("127.0.0.1", 0)
    app = RelayApp(relay, dsn, **app_options)
    await app.start(sock)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        await asyncio.wait_for(app.close(), 20)
        sock.close()


class RelayProcess:
    """`mpesa-sync relay` in a subprocess; its output lines land in queues."""

    def __init__(self, dsn: str, *args: str, nofile: tuple[int, int] | None = None) -> None:
        """``nofile``: the (soft, hard) open-file limit the relay starts with."""

        def limit() -> None:
            if nofile is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, nofile)

        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mpesa_sync", "relay", "--dsn", dsn, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            preexec_fn=limit if nofile is not None else None,
        )
        self.stdout: queue.Queue[str] = queue.Queue()
        self.stderr: queue.Queue[str] = queue.Queue()
        self.log: list[str] = []
        self._pumps = [
            threading.Thread(target=_pump, args=(stream, sink), daemon=True)
            for stream, sink in ((self.proc.stdout, self.stdout), (self.proc.stderr, self.stderr))
        ]
        for pump in self._pumps:
            pump.start()

    def __enter__(self) -> RelayProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for pump in self._pumps:
            pump.join(10)
        for stream in (self.proc.stdout, self.proc.stderr):
            assert stream is not None
            stream.close()

    def wait_log(self, pattern: str, timeout: float = 30) -> re.Match[str]:
        """The first stderr line (not seen before) matching ``pattern``."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            try:
                line = self.stderr.get(timeout=max(0.0, remaining))
            except queue.Empty:
                raise AssertionError(f"no log line matching {pattern!r}; got {self.log}") from None
            self.log.append(line)
            match = re.search(pattern, line)
            if match:
                return match

    def wait_listening(self) -> None:
        self.wait_log(r"listening on mpesa_status")

    def http_url(self) -> str:
        return "http://" + self.wait_log(r"serving http://(\S+)/").group(1)

    def events(self, count: int, timeout: float = 30) -> list[dict[str, Any]]:
        """The next ``count`` JSON lines from stdout."""
        deadline = time.monotonic() + timeout
        got = []
        while len(got) < count:
            try:
                line = self.stdout.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"got {len(got)} of {count} events: {got}") from None
            got.append(json.loads(line))
        return got

    def stop(self, sig: int = signal.SIGTERM) -> str:
        """Signal the relay; assert it exits 0 promptly; return its remaining stderr."""
        self.proc.send_signal(sig)
        code = self.proc.wait(timeout=20)
        for pump in self._pumps:
            pump.join(10)
        rest = []
        while not self.stderr.empty():
            rest.append(self.stderr.get())
        text = "\n".join(self.log + rest)
        assert code == 0, text
        assert "Traceback" not in text
        return text


def _pump(stream: Any, sink: queue.Queue[str]) -> None:
    for line in stream:
        sink.put(line.rstrip("\n"))


class SseReader:
    """An SSE stream read by a thread (its own event loop); events land in a queue.

    Each is a dict: ``id`` (the event id of the frame's ``GENERATION:EVENT_ID``),
    ``generation``, ``data`` (parsed JSON) and, for a named event such as a
    reset, ``event``.
    """

    def __init__(self, url: str, headers: dict[str, str] | None = None) -> None:
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self.opened = threading.Event()
        self.status: int | None = None
        self.headers: httpx.Headers = httpx.Headers()
        self._loop = asyncio.new_event_loop()
        self._task: asyncio.Task[None] | None = None
        self._thread = threading.Thread(target=self._run, args=(url, headers or {}), daemon=True)
        self._thread.start()
        assert self.opened.wait(10), "SSE stream did not open"

    def _run(self, url: str, headers: dict[str, str]) -> None:
        self._task = self._loop.create_task(self._read(url, headers))
        try:
            self._loop.run_until_complete(self._task)
        except asyncio.CancelledError:
            pass
        finally:
            self._loop.close()
            self.opened.set()

    async def _read(self, url: str, headers: dict[str, str]) -> None:
        async with (
            httpx.AsyncClient(timeout=httpx.Timeout(5, read=None)) as client,
            client.stream("GET", url, headers=headers) as response,
        ):
            self.status, self.headers = response.status_code, response.headers
            self.opened.set()
            event: dict[str, Any] = {}
            async for line in response.aiter_lines():
                if line.startswith("id: "):
                    generation, _, event_id = line[4:].rpartition(":")
                    event["id"], event["generation"] = int(event_id), generation or None
                elif line.startswith("event: "):
                    event["event"] = line[7:]
                elif line.startswith("data: "):
                    event["data"] = json.loads(line[6:])
                elif line == "" and event:
                    self.events.put(event)
                    event = {}

    def take(self, count: int, timeout: float = 20) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        got = []
        while len(got) < count:
            try:
                got.append(self.events.get(timeout=max(0.0, deadline - time.monotonic())))
            except queue.Empty:
                raise AssertionError(f"got {len(got)} of {count} SSE events: {got}") from None
        return got

    def close(self) -> None:
        if self._task is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._task.cancel)
        self._thread.join(10)
        assert not self._thread.is_alive()


def new_events(db: Database, after: int) -> list[dict[str, Any]]:
    """status_events after ``after`` as the relay prints them."""
    rows = db.query(
        """SELECT event_id, bar_id::text, mpesa_enabled, source
                       FROM mpesa_sync.status_events WHERE event_id > %s
                       ORDER BY event_id""",
        (after,),
    )
    return rows


def strip_at(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    for event in events:
        assert set(event) == EVENT_FIELDS, event
    return [{k: v for k, v in event.items() if k != "at"} for event in events]


def newest_event_id(db: Database) -> int:
    return db.scalar("SELECT coalesce(max(event_id), 0) FROM mpesa_sync.status_events")


def event_ids_after(db: Database, start: int) -> list[int]:
    """The ids in status_events after ``start``, in order: what a consumer
    that began there must have handed on."""
    rows = db.query(
        "SELECT event_id FROM mpesa_sync.status_events WHERE event_id > %s ORDER BY event_id",
        (start,),
    )
    return [row["event_id"] for row in rows]


def set_active(db: Database, bar: uuid.UUID, active: bool) -> None:
    db.execute("UPDATE mpesa_credentials SET is_active = %s WHERE tenant_id = %s", (active, bar))


def scrape(url: str) -> dict[str, float]:
    """``GET /metrics`` as {sample name: value} (label-less samples only)."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{url}/metrics", timeout=10).text
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if not sample.labels
    }


def log_state(db: Database) -> dict[str, Any]:
    """mpesa_sync.event_log_v1 as a dict (generation as text)."""
    [row] = db.query(
        "SELECT generation::text AS generation, pruned_through, oldest_event_id, newest_event_id "
        "FROM mpesa_sync.event_log_v1"
    )
    return row


def age_events(db: Database, upto: int, days: int = 60) -> None:
    """Make events up to ``upto`` look ``days`` old (behind the triggers' back)."""
    db.execute(
        "UPDATE mpesa_sync.status_events SET at = at - make_interval(days => %s) "
        "WHERE event_id <= %s",
        (days, upto),
    )
