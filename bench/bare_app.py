"""Bare Flask apps: the floor our service is compared against.

Both serve the same route as the service, so URL matching costs the same:

- ``bare_app:constant_app``: answers a constant in the envelope.
- ``bare_app:redis_app``: one Redis GET of ``BENCH_REDIS_KEY``, in the envelope.

Nothing connects at import time; the Redis client is made on first request.
Settings come from ``BENCH_REDIS_HOST``, ``BENCH_REDIS_PORT`` and
``BENCH_REDIS_KEY``.
"""

from __future__ import annotations

import os

import redis
from flask import Flask, Response, jsonify

constant_app = Flask("bare_constant")
redis_app = Flask("bare_redis")

_client: redis.Redis | None = None
_key: str = ""


@constant_app.get("/token/<platform>/<appid>")
def constant_token(platform: str, appid: str) -> Response:
    return jsonify(code=200, data="constant", error="")


def _redis() -> tuple[redis.Redis, str]:
    global _client, _key
    if _client is None:
        # Same client options as the service's Redis tier, so the comparison
        # only differs in what is done per request.
        _key = os.environ.get("BENCH_REDIS_KEY", "bench:bare:token")
        _client = redis.Redis(
            host=os.environ.get("BENCH_REDIS_HOST", "127.0.0.1"),
            port=int(os.environ.get("BENCH_REDIS_PORT", "6379")),
            socket_timeout=2.0, socket_connect_timeout=2.0,
            health_check_interval=30, decode_responses=True,
        )
    return _client, _key


@redis_app.get("/token/<platform>/<appid>")
def redis_token(platform: str, appid: str) -> Response:
    client, key = _redis()
    return jsonify(code=200, data=client.get(key), error="")
