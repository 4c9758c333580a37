"""Exact or reset, never silent loss: every way a reader's position can stop
being one the log can honour, on the real server.

- an SSE client whose Last-Event-ID was pruned, is in the future, or belongs
  to another log gets a first ``event: reset`` frame, then live events;
- a running relay whose own position goes bad (pruned while it was away, the
  schema rolled back and installed again, an older dump restored under it)
  writes one stderr line, one ``{"reset": true, ...}`` stdout line and a reset
  frame to each SSE client, then carries on live;
- ``relay --since`` that the log cannot honour exits 2 with one line.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from mpesa_sync import migrations, retention
from mpesa_sync.relay import sse
from mpesa_sync.relay.events import Reset, StatusEvent
from mpesa_sync.relay.listener import Relay
from tests.support.cli import assert_one_line_error, run_module
from tests.support.database import Database
from tests.support.relay import (
    RelayProcess,
    SseReader,
    age_events,
    log_state,
    new_events,
    newest_event_id,
    scrape,
    serving,
    set_active,
    strip_at,
)


@pytest.fixture
def bar(db: Database) -> uuid.UUID:
    """A bar with an inactive credential row, so that set_active flips it."""
    bar_id = db.add_bar("flipper")
    db.add_credentials(bar_id, active=False)
    return bar_id


def flip(db: Database, bar_id: uuid.UUID, times: int) -> None:
    for i in range(times):
        set_active(db, bar_id, i % 2 == 0)
    if times % 2:  # leave it inactive, so that the next flip is a change too
        set_active(db, bar_id, False)


def prune(db: Database) -> dict[str, Any]:
    return retention.prune(db.dsn, retention.parse_duration("30d")).as_dict()


def assert_reset_frame(frame: dict[str, Any], reason: str, db: Database) -> None:
    log = log_state(db)
    assert frame["event"] == "reset"
    assert frame["data"] == {
        "reset": True,
        "reason": reason,
        "newest_event_id": log["newest_event_id"],
        "generation": log["generation"],
    }
    assert (frame["generation"], frame["id"]) == (log["generation"], log["newest_event_id"])


# -- SSE: a Last-Event-ID the log cannot honour -----------------------------------------


@pytest.mark.parametrize("case", ["pruned", "future", "other_log"])
def test_sse_resets_a_position_it_cannot_honour_then_goes_live(
    db: Database, bar: uuid.UUID, case: str
) -> None:
    flip(db, bar, 4)  # events 1..4
    generation = log_state(db)["generation"]
    if case == "pruned":
        age_events(db, upto=3)
        assert prune(db)["events_deleted"] == 3
        last = f"{generation}:1"  # events 2 and 3 are gone
    elif case == "future":
        last = f"{generation}:{newest_event_id(db) + 10}"
    else:
        last = f"{uuid.uuid4()}:2"
    with RelayProcess(db.dsn, "--http", "127.0.0.1:0") as relay:
        url = relay.http_url()
        relay.wait_listening()
        reader = SseReader(f"{url}/events?bar_id={bar}", headers={"Last-Event-ID": last})
        try:
            assert reader.status == 200
            (first,) = reader.take(1)
            assert_reset_frame(first, case, db)
            set_active(db, bar, True)
            (live,) = reader.take(1)
            assert (live["generation"], live["id"]) == (generation, newest_event_id(db))
            assert "event" not in live and live["data"]["mpesa_enabled"] is True
        finally:
            reader.close()
        metrics = scrape(url)
        assert metrics["mpesa_sync_relay_client_resets_total"] == 1
        assert metrics["mpesa_sync_relay_resets_total"] == 0  # the relay itself was fine
        relay.stop()


def test_sse_honours_a_position_with_or_without_its_generation_exactly(
    db: Database, bar: uuid.UUID
) -> None:
    flip(db, bar, 4)
    age_events(db, upto=2)
    prune(db)  # events 1 and 2 go; 2 is where the log now starts
    generation = log_state(db)["generation"]
    with RelayProcess(db.dsn, "--http", "127.0.0.1:0") as relay:
        url = relay.http_url()
        relay.wait_listening()
        for last in (f"{generation}:2", "2"):
            reader = SseReader(f"{url}/events", headers={"Last-Event-ID": last})
            try:
                got = reader.take(2)
                assert [(e["generation"], e["id"]) for e in got] == [
                    (generation, 3),
                    (generation, 4),
                ]
                assert all("event" not in e for e in got)
            finally:
                reader.close()
        relay.stop()


def test_a_prune_that_overtakes_a_replay_resets_it(
    db: Database, bar: uuid.UUID, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The replay reads the log's state with each page: a prune that passes the
    client's place after its position was checked resets the stream rather
    than skip the pruned events."""
    flip(db, bar, 6)
    generation = log_state(db)["generation"]
    checked = sse.read_log_state

    async def check_then_prune(conn: Any, bar_id: uuid.UUID | None = None) -> Any:
        state = await checked(conn, bar_id)  # position 1: honoured, nothing pruned yet
        await asyncio.to_thread(age_events, db, 4)
        await asyncio.to_thread(prune, db)
        return state

    monkeypatch.setattr(sse, "read_log_state", check_then_prune)

    async def scenario() -> str:
        relay = Relay(db.dsn)
        await relay.start()
        relay_task = asyncio.create_task(relay.run())
        text = ""
        headers = {"Last-Event-ID": f"{generation}:1"}
        async with (
            serving(relay, db.dsn) as url,
            httpx.AsyncClient(timeout=10) as client,
            client.stream("GET", f"{url}/events", headers=headers) as response,
        ):
            assert response.status_code == 200
            async for chunk in response.aiter_text():
                text += chunk
                if "event: reset" in text and text.endswith("\n\n"):
                    break
            relay.stop()  # ends the streams, so that the server stops at once
        await asyncio.wait_for(relay_task, 20)
        return text

    frames = [f for f in asyncio.run(scenario()).split("\n\n") if f and f != "retry: 1000"]
    assert len(frames) == 1, frames  # events 2..4 were pruned, and no 5 or 6 before the reset
    assert frames[0].startswith(f"event: reset\nid: {generation}:6\n")
    assert '"reason": "pruned"' in frames[0]


def test_relay_since_the_log_cannot_honour_exits_2(db: Database, bar: uuid.UUID) -> None:
    flip(db, bar, 4)
    age_events(db, upto=3)
    prune(db)
    generation = log_state(db)["generation"]
    for since, needle in [
        ("2", "--since 2 is older than the oldest event retained: events up to 3 were pruned"),
        (f"{generation}:99", f"--since {generation}:99 is past the newest event (4)"),
        (f"{uuid.UUID(int=5)}:4", "belongs to another event log"),
    ]:
        result = run_module("relay", "--dsn", db.dsn, "--since", since, timeout=60)
        assert result.returncode == 2, result.stderr
        assert_one_line_error(result.stderr, needle)
        assert result.stdout == ""
    with RelayProcess(db.dsn, "--since", f"{generation}:3") as relay:  # exactly the edge
        (event,) = relay.events(1)
        assert event["event_id"] == 4
        relay.stop()


async def collect_frames(response: httpx.Response, frames: list[str]) -> None:
    """Append each SSE frame (not the retry line or keepalives) of a stream to ``frames``."""
    text = ""
    async for chunk in response.aiter_text():
        text += chunk
        *done, text = text.split("\n\n")
        frames += [f for f in done if f and not f.startswith((":", "retry:"))]


async def until_count(frames: list[str], count: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while len(frames) < count:
        assert time.monotonic() < deadline, f"got {frames}, expected {count} frames"
        await asyncio.sleep(0.02)  # polling interval, not synchronisation


# -- a running relay whose own position goes bad ------------------------------------------


def test_a_relay_whose_position_was_pruned_while_away_resets(db: Database, bar: uuid.UUID) -> None:
    flip(db, bar, 2)

    async def scenario() -> tuple[list[Any], list[str], Relay]:
        relay = Relay(db.dsn)
        got: list[Any] = []
        relay.add_sink(got.append)
        await relay.start()  # at event 2
        frames: list[str] = []
        async with (
            serving(relay, db.dsn) as url,
            httpx.AsyncClient(timeout=httpx.Timeout(10, read=None)) as client,
            client.stream("GET", f"{url}/events") as response,  # joins at event 2
        ):
            reader = asyncio.create_task(collect_frames(response, frames))
            # While the relay is away (not yet running): four more events, all of
            # them old enough to prune but the last.
            await asyncio.to_thread(flip, db, bar, 4)
            await asyncio.to_thread(age_events, db, 5)
            await asyncio.to_thread(prune, db)
            task = asyncio.create_task(relay.run())
            await until_count(frames, 1)
            await asyncio.to_thread(set_active, db, bar, True)
            await until_count(frames, 2)
            relay.stop()
            await asyncio.wait_for(task, 20)
            await asyncio.wait_for(reader, 20)  # a stopped relay ends the stream
        return got, frames, relay

    got, frames, relay = asyncio.run(scenario())
    assert isinstance(got[0], Reset) and got[0].reason == "pruned"
    assert got[0].newest_event_id == 6
    assert [type(i) for i in got[1:]] == [StatusEvent] and got[1].event_id == 7
    generation = log_state(db)["generation"]
    assert frames[0].startswith(f"event: reset\nid: {generation}:6\n")
    assert frames[1].startswith(f"id: {generation}:7\n") and len(frames) == 2
    assert relay.stats.resets == 1 and relay.last_event_id == 7


def test_a_running_relay_resets_across_rollback_all_and_migrate(
    db: Database, bar: uuid.UUID
) -> None:
    other = db.add_bar("other")
    db.add_credentials(other, active=False)
    old_generation = log_state(db)["generation"]
    with RelayProcess(db.dsn, "--http", "127.0.0.1:0") as relay:
        url = relay.http_url()
        relay.wait_listening()
        reader = SseReader(f"{url}/events")
        try:
            flip(db, bar, 2)  # events 1, 2 of the old log
            assert [e["event_id"] for e in relay.events(2)] == [1, 2]
            assert [e["id"] for e in reader.take(2)] == [1, 2]

            migrations.rollback(db.dsn, count=None)
            # While nothing is installed, two bars drift; the new install fixes
            # them: events 1 and 2 of a new log, which the relay never saw.
            db.execute("UPDATE mpesa_credentials SET is_active = true")
            migrations.migrate(db.dsn)
            log = log_state(db)
            assert log["newest_event_id"] == 2 and log["generation"] != old_generation

            (reset,) = relay.events(1)
            assert reset == {
                "reset": True,
                "reason": "other_log",
                "newest_event_id": 2,
                "generation": log["generation"],
            }
            assert_reset_frame(reader.take(1)[0], "other_log", db)
            set_active(db, bar, False)  # event 3 of the new log, live
            (live,) = relay.events(1)
            assert strip_at([live]) == new_events(db, 2)
            (frame,) = reader.take(1)
            assert (frame["generation"], frame["id"]) == (log["generation"], 3)
        finally:
            reader.close()
        assert httpx.get(f"{url}/healthz").json()["generation"] == log["generation"]
        assert scrape(url)["mpesa_sync_relay_resets_total"] == 1
        text = relay.stop()
    assert text.count("reset: position") == 1, text


def _dump_tools(server: Any) -> Path:
    """pg_dump and pg_restore of the server's own version."""
    if server.cluster is None:
        pytest.skip(f"server {server.label} is not ours: no pg_dump of its version at hand")
    return Path(server.cluster.bindir)


def test_a_running_relay_across_the_restore_of_an_older_dump_resets(
    db: Database, bar: uuid.UUID, server: Any, tmp_path: Path
) -> None:
    tools = _dump_tools(server)
    dump = tmp_path / "older.dump"
    flip(db, bar, 2)  # events 1, 2: in the dump
    # the host's schema and ours, as the owner dumps them on a managed host (the
    # extensions belong to the provider's admin, who alone may drop them)
    subprocess.run(
        [str(tools / "pg_dump"), "-Fc", "-n", "public", "-n", "mpesa_sync", "-f", str(dump),
         db.dsn],
        check=True,
        capture_output=True,
    )  # fmt: skip
    with RelayProcess(db.dsn, "--http", "127.0.0.1:0") as relay:
        url = relay.http_url()
        relay.wait_listening()
        reader = SseReader(f"{url}/events")
        try:
            flip(db, bar, 4)  # events 3..6: delivered, then lost with the restore
            assert [e["event_id"] for e in relay.events(4)] == [3, 4, 5, 6]
            assert [e["id"] for e in reader.take(4)] == [3, 4, 5, 6]
            restored = subprocess.run(
                [
                    str(tools / "pg_restore"),
                    "--clean",
                    "--if-exists",
                    "--single-transaction",
                    "-d",
                    db.dsn,
                    str(dump),
                ],
                capture_output=True,
                text=True,
                check=False,
            )
            assert restored.returncode == 0, restored.stderr
            assert newest_event_id(db) == 2
            # Events 3..7 of the restored log: past the relay's position (6), but
            # not the events 3..6 it handed on. Continuing after 6 would skip them.
            flip(db, bar, 5)

            (reset,) = relay.events(1)
            # the dump keeps the generation: a relay that reads before the flips
            # finds its position past the newest (future), one that reads after
            # them finds another event at it (other_log)
            assert reset["reset"] is True and reset["reason"] in ("other_log", "future")
            assert reset["generation"] == log_state(db)["generation"]
            assert 2 <= reset["newest_event_id"] <= 8  # wherever the relay noticed
            (frame,) = reader.take(1)
            assert frame["event"] == "reset" and frame["data"] == reset
            # Live from the reset's position on, exactly.
            set_active(db, bar, False)
            expected = new_events(db, reset["newest_event_id"])
            assert strip_at(relay.events(len(expected))) == expected
            frames = reader.take(len(expected))
            assert [f["id"] for f in frames] == [e["event_id"] for e in expected]
        finally:
            reader.close()
        text = relay.stop()
    assert text.count("reset: position") == 1, text
