"""Credential encryption (mpesa_sync/crypto.py).

No database (marked ``no_database``).
"""

from __future__ import annotations

import uuid

import pytest

from mpesa_sync import errors
from mpesa_sync.crypto import KEY_ENV, CredentialCipher

pytestmark = pytest.mark.no_database


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
