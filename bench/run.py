"""Benchmark entry point: bare proxy vs. gateway in interleaved rounds, each alone on a core."""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from types import FrameType

from federated import FEDERATED_ALGS
from figures import AlgResult
from load import find_wrk
from pairs import LIFETIME, SLACK, bench_alg
from procs import Children, free_port, wait_for_port
from proxies import (
    BENCH_DIR,
    DEFAULT_GATEWAY_CMD,
    REPO_DIR,
    STARTUP_TIMEOUT,
    Bench,
    line_up,
)
from report import render, write_summary
from tokens import SUPPORTED_ALGS

STORES = ("memory", "redis")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--alg", default="ES256,RS256", help="comma-separated: ES256,RS256")
    parser.add_argument("--duration", type=float, default=12.0, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=3.0, help="warm-up seconds per run")
    parser.add_argument(
        "--pairs", type=int, default=3,
        help="interleaved rounds of every contender; figures are medians over them",
    )
    parser.add_argument(
        "--latency-pairs", type=int, default=None,
        help="rounds paced at half the bare proxy's peak (default: --pairs; 0: none)",
    )
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
        help="the gateway under test; placeholders: {python} {config} {port} {backend} {bench}",
    )
    parser.add_argument(
        "--baseline-cmd", default=None,
        help="a second gateway command (e.g. an older build), measured in the same rounds;"
             " same placeholders",
    )
    parser.add_argument(
        "--federated", action=argparse.BooleanOptionalAction, default=None,
        help="with RS256, also measure the client sending a CI platform's token"
             " (gateway/federated, memory ledger) against its own assertion"
             " (default: on when RS256 and the memory store are measured)",
    )
    parser.add_argument(
        "--certificate", action=argparse.BooleanOptionalAction, default=None,
        help="also measure the client CA-anchored (its certificate chain in x5c, validated"
             " once and cached) against its registered key (gateway/certificate, memory"
             " ledger; default: on when the memory store is measured)",
    )
    parser.add_argument(
        "--usage", action=argparse.BooleanOptionalAction, default=None,
        help="also measure the gateway with usage tracking off (gateway/usage-off, memory"
             " ledger) against it on, as shipped (default: on when the memory store is"
             " measured)",
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
    args.stores = list(dict.fromkeys(s.strip().lower() for s in args.store.split(",") if s.strip()))
    if not args.stores or set(args.stores) - set(STORES):
        parser.error(f"--store takes a comma-separated subset of {','.join(STORES)}")
    if args.pairs < 1 or (args.latency_pairs is not None and args.latency_pairs < 0):
        parser.error("--pairs takes 1 or more, --latency-pairs 0 or more")
    # The optional contenders: asked for, each must be able to run; not said, each that can.
    for option, problem in _contender_problems(args).items():
        if getattr(args, option) and problem:
            parser.error(f"--{option}: {problem}")
        if getattr(args, option) is None:
            setattr(args, option, problem is None)
    if args.latency_pairs is None:
        args.latency_pairs = args.pairs
    if args.duration <= 0 or args.warmup + args.duration + SLACK + 15 > LIFETIME:
        parser.error(f"warm-up + duration must stay well under the {LIFETIME}s assertion life")
    cores = os.sched_getaffinity(0)
    if not {args.proxy_core, args.load_core} <= cores or args.proxy_core == args.load_core:
        parser.error(f"--proxy-core and --load-core must be two different cores of {cores}")
    return args


def _contender_problems(args: argparse.Namespace) -> dict[str, str | None]:
    """Why each optional contender (by its option) cannot run with these options, or None."""
    federated = _configured_problem(args, "it cannot be given the platform's trust")
    if not FEDERATED_ALGS & set(args.algs):
        federated = f"platform tokens are {'/'.join(sorted(FEDERATED_ALGS))}: add it to --alg"
    return {
        "federated": federated,
        "certificate": _configured_problem(args, "it cannot be given the client's CA"),
        "usage": _configured_problem(args, "usage tracking cannot be turned off"),
    }


def _configured_problem(args: argparse.Namespace, without_config: str) -> str | None:
    """Why a contender that is the gateway on the memory ledger with a configuration of its
    own cannot run, or None; ``without_config`` says what a fixed configuration prevents."""
    if "memory" not in args.stores:
        return "compared with the gateway on the memory ledger: add memory to --store"
    if "{config}" not in args.gateway_cmd:
        return f"the --gateway-cmd takes no {{config}}, so {without_config}"
    return None


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
            contenders = line_up(args.stores, args.gateway_cmd, args.baseline_cmd,
                                 federated=args.federated, certificate=args.certificate,
                                 usage_off=args.usage)
            bench = Bench(args, tmp, children, contenders, port, backend.pid, secret,
                          mint_cpus, redis_url)
            for alg in args.algs:
                results.append(bench_alg(bench, alg))
    finally:
        if args.keep:
            log(f"temp dir kept: {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    print(render(results, proxy_core=args.proxy_core, load_core=args.load_core))
    options = {k: v for k, v in vars(args).items() if k not in ("algs", "stores", "out")}
    print(f"summary: {write_summary(args.out, results, options, REPO_DIR)}")
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
