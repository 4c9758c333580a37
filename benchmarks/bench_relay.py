"""The live relay at platform scale, each shape beside its floor in the same run.

Processes, as in production: the relay (``mpesa-sync relay --http``), the SSE
clients (this module run as ``python -m benchmarks.bench_relay client``: one
uvloop process holding every connection as a bare protocol), and the writer
(this process), which also runs a plain LISTEN connection for the raw
round trip.

Shapes (sizes from BENCH_RELAY_CLIENTS, BENCH_RELAY_IDLE and
BENCH_RELAY_STORM, comma-separated client counts):

* **Platform**: clients spread over bars, PER_BAR to a bar
  (``/events?bar_id=``), events to random bars. p50 / p99 commit-to-client
  latency over every (client, event) pair. Target: ≤ 5 ms and ≤ 50 ms.
* **Broadcast**: every client on ``/events`` gets every event (the worst
  case). Target: ≤ 1.3× the floor at p50 and ≤ 1.5× at p99.
* **Idle**: RSS per open idle stream, (RSS with N streams - RSS before) / N.
  Target: ≤ 4 KiB.
* **Reconnect storm**: N clients live, a writer committing throughout, the
  relay stopped and started again on the same port; every client reconnects
  with its Last-Event-ID. The figure is the time from the new relay's
  "listening" line until every client holds every event of its bar, checked
  exactly once and in order. Target: ≤ 30 s.

The floor is a bridge (``python -m benchmarks.bench_relay bridge``) that
LISTENs and writes each payload to its bar's sockets or to every socket, with
no catch-up read, no positions and no HTTP framework: what the kernel's
loopback writes and one Python process cost on this machine. Each shape runs
against the relay and against the bridge with the same client process.

Latency: the writer toggles one bar at a time (a real change each), paced so
that each fan-out ends before the next event (latency under saturation is
queueing), and notes when each commit returned; a client's latency is when it
read the event minus that time (CLOCK_MONOTONIC is shared by the processes).

The client process is not the bottleneck: its CPU time over each run is
reported in the notes (well under one core where the relay's is at one), and
the same client process reads the floor bridge's faster stream.

Clients are spread over source addresses 127.0.0.2, 127.0.0.3, ... (one
loopback address gives about 28k ports), and the benchmark raises
RLIMIT_NOFILE for itself and its children (as root, past the hard limit).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import random
import re
import resource
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg

from benchmarks.common import RUNS, Bench, Result
from mpesa_sync import migrations
from mpesa_sync.resources import resource_dir

ROOT = Path(__file__).resolve().parent.parent
# Where the relay under test is run from: BENCH_RELAY_ROOT=DIR runs the
# mpesa_sync package found there (an older checkout, for before/after figures).
RELAY_ROOT = Path(os.environ.get("BENCH_RELAY_ROOT", ROOT))
LOAD = """
    INSERT INTO bars (id, name, mpesa_enabled)
    SELECT md5(i::text)::uuid, 'bar ' || i, false FROM generate_series(1, %(n)s) AS i;
    INSERT INTO mpesa_credentials (tenant_id, environment, business_shortcode,
                                   consumer_key_enc, consumer_secret_enc, passkey_enc, is_active)
    SELECT md5(i::text)::uuid, 'sandbox', '174379', 'k', 's', 'p', false
    FROM generate_series(1, %(n)s) AS i;
"""
TOGGLE = "UPDATE mpesa_credentials SET is_active = NOT is_active WHERE tenant_id = ANY(%s)"
PER_BAR = 50  # platform shape: customers watching one bar at once
PORTS_PER_ADDRESS = 20_000  # client source addresses 127.0.0.2, .3, ...
NOFILE = 200_000
# An SSE id is GENERATION:EVENT_ID (the bridge sends a bare EVENT_ID).
_ID = re.compile(rb"(?m)^id: (?:[0-9a-f-]+:)?(\d+)\n")
_ID_TEXT = re.compile(rb"(?m)^id: ([0-9a-f:-]+)\n")


def sizes(name: str, default: str) -> list[int]:
    return [int(s) for s in os.environ.get(name, default).split(",") if s.strip()]


def run(bench: Bench) -> list[Result]:
    raise_nofile()
    small = bench.scale == "small"
    clients = sizes("BENCH_RELAY_CLIENTS", "200,1000" if small else "1000,10000")
    idle = sizes("BENCH_RELAY_IDLE", "2000" if small else "10000,50000")
    storm = sizes("BENCH_RELAY_STORM", "1000" if small else "10000")
    bars_needed = max([*clients, *idle, *storm, PER_BAR]) // PER_BAR + 1
    results: list[Result] = []
    workers = int(os.environ.get("BENCH_RELAY_WORKERS", "2"))
    with bench.database() as dsn:
        bars = prepare(dsn, bars_needed)
        with RawListener(dsn) as raw:
            for n in clients:
                results += shape(
                    f"platform shape, {n:,} clients",
                    lambda n=n: latency_pair(dsn, bars, n, per_bar=True, raw=raw, small=small),
                )
            for n in clients:
                results += shape(
                    f"broadcast, {n:,} clients",
                    lambda n=n: latency_pair(dsn, bars, n, per_bar=False, raw=raw, small=small),
                )
        for n in idle:
            results += shape(
                f"idle RSS, {n:,} streams", lambda n=n: [idle_rss(dsn, bars, n)], streams=n
            )
        for n in storm:
            results += shape(
                f"reconnect storm, {n:,} clients",
                lambda n=n: [reconnect_storm(dsn, bars, n)],
                streams=n,
            )
        if workers > 1:
            n = max(clients or [1000])
            results += shape(
                f"--workers {workers} balance, {n:,} streams",
                lambda: [worker_balance(dsn, bars, n, workers)],
            )
    return results


def shape(name: str, measure: Callable[[], list[Result]], streams: int = 0) -> list[Result]:
    """A shape's rows, printed as they come; a shape that fails is a row that says why."""
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if streams + 200 > soft:
            raise RuntimeError(
                f"{streams:,} streams need more open files than the limit here allows "
                f"(soft {soft:,}, hard {hard:,}; raising the hard limit needs CAP_SYS_RESOURCE)"
            )
        results = measure()
    except Exception as exc:  # one shape failing must not lose the others' figures
        results = [
            Result(
                name=f"relay {name}: FAILED",
                ours=[float("inf")],  # no target: the row says it failed, the note why
                note=f"{type(exc).__name__}: {str(exc)[:300]}",
            )
        ]
    for result in results:
        print(f"  {result.name}: {result.ours} vs {result.bare} ({result.note})", file=sys.stderr)
    return results


# -- shapes ------------------------------------------------------------------------------


def latency_pair(
    dsn: str, bars: list[str], n: int, *, per_bar: bool, raw: RawListener, small: bool
) -> list[Result]:
    """p50/p99 through the relay and through the floor bridge, RUNS runs each."""
    bar_count = max(1, n // PER_BAR)
    watched = bars[:bar_count]
    # Broadcast to many clients: a fan-out takes long, so pace further apart.
    pace = 0.05 if per_bar or n <= 1000 else 0.5
    events = 40 if small or (not per_bar and n > 1000) else 100
    measured: dict[str, dict[str, list[float]]] = {}
    cpu: dict[str, list[float]] = {}
    for kind in ("relay", "bridge"):
        server = RelayUnderTest(dsn) if kind == "relay" else Bridge(dsn)
        with server, Clients(server.url, n, watched if per_bar else None) as sse:
            samples: dict[str, list[float]] = {"p50": [], "p99": []}
            cpu[kind] = []
            for _ in range(RUNS):
                sse.start(keep_times=True)
                before = sse.cpu_seconds()
                started = time.monotonic()
                commits = write_paced(dsn, watched, events, pace)
                got = sse.latency(commits)
                cpu[kind].append((sse.cpu_seconds() - before) / (time.monotonic() - started))
                samples["p50"].append(got["p50"])
                samples["p99"].append(got["p99"])
            measured[kind] = samples
    shape = (
        f"platform shape ({PER_BAR} per bar, events to random bars)"
        if per_bar
        else "broadcast (every client, every event)"
    )
    note = (
        f"{events} events per run, one commit each, {pace * 1000:g} ms apart; bare: the floor "
        f"bridge in the same run; client process CPU: "
        f"{statistics.median(cpu['relay']):.0%} of a core (relay run), "
        f"{statistics.median(cpu['bridge']):.0%} (bridge run)"
    )
    results = []
    for pct, absolute, ratio in (("p50", 5.0, 1.3), ("p99", 50.0, 1.5)):
        results.append(
            Result(
                name=f"relay {shape}, {n:,} clients, latency {pct}",
                ours=measured["relay"][pct],
                bare=measured["bridge"][pct],
                unit="ms",
                target=None if per_bar else ratio,
                absolute_target=absolute if per_bar else None,
                note=note,
            )
        )
    raw_trip = raw.round_trip(dsn, 20, 0.05)
    results[0].note += f"; raw LISTEN/NOTIFY round trip p50 {raw_trip['p50']:.2f} ms"
    return results


def idle_rss(dsn: str, bars: list[str], n: int) -> Result:
    """KiB of RSS per open idle ``/events?bar_id=`` stream, relay against bridge."""
    watched = bars[: max(1, n // PER_BAR)]
    per_conn: dict[str, list[float]] = {}
    for kind in ("relay", "bridge"):
        per_conn[kind] = []
        for _ in range(max(1, RUNS // 2)):
            server = RelayUnderTest(dsn) if kind == "relay" else Bridge(dsn)
            with server:
                # Warm the code paths (and the pool) before the baseline.
                with Clients(server.url, 20, watched):
                    pass
                base = rss_bytes(server.proc.pid)
                with Clients(server.url, n, watched):
                    time.sleep(1.0)  # let allocator caches settle; not a synchronisation
                    loaded = rss_bytes(server.proc.pid)
                per_conn[kind].append((loaded - base) / n / 1024)
    return Result(
        name=f"relay idle RSS per open stream, {n:,} streams",
        ours=per_conn["relay"],
        bare=per_conn["bridge"],
        unit="KiB",
        absolute_target=4.0,
        note=f"(RSS with {n:,} idle /events?bar_id= streams - RSS before) / {n:,}, "
        f"{max(1, RUNS // 2)} runs; bare: the floor bridge (a raw protocol per socket)",
    )


def reconnect_storm(dsn: str, bars: list[str], n: int) -> Result:
    """Seconds from the new relay's start until every client holds every event."""
    watched = bars[: max(1, n // PER_BAR)]
    ours, bare = [], []
    for _ in range(max(1, RUNS // 2)):
        port = free_port()
        relay = RelayUnderTest(dsn, port=port)
        try:
            with Clients(relay.url, n, watched, reconnect=True) as sse:
                # Every client holds the position it opened at, as a page that
                # read the state first does; it resumes from there.
                sse.start(keep_times=False, keep_ids=True, position=position_now(dsn))
                with Writer(dsn, watched, rate=100) as writer:
                    writer.wait_for(20)
                    relay.close()
                    relay = RelayUnderTest(dsn, port=port)
                    answered = relay.started_at
                    writer.wait_for(writer.count + 100)  # a second of writes after the restart
                commits = writer.commits
                expected = expected_by_bar(dsn, commits)
                done = sse.exact(expected)
                if done["missing"]:
                    raise RuntimeError(
                        f"{done['missing']:,} of {n:,} clients did not hold exactly every event "
                        f"of their bar {done['at'] - answered:.0f} s after the relay restarted"
                    )
                ours.append(done["at"] - answered)
        finally:
            relay.close()
        # The floor: the same clients reconnecting to a restarted bridge (no resume).
        port = free_port()
        bridge = Bridge(dsn, port=port)
        try:
            with Clients(bridge.url, n, watched, reconnect=True) as sse:
                bridge.close()
                bridge = Bridge(dsn, port=port)
                bare.append(sse.reopened(2 * n) - bridge.started_at)
        finally:
            bridge.close()
    return Result(
        name=f"relay reconnect storm, {n:,} clients, time to catch up",
        ours=ours,
        bare=bare,
        unit="s",
        absolute_target=30.0,
        note=f"{PER_BAR} per bar; a writer commits 100 toggles/s to random bars throughout; "
        "from the new relay's start to every client holding every event of its bar "
        "(checked: exactly once, in order); bare: the same clients reconnecting to a "
        "restarted floor bridge",
    )


def worker_balance(dsn: str, bars: list[str], n: int, workers: int) -> Result:
    """How evenly SO_REUSEPORT spreads ``n`` streams over the workers: most / fewest."""
    watched = bars[: max(1, n // PER_BAR)]
    ratios = []
    for _ in range(max(1, RUNS // 2)):
        with (
            RelayUnderTest(dsn, workers=workers) as relay,
            Clients(relay.url, n, watched) as sse,
        ):
            counts = sse.workers()
            if len(counts) != workers:
                raise RuntimeError(f"streams reached {sorted(counts)}, not {workers} workers")
            ratios.append(max(counts.values()) / min(counts.values()))
    return Result(
        name=f"relay --workers {workers}, {n:,} streams: most / fewest on one worker",
        ours=ratios,
        unit="×",
        absolute_target=1.2,
        note="each stream's worker from its X-Relay-Worker header; SO_REUSEPORT hashes "
        "each connection's addresses and ports",
    )


# -- the database and the writer ----------------------------------------------------------


def prepare(dsn: str, bars: int) -> list[str]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(resource_dir("sql").joinpath("host_example.sql").read_text())
        conn.execute(LOAD.replace("%(n)s", str(int(bars))))
    migrations.migrate(dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
        return [str(r[0]) for r in conn.execute("SELECT id FROM bars ORDER BY id")]


def write_paced(dsn: str, bars: list[str], count: int, pace: float) -> dict[int, tuple[float, str]]:
    """Toggle ``count`` random bars one commit at a time; event id -> (commit time, bar)."""
    rng = random.Random(count)
    with psycopg.connect(dsn, autocommit=True) as conn:
        before = newest(conn)
        done = []
        for _ in range(count):
            bar = rng.choice(bars)
            conn.execute(TOGGLE, ([bar],))
            done.append((time.monotonic(), bar))
            time.sleep(pace)  # pacing of the load, not synchronisation
        return dict(zip(event_ids(conn, before), done, strict=True))


def newest(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT coalesce(max(event_id), 0) FROM mpesa_sync.status_events")
    return int(row.fetchone()[0])  # type: ignore[index]


def event_ids(conn: psycopg.Connection[Any], after: int) -> list[int]:
    rows = conn.execute(
        "SELECT event_id FROM mpesa_sync.status_events WHERE event_id > %s ORDER BY event_id",
        (after,),
    )
    return [r[0] for r in rows]


def position_now(dsn: str) -> str:
    """The log's newest position, GENERATION:EVENT_ID."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT generation, newest_event_id FROM mpesa_sync.event_log_v1"
        ).fetchone()
    assert row is not None
    return f"{row[0]}:{row[1]}"


def expected_by_bar(dsn: str, commits: tuple[int, int]) -> dict[str, list[int]]:
    first, last = commits
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT bar_id::text, event_id FROM mpesa_sync.status_events "
            "WHERE event_id BETWEEN %s AND %s ORDER BY event_id",
            (first, last),
        ).fetchall()
    by_bar: dict[str, list[int]] = {}
    for bar, event_id in rows:
        by_bar.setdefault(bar, []).append(event_id)
    return by_bar


class Writer:
    """Toggles random bars at ``rate`` commits/s in a thread until closed."""

    def __init__(self, dsn: str, bars: list[str], rate: int) -> None:
        self._conn = psycopg.connect(dsn, autocommit=True)
        self._bars, self._rate = bars, rate
        self.first = newest(self._conn) + 1
        self.count = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._write, daemon=True)
        self._thread.start()

    def _write(self) -> None:
        rng = random.Random(7)
        while not self._stop.is_set():
            self._conn.execute(TOGGLE, ([rng.choice(self._bars)],))
            self.count += 1
            self._stop.wait(1 / self._rate)  # the load's pace

    def wait_for(self, count: int) -> None:
        while self.count < count:
            time.sleep(0.01)

    def __enter__(self) -> Writer:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
        self.commits = (self.first, newest(self._conn))
        self._conn.close()


def percentiles(latencies_ms: list[float]) -> dict[str, float]:
    ordered = sorted(latencies_ms)
    cuts = statistics.quantiles(ordered, n=100, method="inclusive")
    return {"p50": statistics.median(ordered), "p99": cuts[98], "max": ordered[-1]}


# -- processes ---------------------------------------------------------------------------


def raise_nofile() -> None:
    """Open files for 50k sockets here and in every child (which inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = NOFILE if os.geteuid() == 0 else hard
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, want), max(hard, want)))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class RelayUnderTest:
    """`mpesa-sync relay --http 127.0.0.1:PORT` in its own process."""

    def __init__(self, dsn: str, port: int = 0, *extra: str, workers: int = 1) -> None:
        if workers > 1:
            extra = (*extra, "--workers", str(workers))
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mpesa_sync",
                "relay",
                "--dsn",
                dsn,
                "--http",
                f"127.0.0.1:{port}",
                *extra,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            cwd=RELAY_ROOT,
        )
        self.url = ""
        assert self.proc.stderr is not None
        listening = 0
        for line in self.proc.stderr:
            match = re.search(r"serving (http://\S+)/", line)
            if match:
                self.url = match.group(1)
            listening += "listening on mpesa_status" in line
            if listening == workers:
                break
        self.started_at = time.monotonic()
        if not self.url:
            raise RuntimeError("the relay did not start")
        # Keep draining its log so that it never blocks on a full pipe.
        threading.Thread(target=self.proc.stderr.read, daemon=True).start()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(60)

    def __enter__(self) -> RelayUnderTest:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class RawListener:
    """One plain LISTEN connection in a thread: the raw LISTEN/NOTIFY round trip."""

    def __init__(self, dsn: str) -> None:
        self.pings: dict[int, float] = {}
        self._next_ping = 0
        self._stop = threading.Event()
        self._conn = psycopg.connect(dsn, autocommit=True)
        self._conn.execute("LISTEN mpesa_bench_ping")
        self._thread = threading.Thread(target=self._listen, daemon=True)
        self._thread.start()

    def _listen(self) -> None:
        while not self._stop.is_set():
            for note in self._conn.notifies(timeout=0.5):
                self.pings[int(note.payload)] = time.monotonic()

    def round_trip(self, dsn: str, count: int, pace: float) -> dict[str, float]:
        sent: dict[int, float] = {}
        with psycopg.connect(dsn, autocommit=True) as conn:
            for _ in range(count):
                key, self._next_ping = self._next_ping, self._next_ping + 1
                sent[key] = time.monotonic()
                conn.execute("SELECT pg_notify('mpesa_bench_ping', %s)", (str(key),))
                time.sleep(pace)
        deadline = time.monotonic() + 60
        while any(k not in self.pings for k in sent):
            if time.monotonic() > deadline:
                raise RuntimeError("the plain listener missed pings")
            time.sleep(0.01)
        return percentiles([(self.pings[k] - t) * 1000 for k, t in sent.items()])

    def __enter__(self) -> RawListener:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self._conn.close()


class Bridge:
    """The floor: ``python -m benchmarks.bench_relay bridge DSN PORT`` in its own process."""

    def __init__(self, dsn: str, port: int = 0) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.bench_relay", "bridge", dsn, str(port)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        assert self.proc.stdout is not None
        self.url = json.loads(self.proc.stdout.readline())["url"]
        self.started_at = time.monotonic()

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()  # its signal to stop
            self.proc.wait(30)

    def __enter__(self) -> Bridge:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Clients:
    """The SSE client process; commands and answers are JSON lines on its stdin/stdout.

    ``bars``: stream i watches ``bars[i // PER_BAR]`` (None: every stream
    watches every bar).
    """

    def __init__(
        self, url: str, count: int, bars: list[str] | None, *, reconnect: bool = False
    ) -> None:
        self.count = count
        spec = {"url": url, "count": count, "bars": bars, "reconnect": reconnect}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.bench_relay", "client"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(spec) + "\n")
        self.proc.stdin.flush()
        answer = self._read()
        if answer.get("ready") != count:
            raise RuntimeError(f"the SSE clients did not connect: {answer}")

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
        return dict(json.loads(line))

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.proc.pid)

    def start(self, *, keep_times: bool, keep_ids: bool = False, position: str = "") -> None:
        """Forget what was received; keep (id, time) pairs for latency runs;
        ``position``: where every stream stands, for its next reconnect."""
        self._ask(
            {
                "cmd": "start",
                "keep": keep_times,
                "keep_ids": keep_ids or keep_times,
                "position": position,
            }
        )

    def latency(self, commits: dict[int, tuple[float, str]]) -> dict[str, float]:
        return self._ask({"cmd": "latency", "commits": {str(k): v for k, v in commits.items()}})

    def exact(self, expected: dict[str, list[int]]) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"cmd": "exact", "expected": expected}) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def workers(self) -> dict[str, int]:
        return dict(self._ask({"cmd": "workers"})["counts"])

    def reopened(self, count: int) -> float:
        return float(self._ask({"cmd": "reopened", "count": count})["at"])

    def __enter__(self) -> Clients:
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(60)


# -- the client process ----------------------------------------------------------------------


class _Stream(asyncio.Protocol):
    """One SSE connection as a bare protocol (no stream reader: the client
    process must cost far less per message than the relay, or it would be
    what is measured). With ``keep`` it keeps every (id, time)."""

    def __init__(self, pool: _Pool, index: int, bar: str | None) -> None:
        self.pool, self.index, self.bar = pool, index, bar
        self.transport: asyncio.Transport | None = None
        self.worker = ""
        self.last_id = b""
        self.reset(keep=False, keep_ids=False)
        self._head = True
        self._tail = b""

    def reset(self, *, keep: bool, keep_ids: bool) -> None:
        self.keep, self.keep_ids = keep, keep_ids
        self.ids: list[int] = []
        self.times: list[float] = []
        self.last = 0
        self.last_at = 0.0

    def request(self) -> bytes:
        path = f"/events?bar_id={self.bar}" if self.bar else "/events"
        resume = b"Last-Event-ID: " + self.last_id + b"\r\n" if self.last_id else b""
        return (
            (
                f"GET {path} HTTP/1.1\r\nHost: {self.pool.host}\r\nAccept: text/event-stream\r\n"
            ).encode()
            + resume
            + b"\r\n"
        )

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._head, self._tail = True, b""
        self.transport.write(self.request())  # type: ignore[union-attr]

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self._head:  # refused (503 at a busy relay) or cut before answering: again
            self.pool.retry(self)
        elif self.pool.reconnect:
            self.pool.closed(self)

    def data_received(self, data: bytes) -> None:
        now = time.monotonic()
        buf = self._tail + data
        if self._head:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                self._tail = buf
                return
            if b" 200 " not in buf[: buf.find(b"\r\n")]:
                self.pool.refused += 1
                self.transport.close()  # type: ignore[union-attr]
                return
            self._head = False
            head = buf[:end].lower()
            at = head.find(b"x-relay-worker: ")
            stop = head.find(b"\r\n", at)
            self.worker = head[at + 16 : stop if stop >= 0 else None].decode() if at >= 0 else ""
            buf = buf[end + 4 :]
            self.pool.opened(now)
        cut = buf.rfind(b"\n") + 1
        self._tail = buf[cut:]
        if b"id: " not in buf:
            return
        ids = [int(i) for i in _ID.findall(buf, 0, cut)]
        if not ids:
            return
        if self.pool.reconnect:
            self.last_id = _ID_TEXT.findall(buf, 0, cut)[-1]
        if self.keep_ids:
            self.ids.extend(ids)
            if self.keep:
                self.times.extend([now] * len(ids))
        self.last, self.last_at = ids[-1], now
        self.pool.progress()


class _Pool:
    def __init__(self, url: str, reconnect: bool) -> None:
        self.host, port = url.removeprefix("http://").rsplit(":", 1)
        self.port = int(port)
        self.reconnect = reconnect
        self.open = 0
        self.opened_total = 0
        self.refused = 0
        self.last_open = 0.0
        self.changed = asyncio.Event()
        self.loop = asyncio.get_running_loop()

    def opened(self, now: float) -> None:
        self.open += 1
        self.opened_total += 1
        self.last_open = now
        self.changed.set()

    def progress(self) -> None:
        self.changed.set()

    def closed(self, stream: _Stream) -> None:
        self.open -= 1
        self.retry(stream)

    def retry(self, stream: _Stream) -> None:
        self.loop.create_task(self.connect(stream, retry=True))

    async def connect(self, stream: _Stream, *, retry: bool = False) -> None:
        address = f"127.0.0.{2 + stream.index // PORTS_PER_ADDRESS}"
        delay = 0.1
        while True:
            if retry:  # an EventSource waits before it reconnects; spread them like browsers
                await asyncio.sleep(random.uniform(delay / 2, delay))
            try:
                await self.loop.create_connection(
                    functools.partial(_same, stream),
                    self.host,
                    self.port,
                    local_addr=(address, 0),
                )
                return
            except OSError:
                retry, delay = True, min(delay * 2, 1.0)


def _same(stream: _Stream) -> _Stream:
    return stream


async def _wait(pool: _Pool, done: Any, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        pool.changed.clear()
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(pool.changed.wait(), min(remaining, 0.5))


def _caught_up(streams: list[_Stream], wanted: dict[Any, list[int]]) -> bool:
    """Every stream holds the last event meant for it."""
    return all(s.last >= wanted[s.bar][-1] for s in streams if wanted.get(s.bar))


async def _client_main() -> None:
    spec = json.loads(sys.stdin.readline())
    pool = _Pool(spec["url"], spec["reconnect"])
    bars = spec["bars"]
    streams = [_Stream(pool, i, bars[i // PER_BAR] if bars else None) for i in range(spec["count"])]
    # Open in waves, as customers arrive: a wave is answered before the next.
    batch = 200
    for start in range(0, len(streams), batch):
        wave = streams[start : start + batch]
        await asyncio.gather(*(pool.connect(s) for s in wave))
        await _wait(pool, lambda: pool.open >= start + len(wave))  # noqa: B023
    await _wait(pool, lambda: pool.open == len(streams))
    print(json.dumps({"ready": pool.open, "refused": pool.refused}), flush=True)
    while line := await asyncio.to_thread(sys.stdin.readline):
        command = json.loads(line)
        answer: dict[str, Any] = {"missing": 0}
        if command["cmd"] == "start":
            for stream in streams:
                stream.reset(keep=command["keep"], keep_ids=command["keep_ids"])
                if command["position"]:
                    stream.last_id = command["position"].encode()
        elif command["cmd"] == "latency":
            # event id -> [commit time, bar]; each stream must get exactly the
            # events of its bar (or all), in order.
            commits = {int(k): v for k, v in command["commits"].items()}
            ordered = sorted(commits)
            wanted: dict[str | None, list[int]] = {None: ordered}
            for event_id in ordered:
                wanted.setdefault(commits[event_id][1], []).append(event_id)

            await _wait(pool, functools.partial(_caught_up, streams, wanted))
            latencies: list[float] = []
            for stream in streams:
                if stream.ids != wanted.get(stream.bar, []):
                    answer["missing"] += 1
                for event_id, at in zip(stream.ids, stream.times, strict=True):
                    latencies.append((at - commits[event_id][0]) * 1000)
            if latencies:
                answer.update(percentiles(latencies))
        elif command["cmd"] == "exact":
            expected = command["expected"]

            await _wait(pool, functools.partial(_caught_up, streams, expected))
            answer["at"] = max(s.last_at for s in streams)
            answer["missing"] = sum(s.ids != expected.get(s.bar, []) for s in streams)
        elif command["cmd"] == "workers":
            counts: dict[str, int] = {}
            for stream in streams:
                counts[stream.worker] = counts.get(stream.worker, 0) + 1
            answer["counts"] = counts
        elif command["cmd"] == "reopened":
            count = command["count"]
            await _wait(pool, lambda: pool.opened_total >= count)  # noqa: B023
            answer["at"] = pool.last_open
            answer["missing"] = count - pool.opened_total
        print(json.dumps(answer), flush=True)


# -- the floor bridge ----------------------------------------------------------------------


class _BridgeClient(asyncio.Protocol):
    def __init__(self, index: _BridgeIndex) -> None:
        self._index = index
        self._buf = b""
        self._transport: asyncio.Transport | None = None
        self._bar: str | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._buf += data
        if self._transport is not None and b"\r\n\r\n" in self._buf:
            target = self._buf.split(b" ", 2)[1]
            _, _, query = target.partition(b"bar_id=")
            self._bar = query.decode() or None
            self._transport.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\n")
            self._index.add(self._bar, self._transport)
            self._buf = b""

    def connection_lost(self, exc: Exception | None) -> None:
        if self._transport is not None:
            self._index.remove(self._bar, self._transport)


class _BridgeIndex:
    def __init__(self) -> None:
        self.all: set[asyncio.Transport] = set()
        self.by_bar: dict[str, set[asyncio.Transport]] = {}

    def add(self, bar: str | None, transport: asyncio.Transport) -> None:
        (self.all if bar is None else self.by_bar.setdefault(bar, set())).add(transport)

    def remove(self, bar: str | None, transport: asyncio.Transport) -> None:
        (self.all if bar is None else self.by_bar.get(bar, set())).discard(transport)


async def _bridge_main(dsn: str, port: int) -> None:
    index = _BridgeIndex()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: _BridgeClient(index), "127.0.0.1", port, reuse_address=True, backlog=4096
    )
    port = server.sockets[0].getsockname()[1]
    conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
    await conn.execute("LISTEN mpesa_status")
    print(json.dumps({"url": f"http://127.0.0.1:{port}"}), flush=True)

    async def relay() -> None:
        async for note in conn.notifies():
            payload = json.loads(note.payload)
            frame = b"id: %d\ndata: %s\n\n" % (payload["event_id"], note.payload.encode())
            for transport in index.all:
                transport.write(frame)
            for transport in index.by_bar.get(payload["bar_id"], ()):
                transport.write(frame)

    task = asyncio.create_task(relay())
    await asyncio.to_thread(sys.stdin.read)  # until the benchmark closes our stdin
    task.cancel()
    await conn.close()
    server.close()


def _main() -> None:
    raise_nofile()
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    try:
        import uvloop

        factory = uvloop.new_event_loop
    except ImportError:  # pragma: no cover
        factory = None  # type: ignore[assignment]
    with asyncio.Runner(loop_factory=factory) as runner:
        if sys.argv[1] == "client":
            runner.run(_client_main())
        else:
            runner.run(_bridge_main(sys.argv[2], int(sys.argv[3])))


if __name__ == "__main__":
    _main()
