"""The optional credential check: Daraja's OAuth call with a bar's stored key and secret.

``GET {base}/oauth/v1/generate?grant_type=client_credentials`` with HTTP Basic
auth is the only full validity check Daraja offers. The base URL is a setting
(``--daraja-url`` / ``MPESA_SYNC_DARAJA_URL``), so tests run it against a
local fake. The token Daraja returns is never kept, printed or logged.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from typing import Any

import httpx
import psycopg

from mpesa_sync.crypto import CredentialCipher
from mpesa_sync.errors import BarNotFound, DarajaUnavailable, InvalidSettings
from mpesa_sync.queries import query

logger = logging.getLogger(__name__)

BASE_URL_ENV = "MPESA_SYNC_DARAJA_URL"
DEFAULT_BASE_URLS = {
    "sandbox": "https://sandbox.safaricom.co.ke",
    "production": "https://api.safaricom.co.ke",
}
_OAUTH_PATH = "/oauth/v1/generate"
_MAX_MESSAGE = 200


@dataclass(frozen=True)
class CheckResult:
    """Daraja's answer for one credential row."""

    environment: str
    base_url: str
    ok: bool
    status_code: int
    message: str

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def check_settings(
    conn: psycopg.Connection[Any],
    bar_id: uuid.UUID,
    *,
    cipher: CredentialCipher,
    environment: str | None = None,
    base_url: str | None = None,
    timeout: float = 10.0,
) -> list[CheckResult]:
    """Try the OAuth call with each of the bar's credential rows (or one environment's).

    ``base_url`` replaces Daraja's own URL for every environment. Raises
    DarajaUnavailable when Daraja cannot be reached at all.
    """
    rows = conn.execute(
        query("credentials_for_check"), {"bar_id": bar_id, "environment": environment}
    ).fetchall()
    if not rows:
        if conn.execute(query("bar_settings"), {"bar_id": bar_id}).fetchone() is None:
            raise BarNotFound(f"unknown bar_id: no bar {bar_id}", field="bar_id")
        which = f"{environment} credentials" if environment else "credentials"
        raise InvalidSettings(f"bar {bar_id} has no {which} to check", field="environment")
    results = []
    with httpx.Client(timeout=timeout, follow_redirects=False) as client:
        for env, key_enc, secret_enc in rows:
            key = cipher.decrypt(bytes(key_enc), field_name="consumer_key_enc", bar_id=bar_id)
            secret = cipher.decrypt(
                bytes(secret_enc), field_name="consumer_secret_enc", bar_id=bar_id
            )
            url = (base_url or DEFAULT_BASE_URLS[env]).rstrip("/")
            results.append(_oauth_check(client, env, url, key, secret))
    return results


def _oauth_check(
    client: httpx.Client, environment: str, base_url: str, key: str, secret: str
) -> CheckResult:
    try:
        response = client.get(
            base_url + _OAUTH_PATH,
            params={"grant_type": "client_credentials"},
            auth=httpx.BasicAuth(key, secret),
        )
    except httpx.HTTPError as exc:
        raise DarajaUnavailable(
            f"cannot reach Daraja at {base_url}: {type(exc).__name__}: {exc}"
        ) from exc
    ok = response.status_code == 200 and _has_token(response)
    if ok:
        message = "credentials accepted"
    else:
        message = _error_message(response)
        for value in (key, secret):  # in case the server echoed what it was sent
            message = message.replace(value, "[redacted]")
    logger.info(
        "Daraja %s check for %s: HTTP %d, %s",
        environment,
        base_url,
        response.status_code,
        "accepted" if ok else "rejected",
        extra={"action": "daraja_check"},
    )
    return CheckResult(environment, base_url, ok, response.status_code, message)


def _has_token(response: httpx.Response) -> bool:
    try:
        return bool(response.json().get("access_token"))
    except (ValueError, AttributeError):
        return False


def _error_message(response: httpx.Response) -> str:
    """Daraja's errorMessage when it sent one, else the status line."""
    try:
        body = response.json()
        text = str(body.get("errorMessage") or body.get("error_description") or "")
    except (ValueError, AttributeError):
        text = ""
    text = " ".join(text.split())[:_MAX_MESSAGE]
    return text or f"HTTP {response.status_code} {response.reason_phrase}".strip()
