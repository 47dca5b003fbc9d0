"""Benchmark contenders: the proxies under test, how each starts, and one measured run of one."""

from __future__ import annotations

import argparse
import functools
import json
import shlex
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from certificate import certificate_yaml
from federated import FEDERATED_ALGS, federation_yaml, trust_yaml
from figures import CERTIFICATE, FEDERATED, USAGE_OFF, ReplayLatency, Run
from load import LoadResult, run_wrk
from procs import Children, free_port, wait_for_port
from scrape import Buckets, fetch_histograms
from tokens import Bodies, SigningKey

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
ISSUER = "https://idp.bench.test"
CLIENT_ID = "bench-client"
STARTUP_TIMEOUT = 20.0
DEFAULT_GATEWAY_CMD = "{python} -m gateway serve --config {config}"
SHARED_STORES = frozenset({"redis"})  # ledgers that outlive a gateway process


@dataclass(frozen=True, slots=True)
class Contender:
    """One proxy under test: the bare proxy, or a gateway command on one replay store."""

    kind: str  # bare, gateway or baseline
    store: str = ""  # the replay store; empty for the bare proxy
    command: str = ""  # the command template; empty for the bare proxy
    federated: bool = False  # the client sends a platform's token instead of its own assertion
    certificate: bool = False  # the client is CA-anchored: its chain in x5c, no jwks
    usage: bool = True  # usage per credential recorded (usage.enabled)

    @property
    def name(self) -> str:
        if self.federated:
            return FEDERATED
        if self.certificate:
            return CERTIFICATE
        if not self.usage:
            return USAGE_OFF
        return f"{self.kind}/{self.store}" if self.store else self.kind

    def measured_with(self, alg: str) -> bool:
        """Whether this contender takes part in the rounds of `alg`."""
        return not self.federated or alg in FEDERATED_ALGS

    @property
    def checks_forwarding(self) -> bool:
        """Whether the backend's counts tell on this contender: it runs on the harness's config."""
        return not self.command or "{config}" in self.command

    @property
    def needs_fresh_bodies(self) -> bool:
        """A ledger outliving the process would take reused bodies for replays."""
        return self.store in SHARED_STORES


def line_up(
    stores: list[str], gateway_cmd: str, baseline_cmd: str | None, *, federated: bool = False,
    certificate: bool = False, usage_off: bool = False,
) -> list[Contender]:
    """The order of every pair: bare, the gateway on each store, then the baseline on each.

    With `federated` (and `certificate`), the gateway's federated (and CA-anchored) case
    runs right after the gateway on memory, the own-key run it is compared with; so does,
    with `usage_off`, the same gateway with usage tracking off.
    """
    found = [Contender("bare")]
    for store in stores:
        found.append(Contender("gateway", store, gateway_cmd))
        if federated and store == "memory":
            found.append(Contender("gateway", store, gateway_cmd, federated=True))
        if certificate and store == "memory":
            found.append(Contender("gateway", store, gateway_cmd, certificate=True))
        if usage_off and store == "memory":
            found.append(Contender("gateway", store, gateway_cmd, usage=False))
    if baseline_cmd:
        found += [Contender("baseline", store, baseline_cmd) for store in stores]
    return found


@dataclass(frozen=True, slots=True)
class Bench:
    args: argparse.Namespace
    tmp: Path
    children: Children
    contenders: list[Contender]
    backend_port: int
    backend_pid: int
    secret: str
    mint_cpus: frozenset[int]
    redis_url: str | None  # the harness's own redis-server, or --redis-url


def write_config(
    bench: Bench, keys: list[SigningKey], port: int, admin_port: int, store: str,
    platform: SigningKey | None = None, ca_file: Path | None = None, usage: bool = True,
) -> Path:
    """The gateway's YAML for one start (DESIGN §4 keys); the secret comes from the env.

    With a `platform` key, the client also trusts one subject of that platform's tokens;
    with a `ca_file`, the client is CA-anchored (its certificate instead of its jwks);
    without `usage`, usage per credential is not recorded.
    """
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
        + ("" if usage else "usage: {enabled: false}\n")
        + ("" if platform is None else federation_yaml(platform))
        + "clients:\n"
        f"  {CLIENT_ID}:\n"
        + (f"    jwks: {jwks}\n" if ca_file is None else certificate_yaml(ca_file))
        + "    backend_auth: {method: client_secret_basic, secret: !env BENCH_CLIENT_SECRET}\n"
        + ("" if platform is None else trust_yaml(ISSUER))
    )
    return path


def proxy_argv(
    bench: Bench, contender: Contender, key: SigningKey, port: int, admin_port: int,
    platform: SigningKey | None = None, ca_file: Path | None = None,
) -> list[str]:
    backend = f"http://127.0.0.1:{bench.backend_port}"
    if contender.kind == "bare":
        script = str(BENCH_DIR / "bare_proxy.py")
        return [sys.executable, script, "--port", str(port), "--backend", backend]
    if contender.federated:
        assert platform is not None, "the federated contender trusts the platform's key"
    if contender.certificate:
        assert ca_file is not None, "the CA-anchored contender trusts the bench CA"
    config = write_config(bench, [key], port, admin_port, contender.store,
                          platform if contender.federated else None,
                          ca_file if contender.certificate else None, contender.usage)
    command = contender.command.format(
        python=sys.executable, config=config, port=port, backend=backend, bench=BENCH_DIR
    )
    return shlex.split(command)


def backend_counts(bench: Bench, *, reset: bool = False) -> dict[str, int]:
    url = f"http://127.0.0.1:{bench.backend_port}/_bench/stats"
    request = urllib.request.Request(url, method="POST" if reset else "GET")
    with urllib.request.urlopen(request, timeout=5) as answer:
        counts: dict[str, int] = json.load(answer)
        return counts


def forwarding_problems(kind: str, result: LoadResult, seen: dict[str, int]) -> list[str]:
    """Check that what reached the backend is what the contender should have sent."""
    found = []
    if seen["requests"] < result.requests:
        found.append(f"backend saw {seen['requests']} requests, wrk counted {result.requests}")
    if kind != "bare" and (seen["with_assertion"] or seen["basic_auth"] != seen["requests"]):
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
    bench: Bench, contender: Contender, key: SigningKey, bodies: Bodies, rate: float = 0.0,
    platform: SigningKey | None = None, ca_file: Path | None = None,
) -> tuple[Run, list[str], list[str]]:
    """Start one proxy on the proxy core, warm it up, measure it, stop it.

    Flat out when `rate` is 0, else paced at `rate` req/s. `key` is the client's own key;
    `platform` the key of the platform a federated contender trusts; `ca_file` the bench
    root a CA-anchored contender trusts. Returns the run, its
    problems (the checks that failed) and its notes (doubts about the figures).
    Raises RuntimeError when the proxy does not start or wrk fails.
    """
    args = bench.args
    port, admin_port = free_port(), free_port()
    stderr_log = bench.tmp / f"{contender.name.replace('/', '-')}-{key.alg}-{port}.log"
    argv = proxy_argv(bench, contender, key, port, admin_port, platform, ca_file)
    env = {"BENCH_CLIENT_SECRET": bench.secret}
    proc = bench.children.start(argv, cpus={args.proxy_core}, log=stderr_log, env=env, cwd=REPO_DIR)
    may_wrap = contender.kind == "bare"  # the bare proxy does not care about jti reuse
    load = functools.partial(
        run_wrk,
        bench.children,
        url=f"http://127.0.0.1:{port}/oauth2/token",
        connections=args.connections,
        threads=args.threads,
        cpus={args.load_core},
        watch={"proxy": proc.pid, "backend": bench.backend_pid},
        rate=rate,
    )
    problems: list[str] = []
    notes: list[str] = []
    replay = None
    try:
        wait_for_port(port, proc, STARTUP_TIMEOUT, stderr_log)
        if args.warmup > 0:
            warm = load(bodies=bodies.warm.path, duration=args.warmup)
            problems += [f"warm-up: {text}" for text in warm.problems(may_wrap=may_wrap)]
            if not may_wrap:
                bodies.top_up_measure(warm.rps)
        backend_counts(bench, reset=True)
        before = replay_histograms(admin_port)[0] if contender.kind != "bare" else {}
        result = load(bodies=bodies.measure.path, duration=args.duration)
        problems += result.problems(may_wrap=may_wrap)
        if contender.kind != "bare":
            after, failure = replay_histograms(admin_port)
            replay = replay_latency(before, after)
            if replay is None:
                missing = failure or "no replay-check histogram in /metrics"
                if contender.kind == "baseline":
                    notes.append(missing)  # an older build may not export it yet
                else:
                    problems.append(missing)
        if contender.checks_forwarding:
            problems += forwarding_problems(contender.kind, result, backend_counts(bench))
        if proc.poll() is not None:
            problems.append(f"exited with {proc.returncode} during the run (see {stderr_log})")
    finally:
        bench.children.stop(proc)
    notes += result.notes(proxy_core=args.proxy_core, load_core=args.load_core)
    return Run(result, replay), problems, notes
