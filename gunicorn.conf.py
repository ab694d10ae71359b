"""gunicorn settings, read from the service's own settings."""

import multiprocessing
import os
import shutil
import sys
import tempfile

from pighand_token.auth import is_loopback
from pighand_token.config import load_settings
from pighand_token.errors import SettingsError

try:
    _settings = load_settings()
except SettingsError as exc:
    print(f"pighand-token: bad setting: {exc.message}", file=sys.stderr)
    sys.exit(2)

if not _settings.auth_required and not is_loopback(_settings.host.strip("[]")):
    # Without keys anyone who reaches the port gets every token.
    print(f"pighand-token: bad setting: host={_settings.host!r} is invalid: with auth_required=false the "
          "server binds to loopback only (127.0.0.1, ::1); set auth_required=true to serve other hosts",
          file=sys.stderr)
    sys.exit(2)

bind = [f"{_settings.host}:{_settings.port}"]
workers = _settings.workers or min(2 * multiprocessing.cpu_count() + 1, 8)
# Threaded workers: a slow platform call blocks one thread, not a worker,
# and keep-alive saves a TCP handshake per request. gunicorn's gthread, except
# that a new connection goes to the worker holding the fewest (see worker.py).
worker_class = "pighand_token.worker.TokenWorker"
# A thread stays on a busy keep-alive connection while no other connection
# waits (worker.py), so threads bound the keep-alive connections a worker
# serves at full speed; one connection more than threads sends every request
# of one connection round the poller. More CPUs, more callers expected.
threads = _settings.threads or min(max(16, 8 * multiprocessing.cpu_count()), 64)
keepalive = 5
# Longer than the slowest refresh (retries included) so no request is cut.
timeout = max(30, int(_settings.upstream_timeout * 4 + 10))
graceful_timeout = 10
accesslog = None
errorlog = "-"
loglevel = _settings.log_level
wsgi_app = "wsgi:app"


# Metrics: every worker writes its samples here and a scrape of any worker
# sums them all (prometheus-client's multiprocess mode). It must be set before
# a worker imports prometheus_client; a fresh folder per master.
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="pighand-metrics-")
    _OWN_METRICS_DIR = True
else:
    _OWN_METRICS_DIR = False


def on_starting(server):
    path = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    os.makedirs(path, exist_ok=True)
    for name in os.listdir(path):  # samples of a previous run
        if name.endswith(".db"):
            os.remove(os.path.join(path, name))


def on_exit(server):
    if _OWN_METRICS_DIR:
        shutil.rmtree(os.environ["PROMETHEUS_MULTIPROC_DIR"], ignore_errors=True)


def pre_fork(server, worker):
    from pighand_token.worker import assign_slot

    assign_slot(server, worker)


def child_exit(server, worker):
    from prometheus_client import multiprocess

    from pighand_token.worker import release_slot

    release_slot(server, worker)
    multiprocess.mark_process_dead(worker.pid)


def post_worker_init(worker):
    from pighand_token.app import start_scheduler

    start_scheduler(worker.wsgi)


def worker_exit(server, worker):
    from pighand_token.app import stop_scheduler

    app = getattr(worker, "wsgi", None)
    if app is not None and hasattr(app, "extensions"):
        stop_scheduler(app)
