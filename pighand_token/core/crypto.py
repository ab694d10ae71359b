"""Secrets at rest: Fernet (AES-128-CBC + HMAC-SHA256) from `cryptography`.

``encryption_key`` holds one or more keys separated by commas: the first
encrypts, all decrypt (MultiFernet), so a key is rotated by putting a new one
first, running ``pighand-token secrets rotate``, then dropping the old.

Encrypted values are stored as ``fernet:<token>``. A value without the prefix
is a plaintext row written by the original Node service: it is read as it is
and converted by ``secrets encrypt``.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from ..config import Settings
from .errors import PighandError, SettingsError

log = logging.getLogger(__name__)

PREFIX = "fernet:"


class DecryptError(PighandError):
    """A stored value was encrypted with a key that is not configured."""

    status = 500


class Cipher:
    def __init__(self, keys: list[str]) -> None:
        if not keys:
            raise ValueError("at least one key")
        self._fernet = MultiFernet([Fernet(k.encode()) for k in keys])
        self.key_count = len(keys)

    def encrypt(self, plaintext: str) -> str:
        return PREFIX + self._fernet.encrypt(plaintext.encode()).decode()

    def decrypt(self, stored: str) -> str:
        if not is_encrypted(stored):
            return stored
        try:
            return self._fernet.decrypt(stored[len(PREFIX):].encode()).decode()
        except InvalidToken:
            raise DecryptError(
                "a stored secret cannot be decrypted with any configured encryption_key") from None

    def opens(self, stored: str) -> bool:
        """Whether a configured key decrypts ``stored`` (plaintext: True)."""
        try:
            self.decrypt(stored)
            return True
        except DecryptError:
            return False

    def rotate(self, stored: str) -> str:
        """Re-encrypt with the first key (plaintext rows get encrypted)."""
        if not is_encrypted(stored):
            return self.encrypt(stored)
        try:
            return PREFIX + self._fernet.rotate(stored[len(PREFIX):].encode()).decode()
        except InvalidToken:
            raise DecryptError(
                "a stored secret cannot be decrypted with any configured encryption_key") from None


def is_encrypted(stored: str) -> bool:
    return stored.startswith(PREFIX)


def key_file(settings: Settings) -> Path:
    """Where development and testing keep a generated key: the instance
    folder beside the SQLite file."""
    return Path(settings.sqlite_path).resolve().parent / "encryption.key"


def load_cipher(settings: Settings) -> Cipher:
    """The configured keys; outside production, a key generated once in the
    instance folder (mode 0600) when none is configured."""
    if settings.encryption_key:
        keys = [k.strip() for k in settings.encryption_key.split(",") if k.strip()]
        if not keys:
            raise SettingsError(f"encryption_key={settings.encryption_key!r} is invalid: it names no key; allowed "
                                "values are one or more Fernet keys separated by commas")
        for index, key in enumerate(keys, 1):
            try:
                Fernet(key.encode())
            except ValueError:
                raise SettingsError(
                    f"encryption_key=<key {index} of {len(keys)}> is invalid: allowed values are Fernet keys "
                    "(32 url-safe base64-encoded bytes; make one with "
                    "python3 -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())')"
                ) from None
        return Cipher(keys)
    path = key_file(settings)
    return Cipher([_read_or_create(path)])


def _read_or_create(path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        # Another worker starting at the same moment may still be writing it.
        for _ in range(50):
            key = path.read_text().strip()
            if key:
                return key
            time.sleep(0.02)
        raise SettingsError(f"encryption key file {path} is empty") from None
    key = Fernet.generate_key().decode()
    with os.fdopen(fd, "w") as handle:
        handle.write(key + "\n")
    log.warning("no encryption_key configured: generated one in %s (keep it: stored credentials are encrypted with it)",
                path)
    return key
