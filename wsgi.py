"""WSGI entry point: ``gunicorn wsgi:app`` and ``flask --app wsgi ...``."""

import sys

from pighand_token.app import create_app
from pighand_token.core.errors import SettingsError

try:
    app = create_app()
except SettingsError as exc:
    # One line naming the setting, then stop: gunicorn and every flask
    # command refuse to start on a bad value.
    print(f"pighand-token: bad setting: {exc.message}", file=sys.stderr)
    raise SystemExit(2) from None
