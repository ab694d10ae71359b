"""Callbacks: what third-party platforms push (tickets, authorizations).

No API key here: the platform cannot send one. Each message is
authenticated by the platform's signature and decrypted with the app's key
(the provider's part); the answer the platform waits for (``success``) is
given only once what the message carries is stored. Bodies over 64 KiB are
413 before they are read (``MAX_CONTENT_LENGTH``).
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, current_app, g, request
from werkzeug.exceptions import RequestEntityTooLarge

from ..core.callbacks import CallbackRequest

bp = Blueprint("callbacks", __name__)


def _body() -> bytes:
    """The raw body, at most ``MAX_CONTENT_LENGTH`` bytes (413 beyond).

    Werkzeug refuses a Content-Length over the limit, but a chunked body (no
    Content-Length, the server ending the stream: ``wsgi.input_terminated``)
    it cuts at the limit without a word: a message over 64 KiB would then be
    judged on its first 64 KiB (400, "not XML") instead of refused for its
    size. Such a body is read here, one byte past the limit at most."""
    if request.content_length is not None or "wsgi.input_terminated" not in request.environ:
        return request.get_data(cache=False)
    limit = int(current_app.config["MAX_CONTENT_LENGTH"])
    data = bytes(request.environ["wsgi.input"].read(limit + 1))
    if len(data) > limit:
        raise RequestEntityTooLarge()
    return data


@bp.route("/callback/<platform>/<appid>", methods=["GET", "POST"])
def callback(platform: str, appid: str) -> Response:
    container: Any = current_app.extensions["pighand"]
    body = _body() if request.method == "POST" else b""
    received = CallbackRequest(request.method, request.args.to_dict(),
                               {name.lower(): value for name, value in request.headers.items()}, body)
    reply = container.callbacks.handle(platform, appid, received, request_id=g.get("request_id"),
                                       remote_addr=request.remote_addr)
    return Response(reply.body, content_type=reply.content_type)
