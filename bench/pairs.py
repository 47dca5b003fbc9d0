"""Benchmark schedule: interleaved pairs of flat-out runs, then paced pairs at half the peak."""

from __future__ import annotations

import sys
from pathlib import Path

from certificate import certificate_claimant, make_pki
from federated import ISSUER_NAME, platform_claimant
from figures import AlgResult, Pair, Run, rps
from proxies import CLIENT_ID, ISSUER, STARTUP_TIMEOUT, Bench, Contender, measure
from tokens import Bodies, Claimant, SigningKey, TokenPool, generate_key, own_key

LIFETIME = 280  # below the default max_lifetime of 300 s
SLACK = STARTUP_TIMEOUT + 15  # seconds a run may spend outside wrk: start-up, minting, scrapes


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class Schedule:
    """The runs of one algorithm, in rounds of every contender one after the other.

    The bare proxy and the memory ledgers share one pair of pools (a memory ledger dies with
    its process, so every jti is new to it); each run on a shared ledger (Redis) gets bodies
    minted for it alone, so no store ever sees a jti twice. The federated contender has a
    pair of its own: the platform's tokens, signed with the platform's key; so has the
    CA-anchored one: the client's own assertions with its certificate chain in x5c.
    """

    def __init__(self, bench: Bench, alg: str) -> None:
        self.bench = bench
        self.contenders = [c for c in bench.contenders if c.measured_with(alg)]
        self.key = generate_key(alg)
        client = own_key(self.key, CLIENT_ID, ISSUER)
        self.shared = self._bodies("shared", client)
        self.fresh = self._bodies("fresh", client)
        self.platform: SigningKey | None = None  # the key of the platform's tokens
        self.federated: Bodies | None = None
        if any(c.federated for c in self.contenders):
            self.platform = generate_key(alg, ISSUER_NAME)
            self.federated = self._bodies(
                "federated", platform_claimant(self.platform, CLIENT_ID, ISSUER))
        self.ca_file: Path | None = None  # the bench root a CA-anchored contender trusts
        self.certificate: Bodies | None = None
        if any(c.certificate for c in self.contenders):
            pki = make_pki(self.key)
            self.ca_file = pki.write_ca_file(bench.tmp / f"{alg}-bench-ca.pem")
            self.certificate = self._bodies(
                "certificate", certificate_claimant(self.key, pki, CLIENT_ID, ISSUER))
        self.estimate = bench.args.expected_rate  # req/s the next flat-out run may reach
        self.result = AlgResult(alg, [c.name for c in self.contenders], bench.args.stores,
                                bool(bench.args.baseline_cmd))

    def _bodies(self, name: str, claimant: Claimant) -> Bodies:
        args, alg = self.bench.args, self.key.alg

        def pool(use: str) -> TokenPool:
            path = self.bench.tmp / f"{alg}-{name}-{use}.bodies"
            return TokenPool(path, claimant, LIFETIME)

        return Bodies(pool("warm"), pool("measure"), self.bench.mint_cpus,
                      args.warmup, args.duration, SLACK)

    def run(self) -> AlgResult:
        """`--pairs` flat-out rounds, then `--latency-pairs` rounds paced at half the peak."""
        args, result = self.bench.args, self.result
        for index in range(args.pairs):
            result.pairs.append(self.round(f"pair {index + 1}/{args.pairs}", rate=0.0))
        peak = result.spread("bare", rps)
        if peak is None or not args.latency_pairs:
            return result
        result.half_load_rate = peak.median / 2
        for index in range(args.latency_pairs):
            label = f"half load {index + 1}/{args.latency_pairs}"
            result.half_load.append(self.round(label, rate=result.half_load_rate))
        return result

    def round(self, label: str, *, rate: float) -> Pair:
        """Every contender once, in order; flat out when `rate` is 0, else paced."""
        pair: Pair = {}
        for contender in self.contenders:
            bodies = self.bodies_for(contender)
            if contender.needs_fresh_bodies:
                bodies.renew()
            spent = bodies.provide(rate or self.estimate)
            if spent:
                log(f"  {spent:.1f}s minting: {bodies.warm.count} warm-up +"
                    f" {bodies.measure.count} measurement bodies")
            found = self.attempt(contender, bodies, label, rate)
            if found is not None:
                pair[contender.name] = found
                self.estimate = max(self.estimate, found.load.rps)
        return pair

    def bodies_for(self, contender: Contender) -> Bodies:
        """The pools a contender's runs draw from."""
        if contender.federated:
            assert self.federated is not None  # made whenever a federated contender runs
            return self.federated
        if contender.certificate:
            assert self.certificate is not None  # made whenever a CA-anchored contender runs
            return self.certificate
        return self.fresh if contender.needs_fresh_bodies else self.shared

    def attempt(
        self, contender: Contender, bodies: Bodies, label: str, rate: float
    ) -> Run | None:
        """Measure one contender; its failure becomes a problem of the result."""
        args, result, name = self.bench.args, self.result, contender.name
        pace = f"paced at {rate:.0f} req/s" if rate else "flat out"
        log(f"{self.key.alg} {label} {name}: warm-up {args.warmup:g}s,"
            f" measuring {args.duration:g}s {pace}")
        try:
            run, problems, notes = measure(self.bench, contender, self.key, bodies, rate,
                                           self.platform, self.ca_file)
        except RuntimeError as exc:
            result.problems.append(f"{label} {name}: {exc}")
            log(f"  failed: {exc}")
            return None
        result.problems += [f"{label} {name}: {text}" for text in problems]
        result.notes += [f"{label} {name}: {text}" for text in notes]
        load = run.load
        log(f"  {load.rps:.0f} req/s, p50 {load.p50_ms:.2f} ms, p99 {load.p99_ms:.2f} ms,"
            f" {load.cpu_us_per_request:.0f} µs CPU/request")
        return run


def bench_alg(bench: Bench, alg: str) -> AlgResult:
    return Schedule(bench, alg).run()
