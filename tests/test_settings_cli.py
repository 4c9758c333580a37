"""`mpesa-sync settings set|show|check`: exit codes, one-line errors, no secret on screen."""

from __future__ import annotations

import base64
import json
import os
import uuid
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from mpesa_sync.crypto import KEY_ENV, CredentialCipher
from tests.support.cli import assert_one_line_error, run_cli, run_on_terminal
from tests.support.database import Database
from tests.support.http import QuietHandler, serving

# The install, upgrade, rollback, settings, relay and prune tests run as the
# managed-host owner (no superuser) and as a superuser.
pytestmark = pytest.mark.roles("owner", "superuser")

KEY = base64.b64encode(bytes(range(100, 132))).decode()
SECRETS = {
    "MPESA_SYNC_CONSUMER_KEY": "ck-" + uuid.uuid4().hex,
    "MPESA_SYNC_CONSUMER_SECRET": "cs-" + uuid.uuid4().hex,
    "MPESA_SYNC_PASSKEY": "pk-" + uuid.uuid4().hex,
}
TOKEN = "tok-" + uuid.uuid4().hex
NO_SECRETS = dict.fromkeys(SECRETS)  # unset in the command's environment


def env(**extra: str | None) -> dict[str, str | None]:
    return {KEY_ENV: KEY, "MPESA_SYNC_DSN": None, "MPESA_SYNC_DARAJA_URL": None, **SECRETS, **extra}


def set_args(db: Database, bar: Any, *extra: str) -> list[str]:
    return [
        "settings",
        "set",
        "--dsn",
        db.dsn,
        "--bar",
        str(bar),
        "--environment",
        "sandbox",
        "--shortcode",
        "174379",
        *extra,
    ]


def assert_no_secret(text: str) -> None:
    for value in (*SECRETS.values(), TOKEN):
        assert value not in text


# -- settings set ----------------------------------------------------------------


def test_set_activates_then_deactivates(db: Database) -> None:
    bar = db.add_bar()
    on = run_cli("--log-level", "debug", *set_args(db, bar, "--active"), env=env())
    assert on.code == 0, on.stderr
    assert f"saved sandbox credentials for bar {bar} (active)" in on.stdout
    assert "mpesa_enabled is now true" in on.stdout
    assert db.enabled(bar) is True
    off = run_cli(*set_args(db, bar, "--inactive", "--format", "json"), env=env())
    assert off.code == 0, off.stderr
    result = json.loads(off.stdout)
    assert result["success"] is True and result["mpesa_enabled"] is False
    assert result["attempts"] == 1 and result["bar_id"] == str(bar)
    assert db.enabled(bar) is False
    assert_no_secret(on.stdout + on.stderr + off.stdout + off.stderr)
    [row] = db.query("SELECT consumer_key_enc FROM mpesa_credentials")
    cipher = CredentialCipher(base64.b64decode(KEY))
    assert (
        cipher.decrypt(bytes(row["consumer_key_enc"]), field_name="consumer_key_enc", bar_id=bar)
        == SECRETS["MPESA_SYNC_CONSUMER_KEY"]
    )


@pytest.mark.parametrize(
    ("args", "extra_env", "needle"),
    [
        (["--active"], {"MPESA_SYNC_PASSKEY": None}, "MPESA_SYNC_PASSKEY"),
        (["--active"], {KEY_ENV: None}, KEY_ENV),
        (["--active"], {KEY_ENV: "bm90IDMyIGJ5dGVz"}, KEY_ENV),
        ([], {}, "give --active or --inactive"),
        (["--active", "--shortcode", "12"], {}, "invalid business_shortcode"),
        (["--active", "--consumer-key", "x"], {}, "No such option"),
    ],
    ids=[
        "no-passkey",
        "no-encryption-key",
        "short-encryption-key",
        "no-active-flag",
        "bad-shortcode",
        "secret-as-argument",
    ],
)
def test_set_refuses_bad_input_in_one_line_and_changes_nothing(
    db: Database, args: list[str], extra_env: dict[str, str | None], needle: str
) -> None:
    bar = db.add_bar()
    run_cli(*set_args(db, bar, "--active"), env=env())
    before = db.saved_state(bar), db.query("SELECT * FROM mpesa_sync.alerts")
    result = run_cli(*set_args(db, bar), *args, env=env(**extra_env))
    assert result.code == 2
    assert_one_line_error(result.stderr, needle)
    assert_no_secret(result.stderr + result.stdout)
    assert (db.saved_state(bar), db.query("SELECT * FROM mpesa_sync.alerts")) == before


def test_set_for_an_unknown_bar_is_exit_2(db: Database) -> None:
    result = run_cli(*set_args(db, uuid.UUID(int=5), "--active"), env=env())
    assert result.code == 2
    assert_one_line_error(result.stderr, f"no bar {uuid.UUID(int=5)}")
    assert db.query("SELECT * FROM mpesa_credentials") == []


def test_set_asks_for_missing_secrets_with_a_hidden_prompt(db: Database) -> None:
    bar = db.add_bar()
    child_env = {k: v for k, v in os.environ.items() if k not in SECRETS}
    child_env[KEY_ENV] = KEY
    answers = [
        ("Consumer key", SECRETS["MPESA_SYNC_CONSUMER_KEY"]),
        ("Consumer secret", SECRETS["MPESA_SYNC_CONSUMER_SECRET"]),
        ("Passkey", SECRETS["MPESA_SYNC_PASSKEY"]),
    ]
    code, screen = run_on_terminal(set_args(db, bar, "--active"), child_env, answers)
    assert code == 0, screen
    assert "saved sandbox credentials" in screen
    assert_no_secret(screen)  # typed, but never echoed
    [row] = db.query("SELECT passkey_enc FROM mpesa_credentials")
    cipher = CredentialCipher(base64.b64decode(KEY))
    assert (
        cipher.decrypt(bytes(row["passkey_enc"]), field_name="passkey_enc", bar_id=bar)
        == SECRETS["MPESA_SYNC_PASSKEY"]
    )


# -- settings show ----------------------------------------------------------------


def test_show_prints_the_state_without_secrets(db: Database) -> None:
    bar = db.add_bar()
    run_cli(*set_args(db, bar, "--active"), env=env())
    text = run_cli("settings", "show", "--dsn", db.dsn, "--bar", str(bar), env=env())
    assert text.code == 0, text.stderr
    assert f"bar {bar}: mpesa_enabled true (in sync)" in text.stdout
    assert "sandbox" in text.stdout and "174379" in text.stdout and "passkey set" in text.stdout
    shown = run_cli(
        "settings", "show", "--dsn", db.dsn, "--bar", str(bar), "--format", "json", env=env()
    )
    data = json.loads(shown.stdout)
    assert data["mpesa_enabled"] is True and data["in_sync"] is True
    [cred] = data["credentials"]
    assert cred["environment"] == "sandbox" and cred["is_active"] is True
    assert cred["has_consumer_key"] and cred["has_consumer_secret"] and cred["has_passkey"]
    assert not any(k.endswith("_enc") for k in cred)
    stored = db.query(
        "SELECT consumer_key_enc, consumer_secret_enc, passkey_enc FROM mpesa_credentials"
    )[0]
    for blob in stored.values():
        assert bytes(blob).hex() not in text.stdout + shown.stdout
    assert_no_secret(text.stdout + shown.stdout)


def test_show_reports_drift_and_a_bar_without_credentials(db: Database) -> None:
    bar = db.add_bar()
    db.force_enabled(bar, True)
    result = run_cli("settings", "show", "--dsn", db.dsn, "--bar", str(bar), env=env())
    assert result.code == 0
    assert "mpesa_enabled true (drifted, expected false)" in result.stdout
    assert "no credentials" in result.stdout


@pytest.mark.parametrize(
    ("bar", "needle"),
    [
        (str(uuid.UUID(int=9)), "no bar"),
        ("not-a-uuid", "'not-a-uuid' is not a valid UUID"),
    ],
    ids=["unknown", "malformed"],
)
def test_show_refuses_a_bad_bar(db: Database, bar: str, needle: str) -> None:
    result = run_cli("settings", "show", "--dsn", db.dsn, "--bar", bar, env=env())
    assert result.code == 2
    assert_one_line_error(result.stderr, needle)


# -- settings check (against a local fake Daraja) -----------------------------------


class FakeDaraja(ThreadingHTTPServer):
    """Daraja's OAuth endpoint: accepts exactly one key and secret."""

    def __init__(self, key: str, secret: str) -> None:
        super().__init__(("127.0.0.1", 0), _DarajaHandler)
        self.expected = "Basic " + base64.b64encode(f"{key}:{secret}".encode()).decode()
        self.requests: list[dict[str, Any]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _DarajaHandler(QuietHandler):
    server: FakeDaraja

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        auth = self.headers.get("Authorization", "")
        self.server.requests.append(
            {
                "path": parts.path,
                "query": parse_qs(parts.query),
                "authorized": auth == self.server.expected,
            }
        )
        if parts.path != "/oauth/v1/generate":
            self._reply(404, {"errorMessage": "Resource not found"})
        elif auth == self.server.expected:
            self._reply(200, {"access_token": TOKEN, "expires_in": "3599"})
        else:
            self._reply(
                400,
                {
                    "requestId": "1-2-3",
                    "errorCode": "400.008.01",
                    "errorMessage": "Invalid Authentication passed",
                },
            )

    def _reply(self, status: int, body: dict[str, Any]) -> None:
        self.reply(status, json.dumps(body).encode(), "application/json")


@pytest.fixture
def daraja() -> Iterator[FakeDaraja]:
    key, secret = SECRETS["MPESA_SYNC_CONSUMER_KEY"], SECRETS["MPESA_SYNC_CONSUMER_SECRET"]
    with serving(FakeDaraja(key, secret)) as server:
        yield server


def check(db: Database, bar: Any, *args: str, **extra_env: str | None) -> Any:
    return run_cli(
        "settings", "check", "--dsn", db.dsn, "--bar", str(bar), *args, env=env(**extra_env)
    )


def test_check_accepted_credentials_exit_0(db: Database, daraja: FakeDaraja) -> None:
    bar = db.add_bar()
    run_cli(*set_args(db, bar, "--active"), env=env())
    result = check(db, bar, MPESA_SYNC_DARAJA_URL=daraja.url)  # the URL from the environment
    assert result.code == 0, result.stderr
    assert f"sandbox: accepted by {daraja.url} (HTTP 200)" in result.stdout
    assert daraja.requests == [
        {
            "path": "/oauth/v1/generate",
            "query": {"grant_type": ["client_credentials"]},
            "authorized": True,
        }
    ]
    assert_no_secret(result.stdout + result.stderr)


def test_check_rejected_credentials_exit_1(db: Database, daraja: FakeDaraja) -> None:
    bar = db.add_bar()
    run_cli(*set_args(db, bar, "--active"), env=env())
    run_cli(
        *set_args(db, bar, "--active"),
        "--environment",
        "production",
        env=env(MPESA_SYNC_CONSUMER_SECRET="wrong-" + uuid.uuid4().hex),
    )
    result = check(db, bar, "--daraja-url", daraja.url, "--format", "json")
    assert result.code == 1
    report = json.loads(result.stdout)
    assert report["ok"] is False
    assert [
        (c["environment"], c["ok"], c["status_code"], c["message"]) for c in report["checks"]
    ] == [
        ("production", False, 400, "Invalid Authentication passed"),
        ("sandbox", True, 200, "credentials accepted"),
    ]
    only = check(db, bar, "--daraja-url", daraja.url, "--environment", "sandbox")
    assert only.code == 0 and "production" not in only.stdout
    assert_no_secret(result.stdout + only.stdout)


def test_check_unreachable_daraja_or_nothing_to_check_is_exit_2(db: Database) -> None:
    bar = db.add_bar()
    nothing = check(db, bar, "--daraja-url", "http://127.0.0.1:1")
    assert nothing.code == 2
    assert_one_line_error(nothing.stderr, "has no credentials to check")
    run_cli(*set_args(db, bar, "--active"), env=env())
    down = check(db, bar, "--daraja-url", "http://127.0.0.1:1", "--timeout", "2")
    assert down.code == 2
    assert_one_line_error(down.stderr, "cannot reach Daraja at http://127.0.0.1:1")
    assert_no_secret(down.stderr)
