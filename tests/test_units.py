"""Pure functions, without a database: parsers, redactors, encoders, the error
boundary's mapping, and the facts the code and SQL promise each other.

Marked ``no_database``: the suite refuses any test here that needs a server
(tests/conftest.py), so `pytest tests/test_units.py` runs on a machine with
no PostgreSQL at all.
"""

from __future__ import annotations

import importlib
import json
import pkgutil
import re
import uuid
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import click
import psycopg
import pytest
from psycopg import errors as pg_errors
from starlette.exceptions import HTTPException

from mpesa_sync import cli, db, errors, migrations, retention
from mpesa_sync.commands.relay import HostPort
from mpesa_sync.credentials import _Redactor
from mpesa_sync.crypto import KEY_ENV, CredentialCipher
from mpesa_sync.queries import load_queries, query
from mpesa_sync.relay.events import (
    FUTURE,
    MAX_EVENT_ID,
    OTHER_LOG,
    PRUNED,
    LogState,
    Position,
    Reset,
    StatusEvent,
    payload_event_id,
)
from mpesa_sync.relay.listener import _Backoff
from mpesa_sync.relay.sse import _Frames, parse_bar_id, parse_last_event_id
from mpesa_sync.resources import migration_ids, resource_dir
from mpesa_sync.retry import RetryPolicy, is_transient
from tests.support.cli import assert_one_line_error, run_cli

pytestmark = pytest.mark.no_database

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "mpesa_sync"


# -- DSNs ----------------------------------------------------------------------------


def test_yoyo_url_round_trips_awkward_dsns() -> None:
    url = migrations.yoyo_url("host=/var/run/postgresql port=5433 dbname=app user=me password=p@ss")
    assert url == ("postgresql+psycopg://me:p%40ss@/app?host=%2Fvar%2Frun%2Fpostgresql&port=5433")
    assert migrations.yoyo_url("postgresql://u@db.example:6543/x?sslmode=require") == (
        "postgresql+psycopg://u@db.example:6543/x?sslmode=require"
    )


def test_describe_names_the_database_never_the_password() -> None:
    text = db.describe("postgresql://me:hunter2secret@db.example:6543/app")
    assert text == "database 'app' at db.example:6543"
    assert db.describe("not a dsn ===") == "the database"


@pytest.mark.parametrize("call", [migrations.yoyo_url, db.connect], ids=["yoyo_url", "connect"])
def test_an_invalid_dsn_is_a_config_error_with_its_cause(call: object) -> None:
    with pytest.raises(errors.ConfigError, match="invalid DSN") as caught:
        call("not a dsn ===")  # type: ignore[operator]
    assert isinstance(caught.value.__cause__, psycopg.ProgrammingError)


def test_an_unreachable_server_is_database_unavailable_with_its_cause() -> None:
    with pytest.raises(errors.DatabaseUnavailable, match="cannot connect to") as caught:
        db.connect("postgresql://nobody:pw-secret@127.0.0.1:1/none?connect_timeout=2")
    assert isinstance(caught.value.__cause__, psycopg.OperationalError)
    assert "pw-secret" not in str(caught.value)


# -- the error boundary --------------------------------------------------------------


@pytest.mark.parametrize(
    ("driver_error", "expected"),
    [
        (
            psycopg.OperationalError("server closed the connection unexpectedly"),
            errors.DatabaseUnavailable(
                "lost the connection to database 'app' at h:5432: "
                "server closed the connection unexpectedly"
            ),
        ),
        (
            pg_errors.AdminShutdown("terminating connection due to administrator command"),
            errors.DatabaseUnavailable(
                "lost the connection to database 'app' at h:5432: terminating connection due "
                "to administrator command (SQLSTATE 57P01)"
            ),
        ),
        (
            pg_errors.InsufficientPrivilege("permission denied for table bars"),
            errors.DatabaseError(
                "database error: permission denied for table bars (SQLSTATE 42501)",
                sqlstate="42501",
            ),
        ),
        (
            pg_errors.CheckViolation("violates check constraint\nDETAIL:  Failing row (...)"),
            errors.DatabaseError(
                "database error: violates check constraint (SQLSTATE 23514)", sqlstate="23514"
            ),
        ),
    ],
    ids=["lost", "terminated", "privilege", "check"],
)
def test_translate_maps_driver_errors_to_ours(
    driver_error: psycopg.Error, expected: errors.MpesaSyncError
) -> None:
    translated = db.translate(driver_error, "postgresql://u:pw-secret@h:5432/app")
    assert type(translated) is type(expected)
    assert str(translated) == str(expected)
    assert getattr(translated, "sqlstate", None) == getattr(expected, "sqlstate", None)


def test_translated_chains_the_driver_error() -> None:
    cause = pg_errors.InsufficientPrivilege("permission denied for table bars")
    with pytest.raises(errors.DatabaseError) as caught, db.translated("dbname=app"):
        raise cause
    assert caught.value.__cause__ is cause
    assert str(caught.value) == "database error: permission denied for table bars (SQLSTATE 42501)"


def test_message_helpers() -> None:
    assert errors.with_sqlstate("refused", "23514") == "refused (SQLSTATE 23514)"
    assert errors.with_sqlstate("refused", None) == "refused"
    assert errors.first_line(ValueError("first\nDETAIL: second")) == "first"
    assert errors.first_line(ValueError()) == "ValueError"


def _package_modules() -> list[str]:
    names = ["mpesa_sync"]
    for info in pkgutil.walk_packages([str(PACKAGE)], prefix="mpesa_sync."):
        if not info.name.endswith("__main__"):  # importing it runs the CLI
            names.append(info.name)
    return names


def test_every_error_of_the_package_derives_from_the_base_and_carries_no_exit_code() -> None:
    found = []
    for name in _package_modules():
        module = importlib.import_module(name)
        for value in vars(module).values():
            if (
                isinstance(value, type)
                and issubclass(value, BaseException)
                and value.__module__.startswith("mpesa_sync")
            ):
                found.append(value)
    assert errors.SubscriptionLagged in found and errors.DatabaseError in found
    assert [e for e in found if not issubclass(e, errors.MpesaSyncError)] == []
    assert [e for e in found if hasattr(e, "exit_code")] == []
    assert {e.__module__ for e in found} == {"mpesa_sync.errors"}


# -- the settings API's redaction and retries ------------------------------------------


def test_redactor_replaces_every_form_of_a_value() -> None:
    blob = bytes.fromhex("01deadbeefcafe")
    redact = _Redactor(["consumer-KEY-123", blob, "abc", ""])
    text = "key consumer-KEY-123, bytea \\x01deadbeefcafe, hex 01deadbeefcafe, short abc"
    assert redact(text) == "key [redacted], bytea [redacted], hex [redacted], short abc"


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (pg_errors.SerializationFailure(), True),
        (pg_errors.DeadlockDetected(), True),
        (pg_errors.LockNotAvailable(), True),
        (pg_errors.AdminShutdown(), True),
        (psycopg.OperationalError("server closed the connection unexpectedly"), True),
        (errors.DatabaseUnavailable(), True),
        (pg_errors.CheckViolation(), False),
        (pg_errors.InvalidParameterValue(), False),
        (pg_errors.QueryCanceled(), False),
        (errors.ConfigError("invalid DSN"), False),
        (ValueError("not a database error"), False),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else str(v),
)
def test_which_failures_are_retried(error: BaseException, transient: bool) -> None:
    assert is_transient(error) is transient


def test_a_retry_policy_needs_one_attempt() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        RetryPolicy(attempts=0)


# -- encryption ----------------------------------------------------------------------


def test_a_ciphertext_only_decrypts_in_its_own_field_and_bar() -> None:
    cipher = CredentialCipher(bytes(range(32)))
    bar = uuid.uuid4()
    blob = cipher.encrypt("x" * 10, field_name="passkey_enc", bar_id=bar)
    assert blob[:1] == b"\x01" and len(blob) == 1 + 12 + 10 + 16
    assert cipher.decrypt(blob, field_name="passkey_enc", bar_id=bar) == "x" * 10
    with pytest.raises(errors.DecryptionFailed, match="consumer_key_enc of bar"):
        cipher.decrypt(blob, field_name="consumer_key_enc", bar_id=bar)
    with pytest.raises(errors.DecryptionFailed):
        cipher.decrypt(blob, field_name="passkey_enc", bar_id=uuid.uuid4())
    with pytest.raises(errors.DecryptionFailed):
        CredentialCipher(bytes(32)).decrypt(blob, field_name="passkey_enc", bar_id=bar)


@pytest.mark.parametrize("value", ["", "not base64!", "c2hvcnQ="], ids=["empty", "text", "short"])
def test_a_missing_or_bad_key_is_a_config_error(value: str) -> None:
    with pytest.raises(errors.ConfigError, match=KEY_ENV):
        CredentialCipher.from_env({KEY_ENV: value})


# -- the relay's parsers and encoders ------------------------------------------------


GENERATION = uuid.UUID("0b5c7a9e-3d1f-4e2a-9c8b-7f6e5d4c3b2a")


def test_status_event_is_encoded_once_as_a_line_and_a_frame() -> None:
    bar = uuid.UUID(int=7)
    at = datetime(2026, 11, 26, 9, 30, tzinfo=timezone(timedelta(hours=3)))
    event = StatusEvent.from_row((42, bar, True, "credentials", at), GENERATION)
    assert json.loads(event.line) == {
        "event_id": 42,
        "bar_id": str(bar),
        "mpesa_enabled": True,
        "source": "credentials",
        "at": "2026-11-26T06:30:00+00:00",  # always UTC
    }
    assert event.sse == f"id: {GENERATION}:42\ndata: {event.line}\n\n".encode()


def test_a_reset_is_a_line_and_a_named_frame_whose_id_is_the_new_position() -> None:
    log = LogState(GENERATION, pruned_through=10, oldest_event_id=11, newest_event_id=57)
    reset = Reset.of(PRUNED, log)
    assert json.loads(reset.line) == {
        "reset": True,
        "reason": "pruned",
        "newest_event_id": 57,
        "generation": str(GENERATION),
    }
    assert reset.sse == f"event: reset\nid: {GENERATION}:57\ndata: {reset.line}\n\n".encode()
    assert reset.position == Position(57, GENERATION)


@pytest.mark.parametrize(
    ("payload", "expected"),
    [('{"event_id": 5, "bar_id": "x"}', 5), ('{"event_id": "5"}', None), ("{}", None), ("[", None)],
)
def test_a_notification_is_only_a_hint_of_an_event_id(payload: str, expected: int | None) -> None:
    assert payload_event_id(payload) == expected


def test_positions_parse_with_or_without_a_generation() -> None:
    assert Position.parse(" 17 ") == Position(17)
    assert Position.parse(f"{GENERATION}:17") == Position(17, GENERATION)
    assert Position.parse(f"{str(GENERATION).upper()}:0") == Position(0, GENERATION)
    assert str(Position(17, GENERATION)) == f"{GENERATION}:17" and str(Position(17)) == "17"
    assert Position.parse(str(MAX_EVENT_ID)) == Position(MAX_EVENT_ID)
    bad = ["abc", "-3", "", str(MAX_EVENT_ID + 1), "1" * 20, f"{GENERATION}:", "x:1", "١٢", "17é"]
    for text in bad:
        with pytest.raises(ValueError) as caught:
            Position.parse(text)
        assert text not in str(caught.value) or not text


@pytest.mark.parametrize(
    ("position", "reason"),
    [
        (Position(10), None),  # exactly where the prune stopped: the next event is kept
        (Position(57, GENERATION), None),
        (Position(30, GENERATION), None),
        (Position(9), PRUNED),
        (Position(0, GENERATION), PRUNED),
        (Position(58), FUTURE),
        (Position(30, uuid.UUID(int=1)), OTHER_LOG),
    ],
)
def test_which_positions_a_log_honours(position: Position, reason: str | None) -> None:
    log = LogState(GENERATION, pruned_through=10, oldest_event_id=12, newest_event_id=57)
    assert log.invalid(position) == reason
    if reason is not None:
        assert str(position) in log.describe(position, reason)


def test_sse_request_parsers() -> None:
    assert parse_bar_id(None) is None
    assert parse_bar_id(str(uuid.UUID(int=3))) == uuid.UUID(int=3)
    assert parse_last_event_id(None) is None and parse_last_event_id(" ") is None
    assert parse_last_event_id(" 17 ") == Position(17)
    assert parse_last_event_id(f"{GENERATION}:3") == Position(3, GENERATION)
    for bad in ("abc", "-3", str(MAX_EVENT_ID + 1), "1" * 20, "caf\xe9:1"):
        with pytest.raises(HTTPException) as caught:
            parse_last_event_id(bad)
        assert caught.value.status_code == 400
        assert bad not in caught.value.detail  # never echoed
    with pytest.raises(HTTPException, match="malformed bar id"):
        parse_bar_id("42")


def test_frames_of_one_batch_are_joined_once_and_shared() -> None:
    at = datetime(2026, 1, 1, tzinfo=UTC)
    events = [
        StatusEvent.from_row((i, uuid.UUID(int=i), True, "reconcile", at), GENERATION)
        for i in (1, 2)
    ]
    frames = _Frames(size=1)
    joined = frames.join(list(events))
    assert joined == events[0].sse + events[1].sse
    assert frames.join(list(events)) is joined  # the same bytes object, not joined again
    assert frames.join(events[:1]) is events[0].sse
    # Equal ids in another log (after a reset) are other objects: never the cached bytes.
    rows = [(e.event_id, e.bar_id, False, "x", at) for e in events]
    other = [StatusEvent.from_row(row, GENERATION) for row in rows]
    assert frames.join(other) == other[0].sse + other[1].sse != joined
    frames.join([*events, events[0]])  # evicts (size 1)
    assert frames.join(list(events)) is not joined


def test_reconnect_backoff_doubles_with_jitter_up_to_the_cap() -> None:
    backoff = _Backoff(0.1, 1.0)
    delays = [backoff.next() for _ in range(6)]
    caps = [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    assert all(cap / 2 <= d <= cap for d, cap in zip(delays, caps, strict=True))
    backoff.reset()
    assert backoff.next() <= 0.1


@pytest.mark.parametrize(
    ("text", "expected"),
    [("127.0.0.1:8080", ("127.0.0.1", 8080)), ("[::1]:0", ("::1", 0)), ("db:1", ("db", 1))],
)
def test_host_port(text: str, expected: tuple[str, int]) -> None:
    assert HostPort().convert(text, None, None) == expected


@pytest.mark.parametrize("text", ["nonsense", "127.0.0.1:99999", ":8080", "host:port"])
def test_host_port_refuses(text: str) -> None:
    with pytest.raises(click.BadParameter, match="is not HOST:PORT"):
        HostPort().convert(text, None, None)


# -- what the code and the SQL promise each other ------------------------------------


def test_every_query_the_package_names_exists() -> None:
    named = set()
    for path in PACKAGE.rglob("*.py"):
        if "dev" in path.relative_to(PACKAGE).parts:
            continue
        named |= set(re.findall(r'query\("(\w+)"\)', path.read_text()))
        named |= set(re.findall(r'"(relay_\w+_between)"', path.read_text()))
    assert named
    for name in named:
        assert query(name)


def test_a_query_defined_twice_is_refused(tmp_path: Path) -> None:
    (tmp_path / "a.sql").write_text("-- name: one\nSELECT 1;\n")
    (tmp_path / "b.sql").write_text("-- name: one\nSELECT 2;\n")
    with pytest.raises(ValueError, match="defined twice"):
        load_queries(tmp_path)


def test_development_queries_stay_out_of_the_product_namespace() -> None:
    product = load_queries(resource_dir("sql") / "queries")
    dev = load_queries(resource_dir("sql") / "dev" / "queries")
    assert dev and not set(dev) & set(product)
    assert not any(name.startswith(("demo_", "profile_")) for name in product)


def test_advisory_lock_keys_are_the_ones_locks_sql_lists() -> None:
    listed = set(re.findall(r"^--\s+(\d+)\s", (ROOT / "sql/queries/locks.sql").read_text(), re.M))
    used: dict[str, set[str]] = {}
    for path in [*ROOT.joinpath("sql").rglob("*.sql"), *ROOT.joinpath("migrations").glob("*.sql")]:
        for key in re.findall(r"pg_advisory\w*\((\d+)\)", path.read_text()):
            used.setdefault(key, set()).add(path.name)
    assert len(listed) == 3
    assert set(used) == listed
    # migrate's, reconcile's and the event ids' keys are used where locks.sql says
    assert used["470037132129"] == {
        "schema.sql",
        "0002_mpesa_sync_v1.sql",
        "0004_mpesa_sync_v2.sql",
        "0004_mpesa_sync_v2.rollback.sql",
    }


def test_the_command_list_shows_each_commands_own_summary() -> None:
    ctx = click.Context(cli.cli)
    for name, entry in cli.COMMANDS.items():
        command = cli.cli.get_command(ctx, name)
        assert command is not None and command.name == name
        assert entry.summary == command.get_short_help_str(limit=1000), name


def test_sql_sources_cite_files_that_exist() -> None:
    cited = set()
    for path in [*ROOT.joinpath("sql").rglob("*.sql"), *PACKAGE.rglob("*.py")]:
        text = path.read_text()
        cited |= set(re.findall(r"\b((?:tests|sql|benchmarks|docs)/[\w/]+\.(?:py|sql|md))", text))
    assert cited
    assert sorted(c for c in cited if not (ROOT / c).exists()) == []


# -- options, refused before the database is touched -----------------------------------

NOWHERE = "postgresql://nobody@127.0.0.1:1/nowhere"  # any use of it would say "cannot connect"


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["reconcile", "--lock-timeout", "nan"], "'nan' is not a finite number"),
        (["reconcile", "--lock-timeout", "inf"], "--lock-timeout"),
        (["reconcile", "--lock-timeout", "-inf"], "--lock-timeout"),
        (["reconcile", "--lock-timeout", "1e9"], "--lock-timeout"),
        (["reconcile", "--lock-timeout", "0"], "--lock-timeout"),
        (["reconcile", "--batch-size", "0"], "--batch-size"),
        (["reconcile", "--batch-size", str(2**31)], "--batch-size"),
        (["verify", "--limit", str(2**31)], "--limit"),
        (["verify", "--limit", "-1"], "--limit"),
        (["alerts", "ack", str(2**63)], "ID"),
        (["rollback", "--steps", str(2**31)], "--steps"),
        (["settings", "check", "--bar", str(uuid.UUID(int=1)), "--timeout", "nan"], "finite"),
        (["settings", "check", "--bar", str(uuid.UUID(int=1)), "--timeout", "inf"], "--timeout"),
        (["settings", "check", "--bar", str(uuid.UUID(int=1)), "--timeout", "1e9"], "--timeout"),
        (["relay", "--since", "nan"], "is not EVENT_ID"),
        (["relay", "--since", str(2**63)], "is not EVENT_ID"),
        (["relay", "--http", "127.0.0.1:0", "--max-clients", "0"], "--max-clients"),
        (["relay", "--http", "127.0.0.1:0", "--max-clients", "inf"], "--max-clients"),
        (["relay", "--http", "127.0.0.1:0", "--max-clients", "1e9"], "--max-clients"),
        (["relay", "--http", "h:0", "--allow-origin", "https://app.example/x"], "not an origin"),
        (["relay", "--http", "h:0", "--allow-origin", "*"], "is not an origin"),
        (["relay", "--http", "h:0", "--allow-origin", "app.example"], "is not an origin"),
        (["relay", "--allow-origin", "https://app.example"], "need --http"),
        (["prune", "--older-than", "30"], "a number and a unit"),
        (["prune", "--older-than", "0d"], "must be above 0"),
        (["prune", "--older-than", "36501d"], "at most 36500d"),
        (["prune", "--older-than", "-1d"], "a number and a unit"),
        (["prune", "--older-than", "nand"], "a number and a unit"),
        (["prune", "--older-than", "1e3d"], "a number and a unit"),
        (["prune", "--older-than", "30d", "--batch-size", "0"], "--batch-size"),
        (["prune", "--older-than", "30d", "--batch-size", "1000001"], "--batch-size"),
        (["prune"], "--older-than"),
    ],
)
def test_bad_options_are_refused_before_the_database(args: list[str], needle: str) -> None:
    result = run_cli(*args, "--dsn", NOWHERE)
    assert result.code == 2, result.stderr
    assert_one_line_error(result.stderr, needle)
    assert "cannot connect" not in result.stderr


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30d", timedelta(days=30)),
        ("12h", timedelta(hours=12)),
        ("90m", timedelta(minutes=90)),
        (" 45s ", timedelta(seconds=45)),
        ("36500d", timedelta(days=36500)),
    ],
)
def test_durations(text: str, expected: timedelta) -> None:
    assert retention.parse_duration(text) == expected


@pytest.mark.parametrize("seconds", [float("nan"), float("inf"), 0.0, -1.0, 1e9])
def test_the_library_refuses_a_lock_timeout_postgresql_cannot_take(seconds: float) -> None:
    with pytest.raises(errors.ConfigError, match="lock timeout"):
        db.check_lock_timeout(seconds)
    assert db.check_lock_timeout(db.MAX_LOCK_TIMEOUT) == db.MAX_LOCK_TIMEOUT


def test_the_packaged_migrations_are_the_files() -> None:
    ids = migration_ids()
    assert ids[0] == "0001_mpesa_sync_base" and "0005_mpesa_sync_retention_v1" in ids
    assert ids == sorted(ids) and not any(i.endswith(".rollback") for i in ids)


def test_migrations_dir_prints_the_folder_yoyo_reads() -> None:
    result = run_cli("migrations-dir")
    assert result.code == 0, result.stderr
    folder = Path(result.stdout.strip())
    assert folder == resource_dir("migrations") and (folder / "0001_mpesa_sync_base.sql").exists()
