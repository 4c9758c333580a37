"""The live relay against a real server: stdout, SSE, HTTP errors, and the core.

The relay runs as a real subprocess (`python -m mpesa_sync relay`); tests
read its stdout, stderr and HTTP streams through threads into queues and wait
on them with deadlines, never with sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from mpesa_sync.relay.listener import APPLICATION_NAME, Relay, RelayConfig
from mpesa_sync.relay.log import PAGE_SIZE
from mpesa_sync.relay.service import listen_socket
from tests.support.cli import assert_one_line_error, run_module
from tests.support.database import Database
from tests.support.relay import (
    RelayProcess,
    SseReader,
    log_state,
    new_events,
    newest_event_id,
    scrape,
    serving,
    set_active,
    strip_at,
)
from tests.support.waiting import wait_for

# The install, upgrade, rollback, settings, relay and prune tests run as the
# managed-host owner (no superuser) and as a superuser.
pytestmark = pytest.mark.roles("owner", "superuser")

SECRETS = (b"consumer-key-PLAINTEXT", b"consumer-secret-PLAINTEXT", b"passkey-PLAINTEXT")
NON_ASCII = "café:1".encode()  # as a client sends it: UTF-8 bytes


# -- helpers ----------------------------------------------------------------------


def relay_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """`mpesa-sync relay` run to its end (for the paths that exit at once)."""
    return run_module("relay", *args, timeout=60)


@pytest.fixture
def relay_http(db: Database) -> Iterator[tuple[RelayProcess, str]]:
    with RelayProcess(db.dsn, "--http", "127.0.0.1:0") as relay:
        url = relay.http_url()
        relay.wait_listening()
        yield relay, url
        relay.stop()


# -- stdout relay -----------------------------------------------------------------


def test_stdout_relay_prints_each_change_once_and_stops_on_sigint(db: Database) -> None:
    bar = db.add_bar()
    db.add_credentials(bar, active=False, key=SECRETS[0], secret=SECRETS[1], passkey=SECRETS[2])
    before = newest_event_id(db)
    with RelayProcess(db.dsn) as relay:
        relay.wait_listening()
        set_active(db, bar, True)
        set_active(db, bar, True)  # a no-op write: no event
        set_active(db, bar, False)
        got = relay.events(2)
        assert strip_at(got) == new_events(db, before)
        stored = db.query(
            "SELECT at FROM mpesa_sync.status_events WHERE event_id > %s ORDER BY event_id",
            (before,),
        )
        assert [datetime.fromisoformat(e["at"]) for e in got] == [r["at"] for r in stored]
        assert all(e["at"].endswith("+00:00") for e in got)
        assert [e["mpesa_enabled"] for e in got] == [True, False]
        assert all(e["bar_id"] == str(bar) and e["source"] == "credentials" for e in got)
        log = relay.stop(signal.SIGINT)
    assert relay.stdout.empty()
    for secret in SECRETS:
        assert secret.decode() not in json.dumps(got) + log


def test_stdout_relay_survives_a_terminated_backend(db: Database) -> None:
    bars = [db.add_bar(f"bar {i}") for i in range(6)]
    for bar in bars:
        db.add_credentials(bar, active=False)
    before = newest_event_id(db)
    with RelayProcess(db.dsn) as relay:
        relay.wait_listening()
        pid = db.scalar(
            "SELECT pid FROM pg_stat_activity "
            "WHERE application_name = %s AND datname = current_database()",
            (APPLICATION_NAME,),
        )
        assert pid is not None
        assert db.scalar("SELECT pg_terminate_backend(%s)", (pid,))
        # Several changes at once, while the relay is reconnecting: one
        # statement that flips three bars, and three transactions of their own.
        db.execute(
            "UPDATE mpesa_credentials SET is_active = true WHERE tenant_id = ANY(%s)", (bars[:3],)
        )
        threads = [threading.Thread(target=set_active, args=(db, bar, True)) for bar in bars[3:]]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        expected = new_events(db, before)
        assert len(expected) == 6
        got = relay.events(6)
        assert strip_at(got) == expected  # every one, in event_id order
        relay.wait_listening()  # it did reconnect, on a new backend
        new_pid = db.scalar(
            "SELECT pid FROM pg_stat_activity "
            "WHERE application_name = %s AND datname = current_database()",
            (APPLICATION_NAME,),
        )
        assert new_pid not in (None, pid)
        # No duplicate follows: the next line is the next change.
        set_active(db, bars[0], False)
        (marker,) = relay.events(1)
        assert marker["event_id"] == newest_event_id(db)
        assert marker["event_id"] == expected[-1]["event_id"] + 1
        assert "database connection lost" in relay.stop()
    assert relay.stdout.empty()


def test_stdout_relay_survives_a_server_restart(db: Database, server: Any) -> None:
    if server.cluster is None:
        pytest.skip(f"server {server.label} is not ours to restart")
    bar = db.add_bar()
    db.add_credentials(bar, active=False)
    before = newest_event_id(db)
    with RelayProcess(db.dsn) as relay:
        relay.wait_listening()
        server.restart()
        set_active(db, bar, True)
        got = relay.events(1, timeout=60)
        assert strip_at(got) == new_events(db, before)
        assert relay.proc.poll() is None
        relay.wait_log("listening on mpesa_status", timeout=30)
        relay.stop()


def test_since_replays_from_the_table_and_bar_filters(db: Database) -> None:
    first, second = db.add_bar("first"), db.add_bar("second")
    db.add_credentials(first, active=False)
    db.add_credentials(second, active=False)
    start = newest_event_id(db)
    for active in (True, False, True):
        set_active(db, first, active)
        set_active(db, second, active)
    with RelayProcess(db.dsn, "--since", str(start), "--bar", str(second)) as relay:
        got = relay.events(3)
        assert [e["bar_id"] for e in got] == [str(second)] * 3
        assert [e["mpesa_enabled"] for e in got] == [True, False, True]
        relay.wait_listening()
        set_active(db, first, False)  # filtered out
        set_active(db, second, False)
        (live,) = relay.events(1)
        assert (live["bar_id"], live["mpesa_enabled"]) == (str(second), False)
        assert live["event_id"] == newest_event_id(db)
        relay.stop()


def test_replays_more_than_one_page_in_order(db: Database, relay_http: Any) -> None:
    relay, url = relay_http
    count = PAGE_SIZE + 150
    db.execute(
        "INSERT INTO bars (name) SELECT 'bar ' || i FROM generate_series(1, %s) AS i", (count,)
    )
    db.execute(
        """INSERT INTO mpesa_credentials (tenant_id, environment, business_shortcode,
               consumer_key_enc, consumer_secret_enc, passkey_enc, is_active)
           SELECT id, 'sandbox', '174379', 'k', 's', 'p', false FROM bars"""
    )
    start = newest_event_id(db)
    db.execute("UPDATE mpesa_credentials SET is_active = true")  # one commit, `count` events
    expected = list(range(start + 1, start + count + 1))
    assert newest_event_id(db) == expected[-1]
    # The running relay got them live; a new one with --since reads them in pages.
    assert [e["event_id"] for e in relay.events(count)] == expected
    with RelayProcess(db.dsn, "--since", str(start)) as late:
        assert [e["event_id"] for e in late.events(count)] == expected
        late.stop()
    reader = SseReader(f"{url}/events", headers={"Last-Event-ID": str(start)})
    try:
        assert [e["id"] for e in reader.take(count)] == expected
    finally:
        reader.close()


def test_starts_after_the_newest_event_by_default(db: Database) -> None:
    bar = db.add_bar()
    db.add_credentials(bar, active=True)  # an event before the relay starts
    with RelayProcess(db.dsn) as relay:
        relay.wait_listening()
        set_active(db, bar, False)
        (got,) = relay.events(1)
        assert got["event_id"] == newest_event_id(db)
        assert got["mpesa_enabled"] is False
        relay.stop()


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--http", "nonsense"], "'nonsense' is not HOST:PORT"),
        (["--http", "127.0.0.1:99999"], "is not HOST:PORT"),
        (["--since", "abc"], "'abc' is not EVENT_ID or GENERATION:EVENT_ID"),
        (["--since", "-1"], "--since"),
        (["--since", "1" * 20], "is not EVENT_ID or GENERATION:EVENT_ID"),
        (["--since", "999999"], "--since 999999 is past the newest event"),
        (["--since", f"{uuid.UUID(int=1)}:0"], "belongs to another event log"),
        (["--bar", "not-a-uuid"], "not a valid UUID"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(db: Database, args: list[str], needle: str) -> None:
    result = relay_cli("--dsn", db.dsn, *args)
    assert result.returncode == 2, result.stderr
    assert_one_line_error(result.stderr, needle)
    assert result.stdout == ""


def test_unreachable_database_and_busy_port_are_exit_2(db: Database) -> None:
    cases = [
        (["--dsn", "postgresql://postgres@127.0.0.1:1/postgres"], "cannot connect"),
    ]
    holder = listen_socket("127.0.0.1", 0)
    try:
        port = holder.getsockname()[1]
        cases.append((["--dsn", db.dsn, "--http", f"127.0.0.1:{port}"], "cannot listen on"))
        for args, needle in cases:
            result = relay_cli(*args)
            assert result.returncode == 2, result.stderr
            assert_one_line_error(result.stderr, needle)
    finally:
        holder.close()
    assert (
        db.scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (APPLICATION_NAME,)
        )
        == 0
    )


def test_schema_not_installed_is_exit_2(host_db: Database) -> None:
    result = relay_cli("--dsn", host_db.dsn)
    assert result.returncode == 2
    assert "schema is not installed" in result.stderr


# -- SSE and the HTTP API --------------------------------------------------------------


def test_sse_replays_after_last_event_id_then_goes_live(db: Database, relay_http: Any) -> None:
    relay, url = relay_http
    bar = db.add_bar()
    db.add_credentials(bar, active=False)
    start = newest_event_id(db)
    for active in (True, False, True):
        set_active(db, bar, active)
    reader = SseReader(f"{url}/events", headers={"Last-Event-ID": str(start + 1)})
    try:
        assert reader.status == 200
        replayed = reader.take(2)
        assert [e["id"] for e in replayed] == [start + 2, start + 3]
        assert [e["data"]["event_id"] for e in replayed] == [start + 2, start + 3]
        set_active(db, bar, False)
        (live,) = reader.take(1)
        assert live["id"] == start + 4 and live["data"]["mpesa_enabled"] is False
        set_active(db, bar, True)
        (marker,) = reader.take(1)  # nothing repeated in between
        assert marker["id"] == start + 5
    finally:
        reader.close()
    # The stdout relay saw the same events, live.
    assert [e["event_id"] for e in relay.events(5)] == list(range(start + 1, start + 6))


def test_sse_bar_filter_live_and_in_replay(db: Database, relay_http: Any) -> None:
    _, url = relay_http
    mine, other = db.add_bar("mine"), db.add_bar("other")
    db.add_credentials(mine, active=False)
    db.add_credentials(other, active=False)
    start = newest_event_id(db)
    set_active(db, other, True)
    set_active(db, mine, True)
    reader = SseReader(f"{url}/events?bar_id={mine}", headers={"Last-Event-ID": str(start)})
    try:
        (replayed,) = reader.take(1)
        assert replayed["data"]["bar_id"] == str(mine) and replayed["id"] == start + 2
        set_active(db, other, False)
        set_active(db, mine, False)
        (live,) = reader.take(1)
        assert live["data"]["bar_id"] == str(mine) and live["id"] == start + 4
    finally:
        reader.close()


def test_http_errors_are_json(db: Database, relay_http: Any) -> None:
    _, url = relay_http
    bar = db.add_bar()
    db.add_credentials(bar, active=True, key=SECRETS[0], secret=SECRETS[1], passkey=SECRETS[2])
    with httpx.Client(base_url=url, timeout=10) as client:
        ok = client.get(f"/bars/{bar}/payment-options")
        assert ok.status_code == 200
        assert ok.json() == {
            "bar_id": str(bar),
            "mpesa_available": True,
            "environment": "sandbox",
            "business_shortcode": "174379",
        }
        for secret in SECRETS:
            assert secret.decode() not in ok.text
        cases = [
            (client.get("/bars/not-a-uuid/payment-options"), 400, "malformed bar id"),
            (client.get(f"/bars/{uuid.uuid4()}/payment-options"), 404, "no bar"),
            (client.get("/events?bar_id=42"), 400, "malformed bar id"),
            (client.get("/events", headers={"Last-Event-ID": "abc"}), 400, "Last-Event-ID"),
            (client.get("/events", headers={"Last-Event-ID": "-3"}), 400, "Last-Event-ID"),
            (client.get("/events", headers={"Last-Event-ID": NON_ASCII}), 400, "Last-Event-ID"),
            (client.get(f"/events?bar_id={uuid.uuid4()}"), 404, "no bar"),
            (client.post("/events"), 405, "GET only"),
            (client.get("/no-such-page"), 404, "Not Found"),
        ]
        for response, status, needle in cases:
            assert response.status_code == status, response.text
            assert response.headers["content-type"] == "application/json"
            assert needle in response.json()["error"]
            assert "caf" not in response.text  # a Last-Event-ID is never echoed back
            assert "access-control-allow-origin" not in response.headers  # no CORS by default
        health = client.get("/healthz")
        assert health.status_code == 200
        assert health.json()["listening"] is True
        assert health.json()["last_event_id"] == newest_event_id(db)
        assert health.json()["generation"] == log_state(db)["generation"]
        page = client.get(f"/?bar_id={bar}")
        assert page.status_code == 200 and "EventSource" in client.get("/static/page.js").text


# -- the core, in process ------------------------------------------------------------


async def collect_ids(response: httpx.Response, ids: list[int]) -> None:
    """Append the event id of every frame of an SSE stream to ``ids``."""
    async for line in response.aiter_lines():
        if line.startswith("id: "):
            ids.append(int(line.rpartition(":")[2]))


async def until_holds(ids: list[int], last: int, timeout: float = 60) -> list[int]:
    """``ids`` once it reaches ``last`` (polled with a deadline)."""
    deadline = time.monotonic() + timeout
    while not (ids and ids[-1] >= last):
        assert time.monotonic() < deadline, f"stream stopped at {ids[-1:]}, expected {last}"
        await asyncio.sleep(0.02)  # polling interval, not synchronisation
    return ids


def test_a_client_that_never_reads_is_dropped_without_stalling_the_others(db: Database) -> None:
    bar_count = 300
    db.execute(
        "INSERT INTO bars (name) SELECT 'bar ' || i FROM generate_series(1, %s) AS i", (bar_count,)
    )
    db.execute(
        """INSERT INTO mpesa_credentials (tenant_id, environment, business_shortcode,
               consumer_key_enc, consumer_secret_enc, passkey_enc, is_active)
           SELECT id, 'sandbox', '174379', 'k', 's', 'p', false FROM bars"""
    )
    first_bar = db.scalar("SELECT min(id::text)::uuid FROM bars")
    start = newest_event_id(db)
    flip_all = "UPDATE mpesa_credentials SET is_active = NOT is_active"  # 300 events a commit

    async def scenario() -> None:
        config = RelayConfig(max_unsent=16 * 1024, max_blocked=1.0)
        relay = Relay(db.dsn, config=config)
        await relay.start()
        task = asyncio.create_task(relay.run())
        async with (
            serving(relay, db.dsn) as url,
            httpx.AsyncClient(timeout=httpx.Timeout(10, read=None)) as client,
            client.stream("GET", f"{url}/events") as fast,
            client.stream("GET", f"{url}/events?bar_id={first_bar}") as mine,
        ):
            # A client that asks for the stream and never reads a byte of it.
            stuck = socket.socket()
            stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            stuck.connect(("127.0.0.1", int(url.rsplit(":", 1)[1])))
            stuck.sendall(b"GET /events HTTP/1.1\r\nHost: relay\r\n\r\n")
            await asyncio.to_thread(
                wait_for, "three streams", lambda: scrape(url)["mpesa_sync_relay_clients"] == 3
            )
            fast_ids: list[int] = []
            my_ids: list[int] = []
            readers = [
                asyncio.create_task(collect_ids(fast, fast_ids)),
                asyncio.create_task(collect_ids(mine, my_ids)),
            ]
            flips = 0
            # Until the stuck client's unsent data passes the bound (the kernel's
            # socket buffers take the first hundreds of KiB).
            while (await asyncio.to_thread(scrape, url))[
                "mpesa_sync_relay_dropped_clients_total"
            ] == 0:
                assert flips < 200, "the client that never reads was never dropped"
                await asyncio.to_thread(db.execute, flip_all)
                flips += 1
            newest = newest_event_id(db)
            mine_expected = [
                r["event_id"]
                for r in db.query(
                    "SELECT event_id FROM mpesa_sync.status_events "
                    "WHERE bar_id = %s AND event_id > %s ORDER BY event_id",
                    (first_bar, start),
                )
            ]
            assert len(mine_expected) == flips
            # The readers beside it got every event, in order, and were never held up.
            assert await until_holds(fast_ids, newest) == list(range(start + 1, newest + 1))
            assert await until_holds(my_ids, mine_expected[-1]) == mine_expected
            metrics = await asyncio.to_thread(scrape, url)
            assert metrics["mpesa_sync_relay_dropped_clients_total"] == 1
            assert metrics["mpesa_sync_relay_clients"] == 2
            # The stuck client's connection was closed under it.
            stuck.settimeout(10)
            with contextlib.suppress(ConnectionResetError):
                while stuck.recv(65536):
                    pass
            stuck.close()
            relay.stop()  # a stopped relay ends the streams
            await asyncio.wait_for(asyncio.gather(*readers), 10)
            assert fast_ids[-1] == newest
        await asyncio.wait_for(task, 10)

    asyncio.run(scenario())


def test_sse_heartbeat_and_clean_end_on_stop(db: Database) -> None:
    async def scenario() -> None:
        relay = Relay(db.dsn)
        await relay.start()
        relay_task = asyncio.create_task(relay.run())
        async with (
            serving(relay, db.dsn, heartbeat_seconds=0.2) as url,
            httpx.AsyncClient(timeout=10) as client,
            client.stream("GET", f"{url}/events") as response,
        ):
            lines = response.aiter_lines()
            assert await anext(lines) == "retry: 1000"
            comments = []
            async for line in lines:
                if line.startswith(":"):
                    comments.append(line)
                    if len(comments) == 2:
                        break
            assert comments == [": keepalive", ": keepalive"]
            relay.stop()  # ends the stream from the server side
            rest = [line async for line in lines]
            assert all(not line or line.startswith(":") for line in rest)
        await asyncio.wait_for(relay_task, 20)

    asyncio.run(scenario())


def test_the_relay_raises_its_open_file_limit_and_says_what_it_allows(db: Database) -> None:
    def soft_limit(relay: RelayProcess) -> int:
        text = Path(f"/proc/{relay.proc.pid}/limits").read_text()
        return int(re.search(r"Max open files\s+(\d+)", text)[1])  # type: ignore[index]

    # Room enough once the soft limit is raised to the hard one: nothing to say.
    with RelayProcess(
        db.dsn, "--http", "127.0.0.1:0", "--max-clients", "500", nofile=(256, 1024)
    ) as relay:
        relay.wait_listening()
        assert soft_limit(relay) == 1024
        assert "open-file limit" not in relay.stop()
    # Not enough even then: one warning on stderr, with the clients it allows.
    with RelayProcess(
        db.dsn, "--http", "127.0.0.1:0", "--max-clients", "5000", nofile=(256, 1024)
    ) as relay:
        warning = relay.wait_log(r"open-file limit \((\d+), hard limit (\d+)\) allows about (\d+)")
        assert warning.groups() == ("1024", "1024", "960")
        assert "fewer than 5000" in warning.string
        relay.wait_listening()
        assert soft_limit(relay) == 1024
        relay.stop()


# -- metrics, the client cap, CORS -----------------------------------------------------


def test_metrics_after_known_events(db: Database) -> None:
    bar, other = db.add_bar("mine"), db.add_bar("other")
    db.add_credentials(bar, active=False)
    db.add_credentials(other, active=False)
    with RelayProcess(db.dsn, "--http", "127.0.0.1:0") as relay:
        url = relay.http_url()
        relay.wait_listening()
        before = scrape(url)
        assert before["mpesa_sync_relay_events_total"] == 0
        assert before["mpesa_sync_relay_commit_to_send_seconds_count"] == 0
        readers = [SseReader(f"{url}/events"), SseReader(f"{url}/events?bar_id={bar}")]
        try:
            set_active(db, bar, True)
            set_active(db, other, True)
            set_active(db, bar, False)
            relay.events(3)
            readers[0].take(3)
            readers[1].take(2)
            metrics = scrape(url)
            assert metrics["mpesa_sync_relay_clients"] == 2
            assert metrics["mpesa_sync_relay_listening"] == 1
            assert metrics["mpesa_sync_relay_last_event_id"] == newest_event_id(db)
            assert metrics["mpesa_sync_relay_events_total"] == 3
            assert metrics["mpesa_sync_relay_commit_to_send_seconds_count"] == 3
            assert 0 < metrics["mpesa_sync_relay_commit_to_send_seconds_sum"] < 30
            for name in ("resets", "client_resets", "dropped_clients", "refused_clients"):
                assert metrics[f"mpesa_sync_relay_{name}_total"] == 0, name
        finally:
            for reader in readers:
                reader.close()
        text = httpx.get(f"{url}/metrics").text
        assert "# TYPE mpesa_sync_relay_commit_to_send_seconds histogram" in text
        relay.stop()


def test_past_the_client_cap_a_stream_gets_503_and_the_open_ones_go_on(db: Database) -> None:
    bar = db.add_bar()
    db.add_credentials(bar, active=False)
    with RelayProcess(db.dsn, "--http", "127.0.0.1:0", "--max-clients", "2") as relay:
        url = relay.http_url()
        relay.wait_listening()
        readers = [SseReader(f"{url}/events"), SseReader(f"{url}/events?bar_id={bar}")]
        try:
            refused = httpx.get(f"{url}/events", timeout=10)
            assert refused.status_code == 503
            assert refused.headers["retry-after"] == "5"
            assert "at most 2 streams" in refused.json()["error"]
            set_active(db, bar, True)
            for reader in readers:  # untouched by the refusal
                (event,) = reader.take(1)
                assert event["id"] == newest_event_id(db)
            assert scrape(url)["mpesa_sync_relay_refused_clients_total"] == 1
        finally:
            readers.pop().close()
        try:
            # Once a stream has closed, the next one is let in.
            wait_for("a free place", lambda: scrape(url)["mpesa_sync_relay_clients"] == 1)
            readers.append(SseReader(f"{url}/events"))
            assert readers[-1].status == 200
        finally:
            for reader in readers:
                reader.close()
        relay.stop()


def test_cors_only_for_the_allowed_origins_and_only_on_the_customer_routes(db: Database) -> None:
    bar = db.add_bar()
    db.add_credentials(bar, active=True)
    app_origin, other_origin = "http://app.example:3000", "https://evil.example"
    with RelayProcess(
        db.dsn,
        "--http",
        "127.0.0.1:0",
        "--allow-origin",
        app_origin,
        "--allow-origin",
        "https://second.example",
    ) as relay:
        url = relay.http_url()
        relay.wait_listening()
        with httpx.Client(base_url=url, timeout=10) as client:
            for path in (f"/bars/{bar}/payment-options", f"/bars/{uuid.uuid4()}/payment-options"):
                allowed = client.get(path, headers={"Origin": app_origin})
                assert allowed.headers["access-control-allow-origin"] == app_origin
                assert "Origin" in allowed.headers["vary"]
                refused = client.get(path, headers={"Origin": other_origin})
                assert "access-control-allow-origin" not in refused.headers
                assert refused.status_code == allowed.status_code  # CORS is the browser's call
            for path in ("/healthz", "/metrics", f"/?bar_id={bar}"):
                response = client.get(path, headers={"Origin": app_origin})
                assert "access-control-allow-origin" not in response.headers, path
            preflight = client.options(
                "/events",
                headers={
                    "Origin": app_origin,
                    "Access-Control-Request-Method": "GET",
                    "Access-Control-Request-Headers": "last-event-id",
                },
            )
            assert preflight.status_code == 204
            assert preflight.headers["access-control-allow-origin"] == app_origin
            assert "last-event-id" in preflight.headers["access-control-allow-headers"].lower()
            stranger = client.options(
                "/events",
                headers={"Origin": other_origin, "Access-Control-Request-Method": "GET"},
            )
            assert "access-control-allow-origin" not in stranger.headers
        readers = [
            SseReader(f"{url}/events", headers={"Origin": "https://second.example"}),
            SseReader(f"{url}/events", headers={"Origin": other_origin}),
            SseReader(f"{url}/events"),
        ]
        try:
            allowed, *others = readers
            assert allowed.headers["access-control-allow-origin"] == "https://second.example"
            # The stream's headers are not shared: the next streams carry no grant.
            assert all("access-control-allow-origin" not in r.headers for r in others)
            assert all(r.status == 200 for r in readers)
        finally:
            for reader in readers:
                reader.close()
        relay.stop()
