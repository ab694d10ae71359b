"""The platform API proxy's cost: a GET of a fake WeChat business API that
answers at once (``/cgi-bin/get_api_domain_ip``), called directly with the
token and through the hub (``/proxy/wechat/<appid>/cgi-bin/...``, shipped
server, 2 workers, production settings, a real key), under the same wrk load.
Printed: req/s and p50/p99 of both, and what the hub adds to each.

The fake platform is the stdlib's threading HTTP server, in this process: it
caps both runs alike, so req/s says how far the hub falls below what the
platform side can take, and the latencies what a call pays for the hop.

    python -m bench --only proxy          # with the other benchmarks' table
    python -m bench.proxy [--duration S]  # alone
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.harness import BenchError, WrkResult, run_wrk, running, wait_quiet
from bench.ours import Store, shipped_server, wait_all_workers, warm
from tests.fakes.wechat import API_PATH, FakeWeChat

APPID = "wx_bench_proxy"
SECRET = "bench-proxy-secret"
WARM_S = 1


@dataclass
class ProxyResult:
    direct: WrkResult
    proxied: WrkResult

    @property
    def added_p50_ms(self) -> float:
        return self.proxied.p50_ms - self.direct.p50_ms

    @property
    def added_p99_ms(self) -> float:
        return self.proxied.p99_ms - self.direct.p99_ms

    @property
    def rps_ratio(self) -> float:
        return self.proxied.requests_per_s / self.direct.requests_per_s if self.direct.requests_per_s else 0.0


def measure(tmp: Path, duration_s: int, quiet_s: float = 0.0) -> ProxyResult:
    with FakeWeChat() as wechat:
        wechat.add_app(APPID, SECRET)
        store = Store(tmp / "proxy.sqlite3", wechat.base_url)
        store.import_wechat([(APPID, SECRET)], tmp)
        store.add_client()
        server = shipped_server("proxy", store, tmp, schedule=False)
        with running(server):
            wait_all_workers(server)
            warm(server, store, [APPID])
            token = wechat.current_token(APPID)
            if token is None:
                raise BenchError("proxy: the hub fetched no token")
            direct_url = f"{wechat.base_url}{API_PATH}?access_token={token}"
            proxied_url = f"{server.base_url}/proxy/wechat/{APPID}{API_PATH}"
            run_wrk(direct_url, WARM_S, {})
            if quiet_s > 0:
                wait_quiet(quiet_s)
            direct = run_wrk(direct_url, duration_s, {})
            run_wrk(proxied_url, WARM_S, store.headers)
            if quiet_s > 0:
                wait_quiet(quiet_s)
            proxied = run_wrk(proxied_url, duration_s, store.headers)
            server.check_alive()
        rejected = [c for c in wechat.find(API_PATH) if c.get("errcode") not in (0, None)]
        if rejected or direct.errors or proxied.errors:
            raise BenchError(f"proxy: {len(rejected)} calls rejected by the platform, {direct.errors} direct and "
                             f"{proxied.errors} proxied errors")
        server.drop_log()
    return ProxyResult(direct=direct, proxied=proxied)


def describe(result: ProxyResult) -> str:
    d, p = result.direct, result.proxied
    return (f"proxy: direct {d.requests_per_s:.0f} req/s p50 {d.p50_ms:.2f} ms p99 {d.p99_ms:.2f} ms; "
            f"through the hub {p.requests_per_s:.0f} req/s p50 {p.p50_ms:.2f} ms p99 {p.p99_ms:.2f} ms; "
            f"added p50 {result.added_p50_ms:+.2f} ms, p99 {result.added_p99_ms:+.2f} ms, "
            f"req/s {result.rps_ratio:.2f}x direct")


def main(argv: Sequence[str] | None = None) -> int:
    import tempfile

    parser = argparse.ArgumentParser(prog="python -m bench.proxy", description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10, metavar="S", help="seconds per measured run (10)")
    parser.add_argument("--wait-quiet", type=float, default=0, metavar="S",
                        help="before each measured run, wait up to S seconds for other processes to go idle")
    args = parser.parse_args(argv)
    try:
        with tempfile.TemporaryDirectory(prefix="pighand-bench-proxy-") as tmp:
            print(describe(measure(Path(tmp), args.duration, args.wait_quiet)))
    except BenchError as exc:
        print(f"bench failed: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
