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

bp = Blueprint("callbacks", __name__)


@bp.route("/callback/<platform>/<appid>", methods=["GET", "POST"])
def callback(platform: str, appid: str) -> Response:
    container: Any = current_app.extensions["pighand"]
    body = request.get_data(cache=False) if request.method == "POST" else b""
    reply = container.callbacks.handle(platform, appid, request.method, request.args.to_dict(), body,
                                       request_id=g.get("request_id"), remote_addr=request.remote_addr)
    return Response(reply.body, content_type=reply.content_type)
