"""The command line: serve, check, schema, keygen, mint, keys, report, explain, inventory,
demo."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gateway import __version__
from gateway.adapters.assemble import build_ledger, build_runtime
from gateway.adapters.certificate_expiry import certificate_expiry_warnings
from gateway.adapters.key_lifecycle import key_lifecycle_warnings
from gateway.cli.explain import run_explain
from gateway.cli.inventory import FETCH_TIMEOUT, run_inventory
from gateway.cli.keys import collect_inventory, render_inventory
from gateway.cli.logs import configure_logging
from gateway.cli.mint import (
    generate_key,
    load_private_key,
    mint_assertion,
    parse_lifetime,
    public_jwk,
)
from gateway.cli.report import collect, parse_window, render_report
from gateway.cli.serve import audit_output_problem, memory_store_problem, serve
from gateway.config.errors import ConfigError
from gateway.config.lint import is_accepted, lint_settings, warning_id
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
    # A worker of `serve --workers N`, started by the supervisor with its slot number.
    serve.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    check = verbs.add_parser("check", help="validate and lint a configuration")
    check.add_argument("--config", required=True, type=Path)
    check.add_argument("--strict", action="store_true", help="exit 1 when there are warnings")
    check.add_argument("--workers", type=_positive, default=1,
                       help="check as for serve --workers N")
    check.add_argument("--no-secrets", action="store_true",
                       help="check that secrets are referenced, without reading them (CI)")
    check.add_argument("--accept", action="append", default=[], metavar="ID[=PATH]",
                       help="a warning accepted: listed apart, never fails --strict "
                            "(repeatable)")
    verbs.add_parser("schema", help="print the configuration's JSON Schema")
    keygen = verbs.add_parser("keygen", help="new key pair: private PEM and public JWKS")
    keygen.add_argument("--alg", default=None, choices=KEYGEN_ALGORITHMS,
                        help="default ES256; with --from-key, from the key")
    keygen.add_argument("--kid", default=None,
                        help="default <alg>-<date>; with --from-key, the key's thumbprint")
    target = keygen.add_mutually_exclusive_group()
    target.add_argument("--out", type=Path, default=None,
                        help="write the private key here (mode 0600) instead of stdout")
    target.add_argument("--from-key", type=Path, default=None, metavar="PEM",
                        help="make no key: print the public JWKS of this private key")
    mint = verbs.add_parser("mint", help="print a fresh client assertion")
    mint.add_argument("--key", required=True, type=Path, help="private key PEM")
    mint.add_argument("--client-id", required=True)
    mint.add_argument("--audience", required=True)
    mint.add_argument("--alg", default=None,
                      help="default: from the key (ES256/ES384/ES512, EdDSA, PS256 for RSA)")
    mint.add_argument("--kid", default=None)
    mint.add_argument("--lifetime", type=parse_lifetime, default=60.0,
                      help="a duration (60s, 5m) or seconds; default 60s")
    keys = verbs.add_parser("keys", help="list every client's keys (fetching remote sets)")
    keys.add_argument("--config", required=True, type=Path)
    keys.add_argument("--json", action="store_true", help="machine-readable output")
    report = verbs.add_parser("report", help="which clients still use or try shared secrets, "
                                             "and which offboarded ones still try")
    report.add_argument("--config", required=True, type=Path)
    source = report.add_mutually_exclusive_group()
    source.add_argument("--metrics", metavar="URL",
                        help="a gateway's admin /metrics (counts since its start)")
    source.add_argument("--prometheus", metavar="URL",
                        help="a Prometheus scraping the gateways (counts over --window)")
    report.add_argument("--window", default="7d", type=parse_window,
                        help="Prometheus range (default 7d)")
    report.add_argument("--json", action="store_true")
    explain = verbs.add_parser("explain", help="every check on one assertion, and what "
                                               "would accept a refused one")
    explain.add_argument("--config", required=True, type=Path)
    explain.add_argument("--endpoint", default=None, metavar="PATH",
                         help="the endpoint it is sent to (default: the first configured)")
    explain.add_argument("--client-id", default=None,
                         help="the request's client_id parameter, if it sends one")
    explain.add_argument("--json", action="store_true")
    explain.add_argument("assertion", nargs="?", default="-", metavar="ASSERTION|-",
                         help="the client_assertion; - or nothing: read it from stdin")
    inventory = verbs.add_parser("inventory", help="a running gateway's credential inventory "
                                                   "with usage (its admin GET /inventory)")
    inventory.add_argument("--admin", required=True, metavar="URL",
                           help="the gateway's admin listener, e.g. http://127.0.0.1:9100")
    inventory.add_argument("--format", choices=("json", "csv"), default="json",
                           help="json: the document as served; csv: one row per credential")
    inventory.add_argument("--timeout", type=_positive_seconds, default=FETCH_TIMEOUT,
                           metavar="SECONDS", help=f"default {FETCH_TIMEOUT:g}")
    demo = verbs.add_parser("demo", help="the whole flow on loopback")
    demo.add_argument("--quiet", action="store_true")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    configure_logging()  # `serve` applies the config's log settings once it has read them
    verb = args.verb
    if verb == "serve":
        return serve(args.config, args.workers, worker=args.worker)
    if verb == "check":
        return check(args.config, strict=args.strict, workers=args.workers,
                     no_secrets=args.no_secrets, accept=args.accept)
    if verb == "schema":
        print(json.dumps(settings_json_schema(), indent=2))
        return EXIT_OK
    if verb == "keygen":
        if args.from_key is not None:
            return public_key_of(args.from_key, args.alg, args.kid)
        return keygen(args.alg or "ES256", args.kid, args.out)
    if verb == "mint":
        return mint(args)
    if verb == "keys":
        return keys_inventory(args.config, as_json=args.json)
    if verb == "report":
        return secrets_report(args)
    if verb == "inventory":
        return run_inventory(args.admin, args.format, args.timeout)
    if verb == "explain":
        return run_explain(args.config, args.assertion, endpoint=args.endpoint,
                           client_id=args.client_id, as_json=args.json)
    from gateway.cli.demo import run_demo  # the demo's own IdP is only imported when asked for

    return run_demo(quiet=args.quiet)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value <= 3600:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds from 0 to 3600")
    return value


def check(path: Path, *, strict: bool, workers: int = 1, no_secrets: bool = False,
          accept: Sequence[str] = ()) -> int:
    """Print every problem (exit 2) or the warnings (exit 1 with --strict, else 0).

    ``no_secrets``: secrets must be referenced, but are not read. ``accept``: warnings
    (``ID`` or ``ID=PATH``) listed apart, which never make --strict fail.
    """
    try:
        settings = load_settings(path, resolve_secrets=not no_secrets)
        runtime = build_runtime(settings)
        build_ledger(settings)
        if settings.listen.tls is not None and not no_secrets:  # its key_file is a secret
            new_server_context(settings.listen.tls)
        problems = memory_store_problem(settings, workers) + audit_output_problem(settings)
        if problems:
            raise ConfigError(problems)
    except ConfigError as exc:
        for where, message in exc.problems:
            print(f"error: {where}: {message}" if where else f"error: {message}")
        return EXIT_ERRORS
    except (ValueError, OSError) as exc:
        print(f"error: {exc}")
        return EXIT_ERRORS
    now = time.time()
    warnings = (lint_settings(settings) + certificate_expiry_warnings(runtime, now)
                + key_lifecycle_warnings(runtime, now))
    shown = [warning for warning in warnings if not is_accepted(warning, accept)]
    for warning in shown:
        print(f"warning: {warning[0]}: {warning[1]} [{warning_id(warning)}]")
    for warning in warnings:
        if warning not in shown:
            print(f"accepted: {warning[0]} [{warning_id(warning)}]")
    for entry in accept:
        if not any(is_accepted(warning, [entry]) for warning in warnings):
            print(f"note: --accept {entry} matches no warning", file=sys.stderr)
    accepted = f", {len(warnings) - len(shown)} accepted" if len(shown) < len(warnings) else ""
    print(f"{path}: ok, {len(settings.clients)} client(s), {len(shown)} warning(s){accepted}")
    return EXIT_WARNINGS if strict and shown else EXIT_OK


def keys_inventory(path: Path, *, as_json: bool) -> int:
    """Print the key inventory; exit 2 on a bad configuration, 1 when a remote fetch failed."""
    try:
        settings = load_settings(path, resolve_secrets=False)  # the inventory needs none
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
        settings = load_settings(args.config, resolve_secrets=False)  # it needs none
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
    """A new key pair; exit 2 when --out exists or cannot be written (never overwritten)."""
    kid = kid or f"{alg.lower()}-{time.strftime('%Y%m%d')}"
    pem, jwk = generate_key(alg, kid)
    if out is None:
        print(pem.rstrip())
    else:
        try:
            _write_private(out, pem)
        except FileExistsError:
            print(f"error: {out} exists: keygen never overwrites a key; choose another --out "
                  "or remove it", file=sys.stderr)
            return EXIT_ERRORS
        except OSError as exc:
            print(f"error: cannot write {out}: {(exc.strerror or str(exc)).lower()}"
                  f"{' (its folder must exist)' if not out.parent.is_dir() else ''}",
                  file=sys.stderr)
            return EXIT_ERRORS
        print(f"# private key written to {out}", file=sys.stderr)
    print(json.dumps({"keys": [jwk]}, indent=2))
    return EXIT_OK


def _write_private(path: Path, pem: str) -> None:
    """Create ``path`` readable by its owner only, failing if it exists; raises OSError."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w", encoding="ascii") as handle:
        handle.write(pem)


def public_key_of(path: Path, alg: str | None, kid: str | None) -> int:
    """`keygen --from-key`: the public JWKS of an existing private key (kid: its thumbprint)."""
    loaded = _load_key(path, alg)
    if loaded is None:
        return EXIT_ERRORS
    key, alg = loaded
    print(json.dumps({"keys": [public_jwk(key, alg, kid)]}, indent=2))
    return EXIT_OK


def _load_key(path: Path, alg: str | None) -> tuple[Any, str] | None:
    """The private key in ``path`` and the algorithm it signs (``alg``, else the first of
    MINT_DEFAULT_ALGORITHMS it can); None, with the error printed, when it cannot be used."""
    try:
        pem = path.read_bytes()
    except OSError as exc:
        print(f"error: cannot read {path}: {exc.strerror}", file=sys.stderr)
        return None
    problem = "no supported algorithm fits this key"
    for candidate in [alg] if alg else MINT_DEFAULT_ALGORITHMS:
        try:
            return load_private_key(pem, candidate), candidate
        except ValueError as exc:
            problem = str(exc)
    print(f"error: cannot use {path}: {problem}", file=sys.stderr)
    return None


def mint(args: argparse.Namespace) -> int:
    loaded = _load_key(args.key, args.alg)
    if loaded is None:
        return EXIT_ERRORS
    key, alg = loaded
    print(mint_assertion(key, alg=alg, client_id=args.client_id, audience=args.audience,
                         lifetime=args.lifetime, kid=args.kid))
    return EXIT_OK
