"""``pkjwt-gateway explain``: every check of the request path on one assertion, with remedies.

The configuration is loaded without its secrets (none is needed to judge an assertion).
The only network traffic is fetching the keys this assertion is verified with, when they
are remote (the client's jwks_uri, or its issuer's keys for a platform token); no ledger
is written. Exit 0 when the gateway would accept the assertion, 1 when it would refuse
it, 2 for a usage or configuration error.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

from gateway.adapters.assemble import RemoteKeys, build_runtime, close_sources
from gateway.adapters.jwks_fetch import new_jwks_session
from gateway.config.errors import ConfigError
from gateway.config.lint import LINT_MAX_LIFETIME
from gateway.config.loading import load_settings
from gateway.config.settings import Settings
from gateway.config.types import MAX_CLOCK_SKEW, MAX_LIFETIME_LIMIT
from gateway.core.explain import Explanation, explain_assertion, key_sources_for
from gateway.core.explain_rules import FAIL
from gateway.core.keysource import KeySource
from gateway.core.remedies import ConfigFacts

EXIT_ACCEPTED, EXIT_REFUSED, EXIT_USAGE = 0, 1, 2
FETCH_ROUNDS = 3  # a discovered issuer's keys take two fetches; one round to spare
_MARKS = {"pass": "PASS", "fail": "FAIL", "skipped": "SKIP", "not_checked": "----",
          "shadow": "INFO"}


def run_explain(config: Path, assertion: str | None, *, endpoint: str | None,
                client_id: str | None, as_json: bool) -> int:
    """The verb: print the explanation; exit 0 accepted, 1 refused, 2 usage or config error."""
    token = (sys.stdin.read() if assertion in (None, "-") else assertion or "").strip()
    if not token:
        print("error: no assertion given (pass it, or - to read it from stdin)", file=sys.stderr)
        return EXIT_USAGE
    try:
        settings = load_settings(config, resolve_secrets=False)
    except ConfigError as exc:
        for where, message in exc.problems:
            print(f"error: {where}: {message}" if where else f"error: {message}",
                  file=sys.stderr)
        return EXIT_USAGE
    path = endpoint if endpoint is not None else settings.endpoints[0]
    if path not in settings.endpoints:
        print(f"error: --endpoint {path} is not a configured endpoint (one of "
              f"{', '.join(settings.endpoints)})", file=sys.stderr)
        return EXIT_USAGE
    try:
        explanation = asyncio.run(explain(settings, token, path, client_id))
    except ConfigError as exc:
        for where, message in exc.problems:
            print(f"error: {where}: {message}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:  # a jwks_fetch.ca_file that cannot be loaded
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(render_json(explanation) if as_json else render_text(explanation))
    return EXIT_ACCEPTED if explanation.accepted else EXIT_REFUSED


async def explain(settings: Settings, token: str, endpoint: str,
                  client_id: str | None) -> Explanation:
    """Fetch the keys the assertion needs (when remote), then explain it.

    Raises ConfigError for key sets that cannot be imported, OSError for a ca_file that
    cannot be loaded.
    """
    session = new_jwks_session(settings.jwks_fetch)
    runtime = None
    try:
        runtime = build_runtime(settings, remote=RemoteKeys(session))
        needed = key_sources_for(token, runtime.clients, runtime.federation, client_id)
        await _fetch_once(needed, settings.jwks_fetch.timeout * FETCH_ROUNDS)
        facts = ConfigFacts(
            issuer=settings.issuer, public_base=settings.public_base(),
            max_clock_skew=MAX_CLOCK_SKEW, max_lifetime_limit=MAX_LIFETIME_LIMIT,
            lint_max_lifetime=LINT_MAX_LIFETIME,
            disabled=frozenset(cid for cid, c in settings.clients.items() if not c.enabled))
        return await explain_assertion(
            token, endpoint=endpoint, clients=runtime.clients, federation=runtime.federation,
            facts=facts, now=time.time(), client_id=client_id)
    finally:
        if runtime is not None:
            await close_sources(runtime)
        await session.close()


async def _fetch_once(sources: tuple[KeySource, ...], budget: float) -> None:
    """One fetch of each source, then closed: they keep what they got and fetch no more
    (a key miss while verifying finds nothing new instead of fetching again)."""
    await asyncio.gather(*(source.start() for source in sources))
    try:
        async with asyncio.timeout(budget):
            while not all(source.settled() for source in sources):
                await asyncio.sleep(0.02)
    except TimeoutError:
        pass  # the unsettled ones have no keys: explained as keys_unavailable
    finally:
        await asyncio.gather(*(source.close() for source in sources))


def _printable(text: str) -> str:
    """Text from a token, with control characters escaped (a terminal must not obey them)."""
    return "".join(c if c.isprintable() else json.dumps(c)[1:-1] for c in text)


def render_text(explanation: Explanation) -> str:
    """The explanation for a person: the token as read, each rule, then the verdict."""
    lines = [f"endpoint: {explanation.endpoint}"]
    if explanation.header:  # it parsed
        lines += [f"header:   {json.dumps(explanation.header, ensure_ascii=True)}",
                  f"claims:   {json.dumps(explanation.claims, ensure_ascii=True)}",
                  "          (the signature and the jti are never shown)"]
    if explanation.credential:
        lines.append(f"client:   {explanation.client}, {explanation.credential}")
    lines.append("")
    for check in explanation.checks:
        reason = f"  [{check.reason}]" if check.outcome == FAIL and check.reason else ""
        lines.append(f"{_MARKS[check.outcome]}  {check.rule:<10} {_printable(check.detail)}"
                     f"{reason}")
        if check.fix.remedy is not None:
            lines.append(f"      fix:     {_printable(check.fix.remedy.change)}")
            lines.append(f"      weakens: {_printable(check.fix.remedy.weakens)}")
        elif check.fix.advice is not None:
            lines.append(f"      no setting accepts it: {_printable(check.fix.advice)}")
    lines.append("")
    if explanation.accepted:
        lines.append("verdict: accepted (the request would be forwarded; the jti is then spent)")
    else:
        lines.append(f"verdict: refused, {explanation.status} {explanation.error}, "
                     f"reason {explanation.reason}")
    return "\n".join(lines)


def render_json(explanation: Explanation) -> str:
    data = asdict(explanation)
    data["header"], data["claims"] = dict(explanation.header), dict(explanation.claims)
    return json.dumps(data, indent=2, ensure_ascii=True)
