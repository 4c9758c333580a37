"""The settings API's redaction (mpesa_sync/credentials.py), without a database.

No database (marked ``no_database``).
"""

from __future__ import annotations

import pytest

from mpesa_sync.credentials import _Redactor

pytestmark = pytest.mark.no_database


def test_redactor_replaces_every_form_of_a_value() -> None:
    blob = bytes.fromhex("01deadbeefcafe")
    redact = _Redactor(["consumer-KEY-123", blob, "abc", ""])
    text = "key consumer-KEY-123, bytea \\x01deadbeefcafe, hex 01deadbeefcafe, short abc"
    assert redact(text) == "key [redacted], bytea [redacted], hex [redacted], short abc"
