"""AES-256-GCM for the credential fields mpesa-sync writes.

A stored value (the ``*_enc`` bytea columns) is::

    0x01 || nonce (12 random bytes) || ciphertext || GCM tag (16 bytes)

with the associated data ``mpesa_sync:v1:<field>:<bar id>``, so a value copied
into another field or another bar's row fails to decrypt instead of being
used. WebCrypto's ``AES-GCM`` produces the same ``ciphertext || tag`` layout,
so a staff app can write values the Python side reads (docs/settings-api.md).

The key is 32 bytes, base64-encoded in ``MPESA_SYNC_ENCRYPTION_KEY``.
"""

from __future__ import annotations

import base64
import binascii
import os
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from mpesa_sync.errors import ConfigError, DecryptionFailed

KEY_ENV = "MPESA_SYNC_ENCRYPTION_KEY"

_VERSION = b"\x01"
_NONCE_BYTES = 12


@dataclass(frozen=True)
class CredentialCipher:
    """Encrypts and decrypts one bar's credential fields with one key."""

    key: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if len(self.key) != 32:
            raise ConfigError(f"{KEY_ENV} must be the base64 of exactly 32 bytes")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> CredentialCipher:
        """The cipher for the key in MPESA_SYNC_ENCRYPTION_KEY; ConfigError without one."""
        value = (os.environ if environ is None else environ).get(KEY_ENV, "").strip()
        if not value:
            raise ConfigError(
                f"{KEY_ENV} is not set: it must hold the base64 of a 32-byte key "
                "(for example: openssl rand -base64 32)"
            )
        try:
            key = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ConfigError(f"{KEY_ENV} is not valid base64") from exc
        return cls(key)

    def encrypt(self, plaintext: str, *, field_name: str, bar_id: uuid.UUID) -> bytes:
        """The stored form of one credential field."""
        nonce = os.urandom(_NONCE_BYTES)
        sealed = AESGCM(self.key).encrypt(
            nonce, plaintext.encode(), _associated_data(field_name, bar_id)
        )
        return _VERSION + nonce + sealed

    def decrypt(self, stored: bytes, *, field_name: str, bar_id: uuid.UUID) -> str:
        """The plaintext of one stored field; DecryptionFailed names the field, never a value."""
        if stored[:1] != _VERSION or len(stored) < 1 + _NONCE_BYTES + 16:
            raise DecryptionFailed(
                f"{field_name} of bar {bar_id} was not written by mpesa-sync (unknown format)"
            )
        nonce, sealed = stored[1 : 1 + _NONCE_BYTES], stored[1 + _NONCE_BYTES :]
        try:
            plain = AESGCM(self.key).decrypt(nonce, sealed, _associated_data(field_name, bar_id))
        except InvalidTag as exc:
            raise DecryptionFailed(
                f"{field_name} of bar {bar_id} does not decrypt with {KEY_ENV} "
                "(another key, or a value copied from another field or bar)"
            ) from exc
        return plain.decode()


def _associated_data(field_name: str, bar_id: uuid.UUID) -> bytes:
    return f"mpesa_sync:v1:{field_name}:{bar_id}".encode()
