"""gunicorn settings, read from the service's own settings: for those who
serve with gunicorn's stock gthread worker instead of ``pighand-token serve``.

    python3 -m pip install -e '.[gunicorn]' && gunicorn -c gunicorn.conf.py

Run it from the project folder (it loads ``wsgi:app``). gthread reads a
request's headers on one of its threads and has no header-read timeout, so a
few callers that send their headers slowly hold every thread (8 slow
connections stall a worker of 4 threads); put it behind a proxy that
buffers requests (nginx), or serve with ``pighand-token serve``, whose
header reading costs no thread.
"""

import os
import shutil
import sys

from pighand_token.config import load_settings
from pighand_token.core.errors import SettingsError
from pighand_token.server import DEFAULT_THREADS, check_bind, check_stored_secrets, default_workers, metrics_dir

try:
    _settings = load_settings()
    check_bind(_settings)
except SettingsError as exc:
    print(f"pighand-token: bad setting: {exc.message}", file=sys.stderr)
    sys.exit(2)

bind = [f"{_settings.host}:{_settings.port}"]
workers = _settings.workers or default_workers()
# Threaded workers: a slow platform call blocks one thread, not a worker.
worker_class = "gthread"
threads = _settings.threads or DEFAULT_THREADS
keepalive = 5
# Longer than the slowest refresh (retries included) so no request is cut.
timeout = max(30, int(_settings.upstream_timeout * 4 + 10))
graceful_timeout = 8
accesslog = None
errorlog = "-"
loglevel = _settings.log_level
wsgi_app = "wsgi:app"

# Metrics: every worker writes its samples here and a scrape of any worker
# sums them all (prometheus-client's multiprocess mode). It must be set before
# a worker imports prometheus_client.
_METRICS_DIR, _OWN_METRICS_DIR = metrics_dir()
os.environ["PROMETHEUS_MULTIPROC_DIR"] = _METRICS_DIR

# After the metrics folder is set: this imports prometheus_client, and the
# workers gunicorn forks from here keep the value class it picked.
try:
    check_stored_secrets(_settings)
except SettingsError as exc:
    print(f"pighand-token: bad setting: {exc.message}", file=sys.stderr)
    sys.exit(2)


def on_exit(server):
    if _OWN_METRICS_DIR:
        shutil.rmtree(_METRICS_DIR, ignore_errors=True)


def post_worker_init(worker):
    from pighand_token.app import start_background

    start_background(worker.wsgi)


def worker_exit(server, worker):
    from pighand_token.app import stop_background

    app = getattr(worker, "wsgi", None)
    if app is not None and hasattr(app, "extensions"):
        stop_background(app)
