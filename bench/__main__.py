"""``python -m bench``: every benchmark in one run, one table.

    python -m bench                      # 10 s per measured run, about 4 minutes
    python -m bench --quick              # 3 s per measured run
    python -m bench --rounds 3 --json bench/results/run.json
    python -m bench --only ours_inproc,bare_constant,nginx_constant

Needs Redis at 127.0.0.1:6379 (the Redis scenarios) and MariaDB at
127.0.0.1:3306 (the stampede's MySQL layouts); installs wrk and nginx-light
with apt-get when they are missing. See bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform as py_platform
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import redis

from bench import isv_scale, proxy, rss, slow_platform, stampede, throughput
from bench.harness import WRK_CONNECTIONS, WRK_THREADS, BenchError, WrkResult, wrk_path
from bench.ours import Store
from bench.report import Check, Row, Summary, print_table, ratio
from tests.fakes.wechat import FakeWeChat

REDIS_HOST = "127.0.0.1"
REDIS_PORT = 6379
KEYS = (*throughput.KEYS, "slow_platform", "rss", "stampede", "isv_scale", "proxy")
STAMPEDE_REQUESTS = 200
STAMPEDE_LATENCY_S = 0.2

# Targets (the issue's).
INPROC_VS_BARE = 6.0
INPROC_VS_NGINX = 0.35
REDIS_VS_BARE = 4.0
ACCESS_LOG_KEEPS = 0.85  # the access log costs at most 15 % of req/s
SLOW_P99_VS_IDLE = 3.0


def machine_info() -> dict[str, Any]:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    wrk = subprocess.run([wrk_path(), "--version"], capture_output=True, text=True)
    autogroup = ""
    with contextlib.suppress(OSError):
        autogroup = Path("/proc/sys/kernel/sched_autogroup_enabled").read_text().strip()
    return {
        "nproc": len(os.sched_getaffinity(0)),  # what nproc prints
        "cpu_model": model,
        "python": f"{py_platform.python_implementation()} {py_platform.python_version()}",
        "wrk": (wrk.stdout + wrk.stderr).splitlines()[0].split(" Copyright")[0].strip(),
        "sched_autogroup": autogroup,
        "load_avg": os.getloadavg(),
    }


def check_redis() -> redis.Redis:
    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, socket_timeout=2, socket_connect_timeout=2,
                         decode_responses=True)
    try:
        client.ping()
    except redis.RedisError as exc:
        raise BenchError(f"Redis is not reachable at {REDIS_HOST}:{REDIS_PORT}: {exc}") from None
    return client


def redis_pid(client: redis.Redis) -> int:
    """The local Redis server's pid (0 if it is not a local process we can see)."""
    try:
        pid = int(client.info("server").get("process_id", 0))
    except (redis.RedisError, ValueError):
        return 0
    return pid if Path(f"/proc/{pid}").exists() else 0


def progress(tag: str, name: str, r: WrkResult) -> None:
    extra = f"  socket errors {r.socket_errors}" if r.errors else ""
    if r.noisy:
        extra += f"  NOISY: others used {r.foreign_cpu_s:.1f} cpu s"
    cpu = "/".join(f"{s:.1f}" for s in r.worker_cpu_s)
    print(f"{tag} {name:<22} {r.requests_per_s:9.0f} req/s  p50 {r.p50_ms:6.2f} ms  p99 {r.p99_ms:6.2f} ms  "
          f"worker cpu {cpu} s{extra}", flush=True)


def run(args: argparse.Namespace) -> int:
    duration_s = 3 if args.quick else args.duration
    wanted = [k.strip() for k in args.only.split(",")] if args.only else list(KEYS)
    unknown = [k for k in wanted if k not in KEYS]
    if unknown:
        raise BenchError(f"--only names unknown scenarios {unknown}; known: {', '.join(KEYS)}")
    order = [s for s in throughput.SCENARIOS if s.key in wanted]

    info = machine_info()  # also installs wrk when it is missing
    print(f"machine: nproc={info['nproc']}  cpu={info['cpu_model']}  python={info['python']}  {info['wrk']}  "
          f"load {info['load_avg'][0]:.2f}")
    print(f"load: wrk -t{WRK_THREADS} -c{WRK_CONNECTIONS} -d{duration_s}s --latency (warm-up "
          f"{throughput.WARM_S} s), {args.rounds} round(s)\n")

    runs: dict[str, list[WrkResult]] = {s.key: [] for s in order}
    slow_runs: list[slow_platform.SlowResult] = []
    rss_result: rss.RssResult | None = None
    isv_result: isv_scale.IsvScaleResult | None = None
    proxy_result: proxy.ProxyResult | None = None
    stampede_results: list[stampede.Result] = []
    stampede_skipped: list[str] = []
    platform_calls = 0
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="pighand-bench-")))
        wechat = stack.enter_context(FakeWeChat())
        wechat.add_app(throughput.APPID, throughput.SECRET)
        prefix = f"bench{uuid.uuid4().hex[:10]}:"
        client = None
        if any(s.redis for s in order):
            client = check_redis()

            def cleanup_redis(client: redis.Redis = client) -> None:
                keys = list(client.scan_iter(match=f"{prefix}*", count=500))
                if keys:
                    client.delete(*keys)
                client.close()

            stack.callback(cleanup_redis)
        store = Store(tmp / "throughput.sqlite3", wechat.base_url)
        if order:
            store.import_wechat([(throughput.APPID, throughput.SECRET)], tmp)
            store.add_client()
        # A token-sized value, so both Redis scenarios move about the same bytes.
        ctx = throughput.Context(
            tmp=tmp, store=store, redis_pid=redis_pid(client) if client else 0,
            redis_settings={"PIGHAND_REDIS_HOST": REDIS_HOST, "PIGHAND_REDIS_PORT": str(REDIS_PORT),
                            "PIGHAND_REDIS_KEY_PREFIX": prefix},
            bare_key=f"{prefix}bare", bare_value="83_" + "b" * 134)
        if client is not None:
            client.set(ctx.bare_key, ctx.bare_value)
        slow = slow_platform.SlowPlatform(tmp, wechat, args.rounds, duration_s) if "slow_platform" in wanted else None

        total = (len(order) + (slow is not None)) * args.rounds
        step = 0
        for round_no in range(args.rounds):
            for scenario in order:
                step += 1
                tag = f"[{step}/{total}]" + (f" round {round_no + 1}" if args.rounds > 1 else "")
                result = throughput.measure(scenario, ctx, duration_s, args.wait_quiet)
                runs[scenario.key].append(result)
                progress(tag, scenario.key, result)
            if slow is not None:
                step += 1
                tag = f"[{step}/{total}]" + (f" round {round_no + 1}" if args.rounds > 1 else "")
                result_slow = slow.measure(duration_s, args.wait_quiet)
                slow_runs.append(result_slow)
                progress(tag, "slow_platform idle", result_slow.idle)
                progress(" " * len(tag), "slow_platform cold", result_slow.cold)
                print(f"{' ' * len(tag)} {'':<22} {result_slow.cold_fetches} cold GETs, {result_slow.cold_failed} "
                      f"failed, each {min(result_slow.cold_s):.2f}-{max(result_slow.cold_s):.2f} s", flush=True)
        platform_calls = len(wechat.calls)
        if "rss" in wanted:
            print(f"rss: {rss.CREDENTIALS} credentials, warming every token on every worker ...", flush=True)
            rss_result = rss.measure(tmp, wechat)
            print(f"rss: {rss_result.gets} GETs in {rss_result.warm_s:.1f} s; workers "
                  + ", ".join(f"{mb:.1f} MB" for mb in rss_result.workers_mb), flush=True)
        if "stampede" in wanted:
            print(f"stampede: {STAMPEDE_REQUESTS} concurrent cold GETs, platform answers in "
                  f"{STAMPEDE_LATENCY_S:g} s", flush=True)
            stampede_results, stampede_skipped = stampede.run(STAMPEDE_REQUESTS, STAMPEDE_LATENCY_S, args.rounds)
        if "isv_scale" in wanted:
            print(f"isv_scale: {isv_scale.AUTHORIZERS} WeChat authorizers due at once, one scheduler tick of "
                  f"{isv_scale.INTERVAL_S} s ...", flush=True)
            isv_result = isv_scale.measure(tmp)
            print(isv_scale.describe(isv_result), flush=True)
        if "proxy" in wanted:
            print("proxy: a business API GET to the fake WeChat, directly and through /proxy/ ...", flush=True)
            proxy_result = proxy.measure(tmp, duration_s, args.wait_quiet)
            print(proxy.describe(proxy_result), flush=True)

    summaries = {key: Summary.of(rs) for key, rs in runs.items()}
    rows = build_rows(summaries, slow_runs, rss_result, stampede_results, stampede_skipped, isv_result,
                      proxy_result)
    print()
    print_table(rows, rounds=args.rounds)
    print(f"\nratios: this row's req/s over the named scenario's (p99: this row's p99 over its p99); medians of "
          f"{args.rounds} round(s); calls to the fake WeChat by the throughput and slow_platform scenarios: "
          f"{platform_calls}")
    if any(row.summary and row.summary.noisy for row in rows):
        print("NOISY: other processes used the CPU during that run; its figures are not comparable "
              "(rerun on a quiet machine, or with --wait-quiet 30)")
    checks = [c for row in rows for c in row.checks]
    missed = [c for c in checks if c.met is False]
    print(f"{sum(1 for c in checks if c.met)} of {sum(1 for c in checks if c.met is not None)} targets met"
          + (f"; missed: {', '.join(c.key for c in missed)}" if missed else ""))

    if args.json:
        report = {
            "machine": info,
            "load": {"tool": "wrk", "threads": WRK_THREADS, "connections": WRK_CONNECTIONS,
                     "duration_s": duration_s, "warm_s": throughput.WARM_S, "rounds": args.rounds},
            "scenarios": {key: {"median": asdict(summaries[key]), "rounds": [asdict(r) for r in runs[key]]}
                          for key in runs},
            "slow_platform": [{"idle": asdict(r.idle), "cold": asdict(r.cold), "cold_fetches": r.cold_fetches,
                               "cold_failed": r.cold_failed, "cold_s": r.cold_s} for r in slow_runs],
            "rss": asdict(rss_result) if rss_result else None,
            "stampede": {"results": [asdict(r) for r in stampede_results], "skipped": stampede_skipped},
            "isv_scale": asdict(isv_result) if isv_result else None,
            "proxy": asdict(proxy_result) if proxy_result else None,
            "checks": [asdict(c) | {"verdict": c.verdict} for c in checks],
            "at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {path}")
    return 1 if args.check and missed else 0


def build_rows(s: dict[str, Summary], slow_runs: list[slow_platform.SlowResult], rss_result: rss.RssResult | None,
               stampede_results: list[stampede.Result], stampede_skipped: list[str],
               isv_result: isv_scale.IsvScaleResult | None = None,
               proxy_result: proxy.ProxyResult | None = None) -> list[Row]:
    rows: dict[str, Row] = {sc.key: Row(sc.key, sc.server, s[sc.key]) for sc in throughput.SCENARIOS if sc.key in s}

    def rps(a: str, b: str) -> float | None:
        return s[a].requests_per_s / s[b].requests_per_s if a in s and b in s and s[b].requests_per_s else None

    def add(row: str, check: Check | None) -> None:
        if check is not None and row in rows:
            rows[row].checks.append(check)

    def rps_check(a: str, b: str, op: str, target: float | None, key: str) -> Check | None:
        value = rps(a, b)
        if value is None:
            return None
        if target is None:
            return Check(shown=f"{value:.2f}x {b}", target="", met=None, value=value, key=key)
        return ratio(key, value, b, op, target)

    def p99_check(a: str, b: str, key: str) -> Check | None:
        if a not in s or b not in s or not s[b].p99_ms:
            return None
        value = s[a].p99_ms / s[b].p99_ms
        check = ratio(key, value, b, "<=", 1.0)
        check.shown = f"p99 {check.shown}"
        return check

    add("ours_inproc", rps_check("ours_inproc", "bare_constant", ">=", INPROC_VS_BARE, "inproc_vs_bare"))
    add("ours_inproc", rps_check("ours_inproc", "nginx_constant", ">=", INPROC_VS_NGINX, "inproc_vs_nginx"))
    add("ours_inproc", p99_check("ours_inproc", "bare_constant", "inproc_p99_vs_bare"))
    add("ours_inproc", rps_check("ours_inproc", "ours_inproc_nolog", ">=", ACCESS_LOG_KEEPS, "inproc_access_log"))
    add("ours_redis", rps_check("ours_redis", "bare_redis", ">=", REDIS_VS_BARE, "redis_vs_bare"))
    add("ours_redis", p99_check("ours_redis", "bare_constant", "redis_p99_vs_bare"))
    add("ours_redis", rps_check("ours_redis", "ours_redis_nolog", ">=", ACCESS_LOG_KEEPS, "redis_access_log"))
    add("ours_inproc_gunicorn", rps_check("ours_inproc_gunicorn", "bare_constant", "", None, "gunicorn_vs_bare"))
    add("ours_inproc_gunicorn", rps_check("ours_inproc_gunicorn", "ours_inproc", "", None, "gunicorn_vs_shipped"))
    add("ours_inproc_unpinned", rps_check("ours_inproc_unpinned", "ours_inproc", "", None, "unpinned_vs_pinned"))
    out = list(rows.values())

    if slow_runs:
        idle = Summary.of([r.idle for r in slow_runs])
        cold = Summary.of([r.cold for r in slow_runs])
        errors = sum(r.errors for r in slow_runs)
        value = cold.p99_ms / idle.p99_ms if idle.p99_ms else float("inf")
        p99 = ratio("slow_p99_vs_idle", value, "idle", "<=", SLOW_P99_VS_IDLE)
        p99.shown = f"p99 {p99.shown}"
        fetched = sum(r.cold_fetches for r in slow_runs)
        out.append(Row("slow_platform idle", "ours in-process, serve -w 2", idle))
        out.append(Row("slow_platform cold", f"same, {slow_platform.COLD_IN_FLIGHT} cold fetches of "
                       f"{slow_platform.PLATFORM_DELAY_S:g} s in flight", cold,
                       checks=[p99, Check(f"{errors} errors", "0", errors == 0, errors, "slow_errors")],
                       notes=[f"{fetched} cold GETs, {sum(r.cold_failed for r in slow_runs)} failed"]))
    if rss_result is not None:
        for i, mb in enumerate(rss_result.workers_mb):
            out.append(Row(f"rss worker {i + 1}", f"serve -w {len(rss_result.workers_mb)}, "
                           f"{rss_result.credentials} credentials warm" if i == 0 else "",
                           checks=[Check(f"{mb:.1f} MB", f"<= {rss.LIMIT_MB:g} MB", mb <= rss.LIMIT_MB, mb,
                                         f"rss_worker_{i + 1}")],
                           notes=[f"{rss_result.started_mb[i]:.1f} MB before warming"]))
    for layout in stampede.LAYOUTS:
        mine = [r for r in stampede_results if r.layout == layout.name]
        if layout.name in stampede_skipped:
            out.append(Row(f"stampede {layout.name.split(',')[0]}", layout.name, notes=["skipped: no MariaDB"]))
        if not mine:
            continue
        calls, failed, tokens = max(r.calls for r in mine), sum(r.failed for r in mine), max(r.tokens for r in mine)
        out.append(Row(f"stampede {layout.name.split(',')[0]}", f"{layout.name}, serve",
                       p50_ms=sorted(r.p50_ms for r in mine)[(len(mine) - 1) // 2],
                       p99_ms=sorted(r.p99_ms for r in mine)[(len(mine) - 1) // 2],
                       checks=[Check(f"calls {calls}, failed {failed}, tokens {tokens}", "1, 0, 1",
                                     all(stampede.met(r) for r in mine), key=f"stampede_{layout.name.split(',')[0]}")],
                       notes=[f"{STAMPEDE_REQUESTS} GETs"]))
    if isv_result is not None:
        r = isv_result
        one_each = r.distinct_authorizers == r.authorizer_calls and r.failed == 0
        out.append(Row("isv_scale calls/s", f"serve -w {len(r.workers_mb)}, {r.authorizers} authorizers due, "
                       f"corn_interval {r.interval_s} s",
                       checks=[Check(f"max {r.max_calls_per_s}/s, mean {r.mean_calls_per_s:.1f}/s",
                                     f"<= {r.rate_limit}/s", r.max_calls_per_s <= r.rate_limit,
                                     r.max_calls_per_s, "isv_calls_per_s"),
                               Check(f"{r.authorizer_calls} calls, {r.distinct_authorizers} authorizers, "
                                     f"{r.failed} failed", "1 call each, 0 failed", one_each, key="isv_one_call_each"),
                               Check(f"soonest first: {'yes' if r.soonest_first else 'no'}", "yes",
                                     r.soonest_first, key="isv_soonest_first")],
                       notes=[f"{r.calls} platform calls in the first tick, {r.deferred} deferred"]))
        out.append(Row("isv_scale tick", "", checks=[Check(f"{r.tick_s:.1f} s", "", None, r.tick_s, "isv_tick_s")],
                       notes=[f"spread over 0.8 x {r.interval_s} s"]))
        out.append(Row("isv_scale token status", "", checks=[Check(f"{r.status_s:.1f} s", "", None, r.status_s,
                                                                   "isv_status_s")],
                       notes=[f"{r.status_rows} rows, CLI start included"]))
        for i, mb in enumerate(r.workers_mb):
            out.append(Row(f"isv_scale rss worker {i + 1}", "",
                           checks=[Check(f"{mb:.1f} MB", "", None, mb, f"isv_rss_worker_{i + 1}")]))
    if proxy_result is not None:
        r = proxy_result
        out.append(Row("proxy direct", "fake WeChat API, token in the query", Summary.of([r.direct])))
        out.append(Row("proxy via hub", "/proxy/wechat/..., serve -w 2", Summary.of([r.proxied]),
                       checks=[Check(f"{r.rps_ratio:.2f}x direct", "", None, r.rps_ratio, "proxy_vs_direct")],
                       notes=[f"added p50 {r.added_p50_ms:+.2f} ms, p99 {r.added_p99_ms:+.2f} ms"]))
    return out


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10, metavar="S", help="seconds per measured run (10)")
    parser.add_argument("--quick", action="store_true", help="3 s per measured run")
    parser.add_argument("--rounds", type=int, default=1, metavar="N",
                        help="run every scenario N times; the table shows medians and the req/s spread (1)")
    parser.add_argument("--only", metavar="KEYS", help="comma-separated scenario keys: " + ", ".join(KEYS))
    parser.add_argument("--json", metavar="FILE", help="also write every run and check as JSON")
    parser.add_argument("--wait-quiet", type=float, default=0, metavar="S",
                        help="before each measured run, wait up to S seconds for other processes to go idle")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args(argv)
    if args.duration < 1 or args.rounds < 1:
        parser.error("--duration and --rounds must be at least 1")
    return args


def _interrupt(signum: int, frame: object) -> None:
    # SIGTERM takes the Ctrl-C path, so every started server is stopped.
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # Also when started in the background, where SIGINT arrives ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        return run(args)
    except BenchError as exc:
        print(f"\nbench failed: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted; servers stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
