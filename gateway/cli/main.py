"""The command line: serve, check, schema, keygen, mint, keys, report, demo."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from gateway import __version__
from gateway.adapters.assemble import build_ledger, build_runtime
from gateway.cli.inventory import collect_inventory, render_inventory
from gateway.cli.mint import generate_key, load_private_key, mint_assertion
from gateway.cli.report import collect, render_report
from gateway.cli.serve import memory_store_problem, serve
from gateway.config.errors import ConfigError
from gateway.config.lint import lint_settings
from gateway.config.loading import load_settings
from gateway.config.settings import settings_json_schema
from gateway.web.tls import new_server_context

EXIT_OK, EXIT_WARNINGS, EXIT_ERRORS = 0, 1, 2
KEYGEN_ALGORITHMS = ("ES256", "PS256", "RS256", "EdDSA", "Ed25519")
# Without --alg, mint signs with the first of these the key can make.
MINT_DEFAULT_ALGORITHMS = ("ES256", "ES384", "ES512", "EdDSA", "PS256")
log = logging.getLogger("gateway")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pkjwt-gateway", description=__doc__)
    parser.add_argument("--version", action="version", version=f"pkjwt-gateway {__version__}")
    verbs = parser.add_subparsers(dest="verb", required=True)
    serve = verbs.add_parser("serve", help="run the gateway")
    serve.add_argument("--config", required=True, type=Path)
    serve.add_argument("--workers", type=_positive, default=1,
                       help="processes sharing the port (SO_REUSEPORT); needs store: redis")
    serve.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    check = verbs.add_parser("check", help="validate and lint a configuration")
    check.add_argument("--config", required=True, type=Path)
    check.add_argument("--strict", action="store_true", help="exit 1 when there are warnings")
    check.add_argument("--workers", type=_positive, default=1,
                       help="check as for serve --workers N")
    verbs.add_parser("schema", help="print the configuration's JSON Schema")
    keygen = verbs.add_parser("keygen", help="new key pair: private PEM and public JWKS")
    keygen.add_argument("--alg", default="ES256", choices=KEYGEN_ALGORITHMS)
    keygen.add_argument("--kid", default=None)
    keygen.add_argument("--out", type=Path, default=None,
                        help="write the private key here (mode 0600) instead of stdout")
    mint = verbs.add_parser("mint", help="print a fresh client assertion")
    mint.add_argument("--key", required=True, type=Path, help="private key PEM")
    mint.add_argument("--client-id", required=True)
    mint.add_argument("--audience", required=True)
    mint.add_argument("--alg", default=None,
                      help="default: from the key (ES256/ES384/ES512, EdDSA, PS256 for RSA)")
    mint.add_argument("--kid", default=None)
    mint.add_argument("--lifetime", type=float, default=60.0, help="seconds (default 60)")
    keys = verbs.add_parser("keys", help="list every client's keys (fetching remote sets)")
    keys.add_argument("--config", required=True, type=Path)
    keys.add_argument("--json", action="store_true", help="machine-readable output")
    report = verbs.add_parser("report", help="which clients still use shared secrets")
    report.add_argument("--config", required=True, type=Path)
    source = report.add_mutually_exclusive_group()
    source.add_argument("--metrics", metavar="URL",
                        help="a gateway's admin /metrics (counts since its start)")
    source.add_argument("--prometheus", metavar="URL",
                        help="a Prometheus scraping the gateways (counts over --window)")
    report.add_argument("--window", default="7d", help="Prometheus range (default 7d)")
    report.add_argument("--json", action="store_true")
    demo = verbs.add_parser("demo", help="the whole flow on loopback")
    demo.add_argument("--quiet", action="store_true")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    verb = args.verb
    if verb == "serve":
        return serve(args.config, args.workers, worker=args.worker)
    if verb == "check":
        return check(args.config, strict=args.strict, workers=args.workers)
    if verb == "schema":
        print(json.dumps(settings_json_schema(), indent=2))
        return EXIT_OK
    if verb == "keygen":
        return keygen(args.alg, args.kid, args.out)
    if verb == "mint":
        return mint(args)
    if verb == "keys":
        return keys_inventory(args.config, as_json=args.json)
    if verb == "report":
        return secrets_report(args)
    from gateway.cli.demo import run_demo  # the demo's own IdP is only imported when asked for

    return run_demo(quiet=args.quiet)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def check(path: Path, *, strict: bool, workers: int = 1) -> int:
    """Print every problem (exit 2) or the warnings (exit 1 with --strict, else 0)."""
    try:
        settings = load_settings(path)
        build_runtime(settings)
        build_ledger(settings)
        if settings.listen.tls is not None:
            new_server_context(settings.listen.tls)
        problems = memory_store_problem(settings, workers)
        if problems:
            raise ConfigError(problems)
    except ConfigError as exc:
        for where, message in exc.problems:
            print(f"error: {where}: {message}" if where else f"error: {message}")
        return EXIT_ERRORS
    except (ValueError, OSError) as exc:
        print(f"error: {exc}")
        return EXIT_ERRORS
    warnings = lint_settings(settings)
    for where, message in warnings:
        print(f"warning: {where}: {message}")
    print(f"{path}: ok, {len(settings.clients)} client(s), {len(warnings)} warning(s)")
    return EXIT_WARNINGS if strict and warnings else EXIT_OK


def keys_inventory(path: Path, *, as_json: bool) -> int:
    """Print the key inventory; exit 2 on a bad configuration, 1 when a remote fetch failed."""
    try:
        settings = load_settings(path)
        build_runtime(settings)  # configured key sets: refused ones are problems here too
    except ConfigError as exc:
        for where, message in exc.problems:
            print(f"error: {where}: {message}" if where else f"error: {message}")
        return EXIT_ERRORS
    entries = asyncio.run(collect_inventory(settings))
    print(render_inventory(entries, as_json=as_json))
    return EXIT_WARNINGS if any(entry.error for entry in entries) else EXIT_OK


def secrets_report(args: argparse.Namespace) -> int:
    """Print who still uses secrets; exit 2 on a bad configuration or an unreadable source."""
    try:
        settings = load_settings(args.config)
        rows = collect(settings, metrics_url=args.metrics, prometheus_url=args.prometheus,
                       window=args.window)
    except ConfigError as exc:
        for where, message in exc.problems:
            print(f"error: {where}: {message}" if where else f"error: {message}")
        return EXIT_ERRORS
    except (OSError, ValueError) as exc:
        print(f"error: cannot read the counts: {exc}", file=sys.stderr)
        return EXIT_ERRORS
    print(render_report(rows, as_json=args.json))
    return EXIT_OK


def keygen(alg: str, kid: str | None, out: Path | None) -> int:
    kid = kid or f"{alg.lower()}-{time.strftime('%Y%m%d')}"
    pem, public_jwk = generate_key(alg, kid)
    jwks = json.dumps({"keys": [public_jwk]}, indent=2)
    if out is None:
        print(pem.rstrip())
    else:
        out.touch(mode=0o600, exist_ok=False)
        out.write_text(pem)
        print(f"# private key written to {out}", file=sys.stderr)
    print(jwks)
    return EXIT_OK


def mint(args: argparse.Namespace) -> int:
    try:
        pem = args.key.read_bytes()
    except OSError as exc:
        print(f"error: cannot read {args.key}: {exc.strerror}", file=sys.stderr)
        return EXIT_ERRORS
    problem = "no supported algorithm fits this key"
    for alg in [args.alg] if args.alg else MINT_DEFAULT_ALGORITHMS:
        try:
            key = load_private_key(pem, alg)
            break
        except ValueError as exc:
            problem = str(exc)
    else:
        print(f"error: cannot use {args.key}: {problem}", file=sys.stderr)
        return EXIT_ERRORS
    print(mint_assertion(key, alg=alg, client_id=args.client_id, audience=args.audience,
                         lifetime=args.lifetime, kid=args.kid))
    return EXIT_OK
