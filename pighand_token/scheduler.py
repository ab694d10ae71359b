"""Refreshes due tokens on a timer (flask-apscheduler).

Every web worker runs the timer, so the service keeps refreshing whichever
workers are alive; a tick does work only if it claims the tick lease, which
lasts most of an interval, so across all workers and instances one tick per
interval runs. Each refresh also takes the per-token lock a GET takes.

A tick spreads its due tokens over most of the interval (``SPREAD``, inside
the lease, so two ticks never overlap), soonest-expiring first, at most
``refresh_rate_limit`` refreshes a second: 10,000 accounts authorized in a
burst come due together, and the platform sees a steady trickle, not a burst.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime

from apscheduler.schedulers.background import BackgroundScheduler
from flask import Flask
from flask_apscheduler import APScheduler

from .bootstrap import Container
from .core.errors import PighandError
from .core.service import RefreshReport

log = logging.getLogger(__name__)

TICK_LEASE = "scheduler-tick"
LEASE = 0.9  # of the interval: one tick per interval across the deployment
SPREAD = 0.8  # of the interval: when the tick starts no more refreshes


class RefreshScheduler:
    def __init__(self, container: Container) -> None:
        self.container = container
        self.interval_s = container.settings.corn_interval
        self._aps: APScheduler | None = None

    def tick(self) -> RefreshReport | None:
        """Run one tick if no other worker ran one in this interval."""
        metrics = self.container.service.metrics
        try:
            claimed = self.container.locks.claim(TICK_LEASE, lease_s=self.interval_s * LEASE)
        except PighandError as exc:
            log.warning("scheduler tick skipped: %s", exc.message)
            metrics.scheduler_tick("error")
            return None
        if not claimed:
            metrics.scheduler_tick("skipped")
            return None
        started = time.monotonic()
        try:
            report = self.container.service.refresh_due(spread_s=self.interval_s * SPREAD)
        except PighandError as exc:
            log.error("scheduler tick failed: %s", exc.message)
            metrics.scheduler_tick("error")
            return None
        metrics.scheduler_tick("ran", len(report.failed))
        log.info("scheduler tick: %d refreshed, %d fresh, %d failed, %d deferred in %.1f s",
                 len(report.refreshed), len(report.fresh), len(report.failed), len(report.deferred),
                 time.monotonic() - started)
        return report

    def _safe_tick(self) -> None:
        try:
            self.tick()
        except Exception:  # noqa: BLE001 - a failing tick must not stop the timer
            log.exception("scheduler tick failed")

    def start(self, app: Flask) -> None:
        if self._aps is not None:
            return
        aps = APScheduler(scheduler=BackgroundScheduler(daemon=True))
        aps.init_app(app)
        # First tick at once, so tokens are warm before the first request.
        aps.add_job(id="refresh_due", func=self._safe_tick, trigger="interval", seconds=self.interval_s,
                    next_run_time=datetime.now(), max_instances=1, coalesce=True)
        aps.start()
        self._aps = aps
        log.info("refresh scheduler started: every %d s", self.interval_s)

    def stop(self) -> None:
        if self._aps is not None:
            self._aps.shutdown(wait=False)
            self._aps = None

    @property
    def running(self) -> bool:
        return self._aps is not None
