"""An ISV with 10,000 authorizers: the scheduler working through their
tokens when they come due together, against the fake WeChat Open Platform.

One WeChat Open Platform component with 10,000 authorized accounts, seeded
in SQL as a deployment would hold them after a burst of authorizations: the
grants (``SqlAccountGrants``), one pushed ticket (``SqlTicketStore``) and
every authorizer's token, all entering their margin within the first
interval, soonest first in appid order. Then the shipped server (``serve``,
2 workers, scheduler on, ``corn_interval`` 60 s) runs its first tick; the
bench waits for it to end and reads, from the fake's call log, the platform
calls per second (the busiest 1 s window and the mean while the tick called),
from the server's log the tick's duration, and from /proc each worker's RSS.

Time is compressed: the burst is seeded as due at once (an hour and more of
a real deployment's life skipped), and the interval is 60 s instead of 300,
so one tick (48 s of refreshing, 0.8 of the interval) shows the pacing.
At 19 refreshes a second on average (20 in any second at most) that tick
reaches about 870 of the 10,000; the rest, which enter their margin last,
wait for the next ticks (the whole burst takes about 530 s).
"""

from __future__ import annotations

import bisect
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.harness import BenchError, rss_mb, running
from bench.ours import Store, shipped_server
from pighand_token.adapters.third_party import SqlAccountGrants, SqlTicketStore
from pighand_token.bootstrap import bootstrap
from pighand_token.config import load_settings
from pighand_token.core.domain import AccountGrant, PushedTicket, Token
from tests.fakes.wechat_open import AUTHORIZER_TOKEN_PATH, COMPONENT_TOKEN_PATH, FakeWeChatOpen

AUTHORIZERS = 10_000
RATE_LIMIT = 20  # refresh_rate_limit's default: the target
INTERVAL_S = 60
COMPONENT = "wxisvbenchcomponent"
COMPONENT_SECRET = "isv-bench-component-secret"
CALLBACK_TOKEN = "isvbenchtoken"
AES_KEY = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"
TOKEN_LIFE_S = 7200.0
_TICK = re.compile(r"scheduler tick: (\d+) refreshed, (\d+) fresh, (\d+) failed, (\d+) deferred in ([\d.]+) s")


@dataclass
class IsvScaleResult:
    authorizers: int
    interval_s: int
    rate_limit: int
    calls: int  # platform calls during the tick (component token included)
    authorizer_calls: int
    distinct_authorizers: int  # one call each: equals authorizer_calls
    soonest_first: bool  # authorizers called in the order their tokens enter their margin
    max_calls_per_s: int  # the busiest window [t, t + 1 s)
    mean_calls_per_s: float  # calls over the time from the first to the last
    tick_s: float  # the tick's duration, as the server logged it
    refreshed: int
    deferred: int
    failed: int
    seed_s: float
    status_s: float  # `pighand-token token status` listing every token, process start included
    status_rows: int
    workers_mb: list[float] = field(default_factory=list)


def busiest_second(times: list[float]) -> int:
    ordered = sorted(times)
    return max((bisect.bisect_left(ordered, t + 1.0) - i for i, t in enumerate(ordered)), default=0)


def seed(store: Store, fake: FakeWeChatOpen, authorizers: int) -> None:
    """The component credential (``platform add``), then, in process on the
    same store: the grants, a ticket the fake pushed, and the tokens."""
    store.command("platform", "add", "wechat_component", COMPONENT, "--secret", COMPONENT_SECRET,
                  "--callback-token", CALLBACK_TOKEN, "--encoding-aes-key", AES_KEY)
    fake.add_component(COMPONENT, COMPONENT_SECRET, CALLBACK_TOKEN, AES_KEY)  # no callback URL: nothing sent
    push = fake.push_ticket(COMPONENT)
    container = bootstrap(load_settings(environ=store.env(port=3050, schedule=False)))
    try:
        now = time.time()
        tickets = SqlTicketStore(container.db, container.cipher)
        created = float(push.message["CreateTime"])
        tickets.offer(PushedTicket("wechat_component", COMPONENT, push.message["ComponentVerifyTicket"], created,
                                   created + 12 * 3600, now))
        grants = SqlAccountGrants(container.db, container.cipher)
        with container.db.transaction():
            for i in range(authorizers):
                account = authorizer(i)
                refresh = fake.add_authorization(COMPONENT, account)
                grants.save(AccountGrant("wechat_authorizer", COMPONENT, account, refresh, "{}", now - 7000, now))
        # Authorized in one burst a token life ago: every token enters its
        # margin (one interval before expiry) within the first interval,
        # in appid order, and none expires during the tick.
        spread_s = INTERVAL_S - 10
        with container.db.transaction():
            for i in range(authorizers):
                expires_at = now + INTERVAL_S + 10 + spread_s * i / authorizers
                container.service.install("wechat_authorizer", f"{COMPONENT}:{authorizer(i)}",
                                          Token(f"seeded-{i}", expires_at, expires_at - TOKEN_LIFE_S))
    finally:
        container.db.close()


def authorizer(i: int) -> str:
    return f"wxisvauth{i:05d}"


def measure(tmp: Path, authorizers: int = AUTHORIZERS) -> IsvScaleResult:
    with FakeWeChatOpen() as fake:
        store = Store(tmp / "isv_scale.sqlite3", fake.base_url)
        began = time.perf_counter()
        seed(store, fake, authorizers)
        seed_s = time.perf_counter() - began
        fake.clear_calls()
        server = shipped_server("isv_scale", store, tmp, schedule=True, PIGHAND_CORN_INTERVAL=str(INTERVAL_S),
                                PIGHAND_REFRESH_RATE_LIMIT=str(RATE_LIMIT))
        with running(server):
            # The first tick runs at start and spreads over 0.8 of the interval.
            deadline = time.monotonic() + INTERVAL_S + 30
            tick = None
            while tick is None and time.monotonic() < deadline:
                time.sleep(1)
                server.check_alive()
                tick = _TICK.search(server.log_text())
            if tick is None:
                raise BenchError(f"isv_scale: no scheduler tick ended within {INTERVAL_S + 30} s:\n"
                                 f"{server.log_tail()}")
            workers_mb = [round(rss_mb(pid), 1) for pid in server.worker_pids()]
            calls = [c for c in fake.calls if c["path"] in (AUTHORIZER_TOKEN_PATH, COMPONENT_TOKEN_PATH)]
            began = time.perf_counter()
            listing = store.command("token", "status")
            status_s = time.perf_counter() - began
        server.drop_log()
    refreshed, _fresh, failed, deferred, tick_s = (float(g) for g in tick.groups())
    times = [float(c["time"]) for c in calls]
    called = [str(c.get("authorizer_appid")) for c in calls if c["path"] == AUTHORIZER_TOKEN_PATH]
    span = max(times) - min(times) if len(times) > 1 else 0.0
    return IsvScaleResult(
        authorizers=authorizers, interval_s=INTERVAL_S, rate_limit=RATE_LIMIT, calls=len(calls),
        authorizer_calls=len(called), distinct_authorizers=len(set(called)),
        soonest_first=called == sorted(called), max_calls_per_s=busiest_second(times),
        mean_calls_per_s=round(len(times) / span, 2) if span else float(len(times)), tick_s=tick_s,
        refreshed=int(refreshed), deferred=int(deferred), failed=int(failed), seed_s=round(seed_s, 1),
        status_s=round(status_s, 2), status_rows=sum(COMPONENT in line for line in listing.splitlines()),
        workers_mb=workers_mb)


def describe(r: IsvScaleResult) -> str:
    return (f"isv_scale: {r.authorizers} authorizers, corn_interval {r.interval_s} s, target <= {r.rate_limit} "
            f"calls/s: {r.calls} platform calls in the first tick, busiest second {r.max_calls_per_s}, mean "
            f"{r.mean_calls_per_s:.1f}/s; tick {r.tick_s:.1f} s ({r.refreshed} refreshed, {r.deferred} deferred, "
            f"{r.failed} failed); one call per authorizer: {r.distinct_authorizers == r.authorizer_calls}; "
            f"soonest first: {r.soonest_first}; workers " + ", ".join(f"{mb:.1f} MB" for mb in r.workers_mb)
            + f"; token status: {r.status_rows} rows in {r.status_s:.1f} s (seeding took {r.seed_s:.1f} s)")


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory(prefix="pighand-bench-") as folder:
        print(describe(measure(Path(folder))))
