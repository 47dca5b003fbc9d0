"""Benchmark entry point: the gateway, per replay store, vs. a bare proxy; each alone on a core."""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import secrets
import shlex
import shutil
import signal
import sys
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from load import LoadResult, find_wrk, run_wrk
from procs import Children, free_port, wait_for_port
from report import AlgResult, ReplayLatency, render, write_summary
from scrape import Buckets, fetch_histograms
from tokens import SUPPORTED_ALGS, SigningKey, TokenPool, generate_key

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
ISSUER = "https://idp.bench.test"
CLIENT_ID = "bench-client"
LIFETIME = 280  # below the default max_lifetime of 300 s
POOL_MARGIN = 1.5  # bodies minted per expected request
STARTUP_TIMEOUT = 20.0
DEFAULT_GATEWAY_CMD = "{python} -m gateway serve --config {config}"
STORES = ("memory", "redis")


@dataclass(frozen=True, slots=True)
class Bench:
    args: argparse.Namespace
    tmp: Path
    children: Children
    backend_port: int
    backend_pid: int
    secret: str
    mint_cpus: frozenset[int]
    redis_url: str | None  # the harness's own redis-server, or --redis-url


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def write_config(
    bench: Bench, keys: list[SigningKey], port: int, admin_port: int, store: str
) -> Path:
    """The gateway's YAML for one start (DESIGN §4 keys); the secret comes from the env."""
    replay = {"store": store}
    if store == "redis":
        assert bench.redis_url is not None
        replay["redis_url"] = bench.redis_url
    jwks = json.dumps({"keys": [key.public_jwk for key in keys]})
    path = bench.tmp / f"gateway-{port}.yaml"
    path.write_text(
        f"issuer: {ISSUER}\n"
        f"listen: {{host: 127.0.0.1, port: {port}}}\n"
        f"admin: {{host: 127.0.0.1, port: {admin_port}}}\n"
        f"backend: {{url: 'http://127.0.0.1:{bench.backend_port}', timeout: 10s}}\n"
        "endpoints: [/oauth2/token]\n"
        f"replay: {json.dumps(replay)}\n"
        "clients:\n"
        f"  {CLIENT_ID}:\n"
        f"    jwks: {jwks}\n"
        "    backend_auth: {method: client_secret_basic, secret: !env BENCH_CLIENT_SECRET}\n"
    )
    return path


def proxy_argv(
    bench: Bench, slot: str, store: str, key: SigningKey, port: int, admin_port: int
) -> list[str]:
    backend = f"http://127.0.0.1:{bench.backend_port}"
    if slot == "bare":
        script = str(BENCH_DIR / "bare_proxy.py")
        return [sys.executable, script, "--port", str(port), "--backend", backend]
    config = write_config(bench, [key], port, admin_port, store)
    command = bench.args.gateway_cmd.format(
        python=sys.executable, config=config, port=port, backend=backend, bench=BENCH_DIR
    )
    return shlex.split(command)


def backend_counts(bench: Bench, *, reset: bool = False) -> dict[str, int]:
    url = f"http://127.0.0.1:{bench.backend_port}/_bench/stats"
    request = urllib.request.Request(url, method="POST" if reset else "GET")
    with urllib.request.urlopen(request, timeout=5) as answer:
        counts: dict[str, int] = json.load(answer)
        return counts


def forwarding_problems(slot: str, result: LoadResult, seen: dict[str, int]) -> list[str]:
    """Check that what reached the backend is what the slot should have sent."""
    found = []
    if seen["requests"] < result.requests:
        found.append(f"backend saw {seen['requests']} requests, wrk counted {result.requests}")
    if slot == "gateway" and (seen["with_assertion"] or seen["basic_auth"] != seen["requests"]):
        found.append(f"backend saw un-rewritten requests: {seen}")
    return found


def replay_histograms(admin_port: int) -> tuple[dict[str, Buckets], str | None]:
    """The gateway's replay-check histograms now, or the reason they could not be read."""
    try:
        return fetch_histograms(f"http://127.0.0.1:{admin_port}/metrics"), None
    except (OSError, ValueError) as exc:
        return {}, f"metrics not scraped: {exc}"


def replay_latency(
    before: dict[str, Buckets], after: dict[str, Buckets]
) -> ReplayLatency | None:
    """p50/p99 of the checks made between two scrapes (the store label seen most)."""
    runs = {label: buckets.minus(before.get(label, Buckets({})))
            for label, buckets in after.items()}
    if not runs:
        return None
    label, run = max(runs.items(), key=lambda item: item[1].total)
    p50, p99 = run.quantile(0.5), run.quantile(0.99)
    return ReplayLatency(label, round(run.total), None if p50 is None else p50 * 1e3,
                         None if p99 is None else p99 * 1e3)


def measure(
    bench: Bench, slot: str, store: str, key: SigningKey, pools: tuple[TokenPool, TokenPool]
) -> tuple[LoadResult, ReplayLatency | None, list[str]]:
    """Start one proxy on the proxy core, warm it up, measure it, stop it.

    Raises RuntimeError when the proxy does not start or wrk fails.
    """
    args = bench.args
    port, admin_port = free_port(), free_port()
    name = slot if slot == "bare" else f"{slot}-{store}"
    stderr_log = bench.tmp / f"{name}-{key.alg}.log"
    argv = proxy_argv(bench, slot, store, key, port, admin_port)
    env = {"BENCH_CLIENT_SECRET": bench.secret}
    proc = bench.children.start(argv, cpus={args.proxy_core}, log=stderr_log, env=env, cwd=REPO_DIR)
    may_wrap = slot == "bare"  # the bare proxy does not care about jti reuse
    load = functools.partial(
        run_wrk,
        bench.children,
        url=f"http://127.0.0.1:{port}/oauth2/token",
        connections=args.connections,
        threads=args.threads,
        cpus={args.load_core},
        watch={"proxy": proc.pid, "backend": bench.backend_pid},
    )
    problems = []
    latency = None
    try:
        wait_for_port(port, proc, STARTUP_TIMEOUT, stderr_log)
        if args.warmup > 0:
            warm = load(bodies=pools[0].path, duration=args.warmup)
            problems += [f"warm-up: {text}" for text in warm.problems(may_wrap=may_wrap)]
            if not may_wrap:
                top_up(bench, pools[1], warm.rps, args.duration)
        if pools[1].seconds_left() < args.duration + 10:
            raise RuntimeError("assertions would expire during the run; lower --duration")
        backend_counts(bench, reset=True)
        if slot == "gateway":
            before, _ = replay_histograms(admin_port)
        result = load(bodies=pools[1].path, duration=args.duration)
        problems += result.problems(may_wrap=may_wrap)
        if slot == "gateway":
            after, failure = replay_histograms(admin_port)
            latency = replay_latency(before, after)
            if failure is not None or latency is None:
                problems.append(failure or "no replay-check histogram in /metrics")
        if slot == "bare" or args.gateway_cmd == DEFAULT_GATEWAY_CMD:
            problems += forwarding_problems(slot, result, backend_counts(bench))
        if proc.poll() is not None:
            problems.append(f"exited with {proc.returncode} during the run (see {stderr_log})")
    finally:
        bench.children.stop(proc)
    return result, latency, [f"{name}: {text}" for text in problems]


def top_up(bench: Bench, pool: TokenPool, rate: float, seconds: float) -> None:
    """Make `pool` hold fresh bodies for `seconds` of load at `rate` req/s (with a margin)."""
    args = bench.args
    if pool.seconds_left() < args.warmup + args.duration + STARTUP_TIMEOUT + 15:
        pool.reset()
    count = max(1_000, math.ceil(rate * max(seconds, 1) * POOL_MARGIN))
    spent = pool.ensure(count, bench.mint_cpus)
    if spent:
        log(f"  minted {pool.path.name}: {pool.count} bodies in {spent:.1f}s")


def bench_alg(bench: Bench, alg: str) -> AlgResult:
    """Bare proxy then the gateway on each replay store, over the same bodies.

    Every store sees each jti once: the memory ledger dies with its process, and only one
    run per alg writes to Redis (jtis are random, so runs of the harness never collide).
    """
    key = generate_key(alg)
    pools = (
        TokenPool(bench.tmp / f"{alg}-warmup.bodies", key, CLIENT_ID, ISSUER, LIFETIME),
        TokenPool(bench.tmp / f"{alg}-measure.bodies", key, CLIENT_ID, ISSUER, LIFETIME),
    )
    result = AlgResult(alg)
    top_up(bench, pools[0], bench.args.expected_rate, bench.args.warmup)
    top_up(bench, pools[1], bench.args.expected_rate, bench.args.duration)
    for slot, store in [("bare", ""), *(("gateway", store) for store in bench.args.stores)]:
        name = slot if slot == "bare" else f"{slot}/{store}"
        log(f"{alg} {name}: warm-up {bench.args.warmup:g}s, measuring {bench.args.duration:g}s")
        try:
            run, latency, problems = measure(bench, slot, store, key, pools)
        except RuntimeError as exc:
            result.problems.append(f"{name}: {exc}")
            log(f"  failed: {exc}")
            continue
        if slot == "bare":
            result.bare = run
        else:
            result.gateways[store] = run
        if latency is not None:
            result.replay[store] = latency
        result.problems += problems
        notes = run.notes(proxy_core=bench.args.proxy_core, load_core=bench.args.load_core)
        result.notes += [f"{name}: {note}" for note in notes]
        log(f"  {run.rps:.0f} req/s, p50 {run.p50_ms:.2f} ms, p99 {run.p99_ms:.2f} ms")
        if slot == "bare":
            # The gateway is not expected to outrun the bare proxy during its warm-up.
            top_up(bench, pools[0], run.rps, bench.args.warmup)
    return result


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--alg", default="ES256,RS256", help="comma-separated: ES256,RS256")
    parser.add_argument("--duration", type=float, default=12.0, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=3.0, help="warm-up seconds per run")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="wrk threads")
    parser.add_argument(
        "--store", default="memory",
        help="comma-separated replay stores to measure the gateway on: memory,redis",
    )
    parser.add_argument(
        "--redis-url", default=None,
        help="use this Redis instead of a redis-server of the harness's own (on the load core)",
    )
    parser.add_argument(
        "--expected-rate", type=float, default=4000.0, help="req/s used to size the first body pool"
    )
    parser.add_argument(
        "--gateway-cmd",
        default=DEFAULT_GATEWAY_CMD,
        help="placeholders: {python} {config} {port} {backend} {bench}",
    )
    parser.add_argument("--proxy-core", type=int, default=1)
    parser.add_argument("--load-core", type=int, default=0)
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "out")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (configs, logs)")
    parser.add_argument("--strict", action="store_true", help="exit 1 when below a target")
    args = parser.parse_args(argv)
    args.algs = [alg.strip().upper() for alg in args.alg.split(",") if alg.strip()]
    if not args.algs or set(args.algs) - set(SUPPORTED_ALGS):
        parser.error(f"--alg takes a comma-separated subset of {','.join(SUPPORTED_ALGS)}")
    # One Redis run per alg: a second one would meet the first one's jtis as replays.
    args.stores = list(dict.fromkeys(s.strip().lower() for s in args.store.split(",") if s.strip()))
    if not args.stores or set(args.stores) - set(STORES):
        parser.error(f"--store takes a comma-separated subset of {','.join(STORES)}")
    if args.duration <= 0 or args.warmup + args.duration + STARTUP_TIMEOUT + 30 > LIFETIME:
        parser.error(f"warm-up + duration must stay well under the {LIFETIME}s assertion life")
    cores = os.sched_getaffinity(0)
    if not {args.proxy_core, args.load_core} <= cores or args.proxy_core == args.load_core:
        parser.error(f"--proxy-core and --load-core must be two different cores of {cores}")
    return args


def start_redis(children: Children, tmp: Path, core: int) -> str:
    """A throw-away redis-server on a free loopback port, pinned to ``core``; its URL.

    No persistence (``--save ""``, no AOF): the benchmark measures the gateway, not disks.
    Raises RuntimeError when redis-server is missing or does not start.
    """
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server not found on PATH (apt-get install redis-server), "
                           "or pass --redis-url")
    port = free_port()
    log_path = tmp / "redis.log"
    argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--dir", str(tmp), "--logfile", str(log_path),
            "--maxmemory-policy", "noeviction"]
    proc = children.start(argv, cpus={core}, log=log_path)
    wait_for_port(port, proc, STARTUP_TIMEOUT, log_path)
    return f"redis://127.0.0.1:{port}/0"


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    find_wrk()
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)
    mint_cpus = frozenset(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {args.load_core})  # keep the harness off the proxy's core
    tmp = Path(tempfile.mkdtemp(prefix="pkjwt-bench-"))
    results: list[AlgResult] = []
    try:
        with Children() as children:
            port = free_port()
            backend_argv = [sys.executable, str(BENCH_DIR / "backend.py"), "--port", str(port)]
            backend = children.start(backend_argv, cpus={args.load_core}, log=tmp / "backend.log")
            wait_for_port(port, backend, STARTUP_TIMEOUT, tmp / "backend.log")
            secret = secrets.token_urlsafe(24)
            redis_url = args.redis_url
            if "redis" in args.stores and redis_url is None:
                redis_url = start_redis(children, tmp, args.load_core)
                log(f"redis-server at {redis_url} on core {args.load_core}")
            bench = Bench(args, tmp, children, port, backend.pid, secret, mint_cpus, redis_url)
            for alg in args.algs:
                results.append(bench_alg(bench, alg))
    finally:
        if args.keep:
            log(f"temp dir kept: {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    print(render(results, proxy_core=args.proxy_core, load_core=args.load_core))
    options = {k: v for k, v in vars(args).items() if k not in ("algs", "stores", "out")}
    print(f"summary: {write_summary(args.out, results, options)}")
    if any(result.verdict == "FAIL" for result in results):
        return 2
    return 1 if args.strict and any(r.verdict == "BELOW" for r in results) else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        log("interrupted; every child process was stopped")
        sys.exit(130)
    except RuntimeError as exc:
        log(f"bench failed: {exc}")
        sys.exit(2)
