"""API keys: who may ask for which token.

A key is shown once, when ``client add`` makes it; only its SHA-256 is
stored (keys are 256 random bits, so a slow password hash would add nothing).
Each worker keeps a view of the ``client`` table and reloads it every few
seconds, so a revoked key stops working everywhere within that time without a
database query per request.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import re
import secrets
import threading
import time
from collections.abc import Mapping
from typing import Any

from .domain import Client
from .errors import Forbidden, PighandError, Unauthorized
from .ports import ClientRepository, Clock
from .process import after_fork

log = logging.getLogger(__name__)

KEY_PREFIX = "pht_"
NAME_PATTERN = re.compile(r"[A-Za-z0-9_.-]{1,64}")


LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost"})


def api_key_from(environ: Mapping[str, Any]) -> str | None:
    """The caller's key: ``X-Api-Key`` when it is sent, else
    ``Authorization: Bearer <key>``.

    ``X-Api-Key`` names this service alone, while ``Authorization`` is shared
    with whatever sits in between (a gateway's Basic or Bearer credentials),
    so the specific header wins and the general one is read only without it.
    """
    key: str = environ.get("HTTP_X_API_KEY", "")
    if key:
        return key
    scheme, _, credentials = environ.get("HTTP_AUTHORIZATION", "").partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    return None


def is_loopback(address: str | None) -> bool:
    return bool(address) and (address in LOOPBACK or str(address).startswith("127."))


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class ClientRegistry:
    """The API clients as a view in memory, for the key check of every
    request: no SQL on a request's path once the first view is loaded. A
    thread of the process reloads the view every ``reload_s`` (so a revoked
    key stops working within about that long) and writes the batched
    last-use times; while the store is slow or down the last good view goes
    on serving and the thread waits, not the callers."""

    def __init__(self, repo: ClientRepository, clock: Clock, *, reload_s: float = 2.0,
                 touch_every_s: float = 60.0) -> None:
        self.repo = repo
        self._clock = clock
        self._reload_s = reload_s
        self._touch_every_s = touch_every_s
        self._by_hash: dict[str, Client] | None = None
        self._touched: dict[str, float] = {}
        self._pending_touches: dict[str, float] = {}
        self._mutex = threading.Lock()
        self._refreshing = False
        # A forked worker has no refresher until it starts its own.
        after_fork(self, ClientRegistry._forked)
        self._failing = False

    def authenticate(self, key: str | None) -> Client:
        if not key:
            raise Unauthorized("an API key is required: send 'Authorization: Bearer <key>' or 'X-Api-Key: <key>'")
        digest = hash_key(key)
        client = self._view().get(digest)
        # The dict lookup already matched; compare_digest keeps the final
        # check constant-time all the same.
        if client is None or not hmac.compare_digest(client.key_hash, digest):
            raise Unauthorized("unknown or revoked API key")
        self._touch(client)
        return client

    def known(self, key: str) -> Client | None:
        """The client owning ``key``, or None; for the hot path, which leaves
        every refusal to the normal path so its answers stay identical."""
        digest = hash_key(key)
        client = self._view().get(digest)
        if client is None or not hmac.compare_digest(client.key_hash, digest):
            return None
        self._touch(client)
        return client

    @staticmethod
    def authorize(client: Client, platform: str, appid: str) -> None:
        if not client.allows(platform, appid):
            raise Forbidden(f"client {client.name!r} may not use {platform} appid {appid!r}")

    def invalidate(self) -> None:
        """Load the view afresh on next use (a command that changed clients
        in this process)."""
        with self._mutex:
            self._by_hash = None

    def _view(self) -> dict[str, Client]:
        view = self._by_hash
        if not self._refreshing:
            self._start_refresher()
        if view is not None:
            return view
        with self._mutex:  # the first use in this process: nothing to serve yet
            if self._by_hash is None:
                self._by_hash = self._load()
            return self._by_hash

    def _forked(self) -> None:
        self._refreshing = False
        self._mutex = threading.Lock()

    def _load(self) -> dict[str, Client]:
        return {c.key_hash: c for c in self.repo.list()}

    def _start_refresher(self) -> None:
        with self._mutex:
            if self._refreshing:
                return
            # Started in the process that serves (a forked worker starts its own).
            self._refreshing = True
            threading.Thread(target=self._refresh_forever, name="pighand-clients", daemon=True).start()

    def _refresh_forever(self) -> None:
        while True:
            time.sleep(self._reload_s)
            self.refresh()

    def refresh(self) -> None:
        """Reload the view and write the pending last-use times (the
        refresher's one round; a failure keeps the last view)."""
        try:
            view = self._load()
        except PighandError as exc:
            if not self._failing:
                log.warning("cannot reload API clients, serving the last view: %s", exc.message)
            self._failing = True
        else:
            if self._failing:
                log.info("API clients reloaded again")
            self._failing = False
            with self._mutex:
                self._by_hash = view
        with self._mutex:
            pending, self._pending_touches = self._pending_touches, {}
        for name, at in pending.items():
            try:
                self.repo.touch(name, at)
            except PighandError as exc:
                log.warning("cannot record last use of client %s: %s", name, exc.message)
                break

    def _touch(self, client: Client) -> None:
        """Note the last use (at most once per ``touch_every_s`` per client);
        the refresher writes it."""
        now = self._clock()
        if now - self._touched.get(client.name, -math.inf) < self._touch_every_s:
            return
        self._touched[client.name] = now
        self._pending_touches[client.name] = now
