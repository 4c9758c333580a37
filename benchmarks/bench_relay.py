"""The live relay: commit-to-client latency and sustained events/s over SSE.

Three processes, as in production: the relay (`mpesa-sync relay --http`), the
SSE clients (this module run as ``python -m benchmarks.bench_relay client``:
one uvloop process holding every connection as a bare protocol), and the
writer, which also runs the bare comparison on a plain LISTEN connection.

* Latency: the writer toggles one bar at a time (a real change each), paced so
  that each event is fanned out before the next (latency under saturation is
  queueing, which the throughput figure covers), and notes when each commit
  returned. A client's latency for an event is when it read the event minus
  that commit time (CLOCK_MONOTONIC is shared by the processes). Figures are
  p50 and p99 over every (client, event) pair of a run. The bare figure is the
  raw LISTEN/NOTIFY round trip in the same run: pg_notify on one connection
  until a plain listener on another has it.
* The floor: the same latency through a bridge that does nothing but LISTEN
  and write each payload to every socket (``... bench_relay bridge``): what
  the kernel's loopback writes and one Python process cost on this machine,
  whatever the relay does.
* Throughput: the writer commits statements that flip 50 bars each (50 events
  per commit) back to back; the rate is events / (time from the first commit
  to the moment the last client holds the last event). The bare rate is when
  the plain listener had the last one, i.e. what the writer offered.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import re
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psycopg

from benchmarks.common import RUNS, Bench, Result
from mpesa_sync import migrations
from mpesa_sync.relay.events import payload_event_id
from mpesa_sync.resources import resource_dir

ROOT = Path(__file__).resolve().parent.parent
LOAD = """
    INSERT INTO bars (id, name, mpesa_enabled)
    SELECT md5(i::text)::uuid, 'bar ' || i, false FROM generate_series(1, %(n)s) AS i;
    INSERT INTO mpesa_credentials (tenant_id, environment, business_shortcode,
                                   consumer_key_enc, consumer_secret_enc, passkey_enc, is_active)
    SELECT md5(i::text)::uuid, 'sandbox', '174379', 'k', 's', 'p', false
    FROM generate_series(1, %(n)s) AS i;
"""
TOGGLE = "UPDATE mpesa_credentials SET is_active = NOT is_active WHERE tenant_id = ANY(%s)"
BATCH = 50  # events per commit in the throughput run
# Seconds between latency writes: one event at a time, each fanned out before
# the next arrives (latency under saturation would be queueing, which the
# throughput figure covers).
PACE = 0.05
# An SSE id is GENERATION:EVENT_ID (the bridge below sends a bare EVENT_ID).
_ID = re.compile(rb"(?m)^id: (?:[0-9a-f-]+:)?(\d+)\n")


def run(bench: Bench) -> list[Result]:
    many = bench.size(1000, 100)
    latency_events = bench.size(100, 40)
    throughput_events = bench.size(10_000, 2_000)
    results: list[Result] = []
    with bench.database() as dsn:
        bars = prepare(dsn, max(BATCH * 4, latency_events))
        with RawListener(dsn) as raw:
            with RelayUnderTest(dsn) as relay:
                for clients in (1, many):
                    with Clients(relay.url, clients) as sse:
                        results += latency(dsn, bars, latency_events, sse, raw, clients)
                        if clients == many:
                            results.append(throughput(dsn, bars, throughput_events, sse, raw))
            # The floor on this machine: a bridge that only writes each payload
            # to every socket (no catch-up read, no HTTP framework).
            with Bridge(dsn) as bridge, Clients(bridge.url, many) as sse:
                floor = latency(dsn, bars, latency_events, sse, raw, many)
                for result in floor:
                    result.name = result.name.replace(
                        "SSE commit-to-client", "floor: bare NOTIFY-to-socket bridge,"
                    )
                    result.absolute_target = None
                    result.note = (
                        "no catch-up, no HTTP framework: what the kernel and one "
                        "Python process cost here; bare: raw LISTEN/NOTIFY round trip"
                    )
                results += floor
    return results


def latency(
    dsn: str, bars: list[str], events: int, sse: Clients, raw: RawListener, clients: int
) -> list[Result]:
    """p50 and p99 commit-to-client latency, RUNS runs of ``events`` paced commits."""
    p50s, p99s, raw50s, raw99s = [], [], [], []
    for _ in range(RUNS):
        sse.start(keep_times=True)
        commits = write_paced(dsn, bars, events)
        ours, bare = sse.latency(commits), raw.round_trip(dsn, events)
        p50s.append(ours["p50"])
        p99s.append(ours["p99"])
        raw50s.append(bare["p50"])
        raw99s.append(bare["p99"])
    note = (
        f"{events} events per run, one commit each, from the commit's return; "
        "bare: raw LISTEN/NOTIFY round trip"
    )
    name = f"SSE commit-to-client latency %s, {clients:,} client(s)"
    return [
        Result(
            name=name % "p50", ours=p50s, bare=raw50s, unit="ms", absolute_target=5.0, note=note
        ),
        Result(
            name=name % "p99", ours=p99s, bare=raw99s, unit="ms", absolute_target=50.0, note=note
        ),
    ]


def throughput(dsn: str, bars: list[str], events: int, sse: Clients, raw: RawListener) -> Result:
    """Events/s until every client holds every event, RUNS bursts of ``events``."""
    rates, raw_rates = [], []
    for _ in range(RUNS):
        sse.start(keep_times=False)
        start, commits = write_burst(dsn, bars, events)
        rates.append(events / (sse.all_received(commits) - start))
        raw_rates.append(events / (raw.all_received(commits) - start))
    return Result(
        name=f"SSE sustained throughput, {sse.count:,} clients",
        ours=rates,
        bare=raw_rates,
        unit="events/s",
        absolute_target=2000.0,
        higher_is_better=True,
        note=f"{events:,} events, {BATCH} per commit, every client gets every event; "
        "bare: plain LISTEN (what the writer offered)",
    )


# -- the database and the writer ------------------------------------------------------


def prepare(dsn: str, bars: int) -> list[str]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(resource_dir("sql").joinpath("host_example.sql").read_text())
        conn.execute(LOAD.replace("%(n)s", str(int(bars))))
    migrations.migrate(dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
        return [str(r[0]) for r in conn.execute("SELECT id FROM bars ORDER BY id")]


def write_paced(dsn: str, bars: list[str], count: int) -> dict[int, float]:
    """Toggle ``count`` bars one commit at a time; event id -> commit time."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        before = newest(conn)
        times = []
        for i in range(count):
            conn.execute(TOGGLE, ([bars[i % len(bars)]],))
            times.append(time.monotonic())
            time.sleep(PACE)
        return dict(zip(event_ids(conn, before), times, strict=True))


def write_burst(dsn: str, bars: list[str], count: int) -> tuple[float, dict[int, float]]:
    """``count`` events, BATCH per commit, back to back; (start, id -> commit time)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        before = newest(conn)
        times = []
        start = time.monotonic()
        for i in range(count // BATCH):
            group = [bars[(i * BATCH + j) % len(bars)] for j in range(BATCH)]
            conn.execute(TOGGLE, (group,))
            times.extend([time.monotonic()] * BATCH)
        return start, dict(zip(event_ids(conn, before), times, strict=True))


def newest(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT coalesce(max(event_id), 0) FROM mpesa_sync.status_events")
    return int(row.fetchone()[0])  # type: ignore[index]


def event_ids(conn: psycopg.Connection[Any], after: int) -> list[int]:
    rows = conn.execute(
        "SELECT event_id FROM mpesa_sync.status_events WHERE event_id > %s ORDER BY event_id",
        (after,),
    )
    return [r[0] for r in rows]


def _span(commits: dict[int, float]) -> dict[str, int]:
    ids = sorted(commits)
    if ids != list(range(ids[0], ids[-1] + 1)):
        raise RuntimeError("event ids of one run are not contiguous")
    return {"first": ids[0], "last": ids[-1], "count": len(ids)}


def percentiles(latencies_ms: list[float]) -> dict[str, float]:
    ordered = sorted(latencies_ms)
    cuts = statistics.quantiles(ordered, n=100, method="inclusive")
    return {"p50": statistics.median(ordered), "p99": cuts[98], "max": ordered[-1]}


# -- the relay under test -------------------------------------------------------------


class RelayUnderTest:
    """`mpesa-sync relay --http 127.0.0.1:0` in its own process."""

    def __init__(self, dsn: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mpesa_sync", "relay", "--dsn", dsn, "--http", "127.0.0.1:0"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        self.url = ""
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            match = re.search(r"serving (http://\S+)/", line)
            if match:
                self.url = match.group(1)
            if "listening on mpesa_status" in line:
                break
        if not self.url:
            raise RuntimeError("the relay did not start")
        # Keep draining its log so that it never blocks on a full pipe.
        threading.Thread(target=self.proc.stderr.read, daemon=True).start()

    def __enter__(self) -> RelayUnderTest:
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        self.proc.wait(30)


class RawListener:
    """The bare work: one plain LISTEN connection, in a thread of the writer's process."""

    def __init__(self, dsn: str) -> None:
        self.received: dict[int, float] = {}
        self.pings: dict[int, float] = {}
        self._next_ping = 0
        self._stop = threading.Event()
        self._conn = psycopg.connect(dsn, autocommit=True)
        self._conn.execute("LISTEN mpesa_status")
        self._conn.execute("LISTEN mpesa_bench_ping")
        self._thread = threading.Thread(target=self._listen, daemon=True)
        self._thread.start()

    def _listen(self) -> None:
        while not self._stop.is_set():
            for note in self._conn.notifies(timeout=0.5):
                now = time.monotonic()
                if note.channel == "mpesa_bench_ping":
                    self.pings[int(note.payload)] = now
                elif (event_id := payload_event_id(note.payload)) is not None:
                    self.received[event_id] = now

    def _wait(self, ids: list[int], timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while any(i not in self.received for i in ids):
            if time.monotonic() > deadline:
                raise RuntimeError("the plain listener missed notifications")
            time.sleep(0.01)

    def round_trip(self, dsn: str, count: int) -> dict[str, float]:
        """The raw LISTEN/NOTIFY round trip: pg_notify on another connection
        until this listener has it, ``count`` times, paced like the events."""
        sent: dict[int, float] = {}
        with psycopg.connect(dsn, autocommit=True) as conn:
            for _ in range(count):
                key, self._next_ping = self._next_ping, self._next_ping + 1
                sent[key] = time.monotonic()
                conn.execute("SELECT pg_notify('mpesa_bench_ping', %s)", (str(key),))
                time.sleep(PACE)
        deadline = time.monotonic() + 60
        while any(k not in self.pings for k in sent):
            if time.monotonic() > deadline:
                raise RuntimeError("the plain listener missed pings")
            time.sleep(0.01)
        return percentiles([(self.pings[k] - t) * 1000 for k, t in sent.items()])

    def all_received(self, commits: dict[int, float]) -> float:
        self._wait(list(commits))
        return max(self.received[i] for i in commits)

    def __enter__(self) -> RawListener:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self._conn.close()


class Bridge:
    """The floor: ``python -m benchmarks.bench_relay bridge DSN`` in its own process."""

    def __init__(self, dsn: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.bench_relay", "bridge", dsn],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        assert self.proc.stdout is not None
        self.url = json.loads(self.proc.stdout.readline())["url"]

    def __enter__(self) -> Bridge:
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()  # its signal to stop
        self.proc.wait(30)


class Clients:
    """The SSE client process; commands and answers are JSON lines on its stdin/stdout."""

    def __init__(self, url: str, count: int) -> None:
        self.count = count
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.bench_relay", "client", url, str(count)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        if self._read().get("ready") != count:
            raise RuntimeError("the SSE clients did not connect")

    def _ask(self, command: dict[str, Any]) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()
        answer = self._read()
        if answer.get("missing"):
            raise RuntimeError(f"SSE clients missed events: {answer}")
        return answer

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the SSE client process died")
        return json.loads(line)

    def start(self, *, keep_times: bool) -> None:
        """Forget what was received; keep every (id, time) only for latency runs."""
        self._ask({"cmd": "start", "keep": keep_times})

    def latency(self, commits: dict[int, float]) -> dict[str, float]:
        return self._ask(
            {"cmd": "latency", **_span(commits), "commits": {str(k): v for k, v in commits.items()}}
        )

    def all_received(self, commits: dict[int, float]) -> float:
        return float(self._ask({"cmd": "last", **_span(commits)})["at"])

    def __enter__(self) -> Clients:
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(30)


# -- the client process ----------------------------------------------------------------


class _Stream(asyncio.Protocol):
    """One SSE connection as a bare protocol (no stream reader: the client
    process must cost far less per message than the relay, or it would be
    what is measured).

    It counts events and keeps the first and last id and when the last was
    read; with ``keep`` it also keeps every (id, time) for latencies.
    """

    def __init__(self, request: bytes, opened: list[int], total: int, ready: asyncio.Event) -> None:
        self._request, self._opened, self._total, self._ready = request, opened, total, ready
        self._head = True
        self._tail = b""
        self.done = asyncio.Event()
        self.reset(keep=False)

    def reset(self, *, keep: bool) -> None:
        self.keep = keep
        self.count, self.first, self.last, self.last_at = 0, 0, 0, 0.0
        self.ids: list[int] = []
        self.times: list[float] = []
        self.target = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.write(self._request)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        now = time.monotonic()
        buf = self._tail + data
        if self._head:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                self._tail = buf
                return
            if b" 200 " not in buf[: buf.find(b"\r\n")]:
                raise RuntimeError(buf.decode(errors="replace"))
            self._head = False
            buf = buf[end + 4 :]
            self._opened[0] += 1
            if self._opened[0] == self._total:
                self._ready.set()
        cut = buf.rfind(b"\n") + 1
        self._tail = buf[cut:]
        found = buf.count(b"id: ", 0, cut)  # "data:" lines hold '"event_id": ', not 'id: '
        if not found:
            return
        if self.keep:
            ids = [int(i) for i in _ID.findall(buf, 0, cut)]
            self.ids.extend(ids)
            self.times.extend([now] * len(ids))
        if self.count == 0:
            self.first = _event_id(buf, buf.find(b"id: ") + 4)
        self.last = _event_id(buf, buf.rfind(b"id: ", 0, cut) + 4)
        self.count += found
        self.last_at = now
        if self.target and self.last >= self.target:
            self.done.set()

    async def wait_for(self, last: int, deadline: float) -> None:
        if self.last >= last:
            return
        self.target = last
        self.done.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.done.wait(), max(0.0, deadline - time.monotonic()))


def _event_id(buf: bytes, start: int) -> int:
    """The event id of the SSE id that starts at ``start`` (after any generation)."""
    end = buf.index(b"\n", start)
    colon = buf.rfind(b":", start, end)
    return int(buf[start if colon < 0 else colon + 1 : end])


def _same(stream: _Stream) -> _Stream:
    return stream


async def _client_main(url: str, count: int) -> None:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    loop = asyncio.get_running_loop()
    request = (
        f"GET /events HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n\r\n"
    ).encode()
    ready, opened = asyncio.Event(), [0]
    streams: list[_Stream] = []
    for _ in range(count):
        stream = _Stream(request, opened, count, ready)
        await loop.create_connection(functools.partial(_same, stream), host, int(port))
        streams.append(stream)
    await asyncio.wait_for(ready.wait(), 120)
    print(json.dumps({"ready": count}), flush=True)
    while line := await asyncio.to_thread(sys.stdin.readline):
        command = json.loads(line)
        if command["cmd"] == "start":
            for stream in streams:
                stream.reset(keep=command["keep"])
            print(json.dumps({"started": True}), flush=True)
            continue
        first, last, total = command["first"], command["last"], command["count"]
        deadline = time.monotonic() + 120
        await asyncio.gather(*(s.wait_for(last, deadline) for s in streams))
        # Every event, once: the right count between the right first and last.
        missing = sum((s.first, s.last, s.count) != (first, last, total) for s in streams)
        answer: dict[str, Any] = {"missing": missing, "at": max(s.last_at for s in streams)}
        if command["cmd"] == "latency" and not missing:
            commits = {int(k): v for k, v in command["commits"].items()}
            expected = sorted(commits)
            latencies: list[float] = []
            for stream in streams:
                if stream.ids != expected:  # and in order
                    answer["missing"] += 1
                latencies.extend(
                    (t - commits[i]) * 1000 for i, t in zip(stream.ids, stream.times, strict=True)
                )
            answer.update(percentiles(latencies))
        print(json.dumps(answer), flush=True)


class _BridgeClient(asyncio.Protocol):
    def __init__(self, clients: list[asyncio.Transport]) -> None:
        self._clients = clients
        self._buf = b""
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._buf += data
        if self._transport is not None and b"\r\n\r\n" in self._buf:
            self._transport.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\n")
            self._clients.append(self._transport)
            self._transport = None

    def connection_lost(self, exc: Exception | None) -> None:
        pass


async def _bridge_main(dsn: str) -> None:
    clients: list[asyncio.Transport] = []
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _BridgeClient(clients), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
    await conn.execute("LISTEN mpesa_status")
    print(json.dumps({"url": f"http://127.0.0.1:{port}"}), flush=True)

    async def relay() -> None:
        async for note in conn.notifies():
            frame = b"id: %d\ndata: %s\n\n" % (
                payload_event_id(note.payload) or 0,
                note.payload.encode(),
            )
            for transport in clients:
                transport.write(frame)

    task = asyncio.create_task(relay())
    await asyncio.to_thread(sys.stdin.read)  # until the benchmark closes our stdin
    task.cancel()
    await conn.close()
    server.close()


if __name__ == "__main__":
    from mpesa_sync.relay.service import loop_factory

    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        if sys.argv[1] == "client":
            runner.run(_client_main(sys.argv[2], int(sys.argv[3])))
        else:
            runner.run(_bridge_main(sys.argv[2]))
