"""HTTP handlers: the authenticated endpoints and passthrough routes."""

from __future__ import annotations

import hashlib
import logging
import time

from aiohttp import web

from gateway.adapters.assemble import ClientRuntime, Runtime
from gateway.adapters.audit import AuditRecord, jti_digest, untrusted
from gateway.adapters.metrics import UNKNOWN_CLIENT, status_class
from gateway.adapters.upstream import forwarded_request_headers, skipped_request_headers
from gateway.config.settings import LimitSettings
from gateway.core.assertion import (
    AssertionPolicy,
    ParsedAssertion,
    VerifiedAssertion,
    parse_assertion,
    verify_assertion,
)
from gateway.core.errors import (
    GatewayError,
    InvalidClient,
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
    ServerError,
    TemporarilyUnavailable,
    TooManyRequests,
)
from gateway.core.form import TokenForm, parse_form
from gateway.core.legacy import identify_secret_client
from gateway.web.exchange import error_response, read_body, request_id_of
from gateway.web.state import AUDIT, GUARDS, LEDGER, METRICS, RUNTIME, UPSTREAM, Guards

log = logging.getLogger("gateway")

# Passthrough paths (discovery documents and the like) may carry larger bodies than a token form.
MAX_PASSTHROUGH_BODY = 1024 * 1024
# The endpoint body is rebuilt and re-authenticated: the client's own framing and credential go.
# A backend framework that honours a method override would read our POST as another method.
_METHOD_OVERRIDES = ("X-HTTP-Method-Override", "X-Method-Override", "X-HTTP-Method")
_ENDPOINT_SKIP = skipped_request_headers(
    ("Authorization", "Content-Type", "Content-Encoding", "X-Request-Id", *_METHOD_OVERRIDES))
_PASSTHROUGH_SKIP = skipped_request_headers(("X-Request-Id", *_METHOD_OVERRIDES))
_KEY_MISS = frozenset({"no_matching_key", "bad_signature"})
_UNTRUSTED_FRAMING = frozenset({"bad_transfer_encoding", "body_too_large", "body_timeout",
                                "incomplete_body", "content_encoding"})


async def dispatch(request: web.Request) -> web.StreamResponse:
    """Route on the raw path, byte for byte: what is matched is exactly what is forwarded."""
    runtime = request.app[RUNTIME].current  # read once: a reload does not change this request
    path = request.raw_path.partition("?")[0]
    request_id = request_id_of(request)
    basic = "Authorization" in request.headers
    guards = request.app[GUARDS]
    if guards.in_flight >= guards.limits.max_in_flight:
        # Shed load before reading anything: every admitted request keeps its latency.
        return error_response(TemporarilyUnavailable("overloaded"), request_id=request_id,
                              basic_challenge=False)
    in_flight = request.app[METRICS].in_flight
    in_flight.inc()
    guards.in_flight += 1
    try:
        _check_framing(request)
        if path in runtime.endpoints:
            return await handle_endpoint(request, runtime, path, request_id)
        if path in runtime.passthrough:
            return await handle_passthrough(request, path, request_id)
        raise NotFound("no_route")
    except GatewayError as error:
        response = error_response(error, request_id=request_id, basic_challenge=basic)
        if error.reason in _UNTRUSTED_FRAMING:
            # Where this request ends is in doubt: nothing after it on the connection is read.
            response.force_close()
        return response
    except Exception:
        log.exception("unexpected error (request_id=%s)", request_id)
        return error_response(ServerError("unexpected"), request_id=request_id,
                              basic_challenge=False)
    finally:
        in_flight.dec()
        guards.in_flight -= 1


def _check_framing(request: web.Request) -> None:
    """Only plain chunked transfer coding: the parser would ignore any other coding, and an
    intermediary that applies it would see another body than the one we authenticate."""
    codings = request.headers.getall("Transfer-Encoding", ())
    if codings and [c.strip().lower() for c in codings] != ["chunked"]:
        raise InvalidRequest("bad_transfer_encoding", untrusted(", ".join(codings)) or "")


async def handle_endpoint(
    request: web.Request, runtime: Runtime, path: str, request_id: str
) -> web.StreamResponse:
    """Authenticate, record the jti, rewrite and forward; audit and count every outcome."""
    started = time.perf_counter()
    record = AuditRecord(request_id=request_id, endpoint=path, result="rejected", reason="",
                         method="private_key_jwt", remote=request.remote)
    metrics, guards = request.app[METRICS], request.app[GUARDS]
    address = request.remote or ""
    try:
        retry_after = guards.address_failures.retry_after(address, time.monotonic())
        if retry_after is not None:
            raise TooManyRequests("too_many_failures", retry_after, "from this address")
        body = await _read_token_request(request, guards.limits)
        try:
            form = parse_form(body, content_type=request.headers.get("Content-Type"),
                              has_authorization="Authorization" in request.headers,
                              query_string=request.query_string,
                              max_body=guards.limits.max_body_bytes)
        except InvalidClient as error:
            if error.reason != "unsupported_auth_method":
                raise
            return await _forward_legacy(request, runtime, path, request_id, body, record, error)
        approved = await _authenticate(request, runtime, path, form, record)
        record.result, record.reason = "accepted", "ok"
        response, record.backend_status = await _forward_endpoint(
            request, path, request_id, form, approved)
        return response
    except GatewayError as error:
        if record.result == "rejected":
            record.reason = error.reason
            if isinstance(error, InvalidClient):  # failed authentications slow down
                now = time.monotonic()
                guards.address_failures.failed(address, now)
                if record.client is not None:
                    guards.client_failures.failed(record.client, now)
        else:
            record.backend_error = error.reason
        if error.detail:
            log.info("request %s: %s (%s)", request_id, error.reason, error.detail)
        raise
    finally:
        metrics.count_auth(record.client or UNKNOWN_CLIENT, path, record.result, record.reason,
                           record.method or "private_key_jwt")
        record.latency_ms = round((time.perf_counter() - started) * 1000, 3)
        request.app[AUDIT].write(record)


async def _read_token_request(request: web.Request, limits: LimitSettings) -> bytes:
    if request.method != "POST":
        raise MethodNotAllowed("method_not_allowed", untrusted(request.method) or "")
    encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding != "identity":
        raise InvalidRequest("content_encoding", untrusted(encoding) or "")
    return await read_body(request, limits.max_body_bytes, limits.body_timeout)


async def _forward_legacy(
    request: web.Request, runtime: Runtime, path: str, request_id: str, body: bytes,
    record: AuditRecord, refusal: InvalidClient,
) -> web.StreamResponse:
    """Migration mode: a shared secret from a client still allowed one goes through as it
    came (the backend checks the secret), marked deprecated; anyone else gets ``refusal``.
    """
    try:
        claim = identify_secret_client(body, request.headers.get("Authorization"))
    except GatewayError:
        raise refusal from None  # unreadable secret credentials: refused as before
    record.method = claim.method
    client = runtime.clients.get(claim.client_id)
    legacy = client.legacy if client is not None else None
    if client is None or legacy is None or claim.method not in legacy.methods:
        raise refusal
    record.client = client.client_id
    if legacy.deadline is not None and time.time() >= legacy.deadline:
        raise InvalidClient("legacy_auth_expired", f"{claim.method} after its sunset")
    record.result, record.reason = "accepted", "legacy_secret"
    headers = forwarded_request_headers(request, skip=_PASSTHROUGH_SKIP, request_id=request_id)
    response, record.backend_status = await _forward(request, path, headers, body, request_id)
    response.headers["Deprecation"] = legacy.deprecation
    if legacy.sunset is not None:
        response.headers["Sunset"] = legacy.sunset
    log.warning("client %s authenticated with %s (migration mode)", client.client_id,
                claim.method)
    return response


async def _authenticate(
    request: web.Request, runtime: Runtime, path: str, form: TokenForm, record: AuditRecord
) -> ClientRuntime:
    """Look the client up, verify, then record the jti (last)."""
    started = time.perf_counter()
    try:  # refused tokens cost CPU too: every attempt is timed
        client, verified, now = await _identify_and_verify(
            runtime, form, path, record, request.app[GUARDS])
    finally:
        request.app[METRICS].verification_seconds.observe(time.perf_counter() - started)
    policy = client.policies[path]
    record.key_thumbprint = verified.key_thumbprint
    record.jti_hash = jti_digest(client.client_id, verified.jti)
    fingerprint = (hashlib.sha256(form.assertion.encode("ascii", "replace")).hexdigest()
                   if client.allow_reuse else None)
    await _check_replay(request, verified, policy.clock_skew, now, fingerprint)
    return client


async def _identify_and_verify(
    runtime: Runtime, form: TokenForm, path: str, record: AuditRecord, guards: Guards
) -> tuple[ClientRuntime, VerifiedAssertion, float]:
    """Parse the assertion, find its client (client_id, else sub), verify; returns the clock."""
    parsed = parse_assertion(form.assertion)
    record.kid, record.alg = untrusted(parsed.kid), untrusted(parsed.header.get("alg"))
    if form.client_id is not None and parsed.subject != form.client_id:
        raise InvalidRequest("client_id_mismatch")
    claimed = form.client_id if form.client_id is not None else parsed.subject
    client = runtime.clients.get(claimed) if claimed is not None else None
    if client is None:
        raise InvalidClient("unknown_client", untrusted(claimed) or "")
    record.client = client.client_id
    # Checked before any signature is: a flood of bad assertions for one client costs little.
    retry_after = guards.client_failures.retry_after(client.client_id, time.monotonic())
    if retry_after is not None:
        raise TooManyRequests("too_many_failures", retry_after, "for this client")
    now = time.time()
    return client, await _verify(client, parsed, client.policies[path], now), now


async def _verify(
    client: ClientRuntime, parsed: ParsedAssertion, policy: AssertionPolicy, now: float
) -> VerifiedAssertion:
    """Verify against the client's keys; on a key miss, refetch a remote set once and retry."""
    keys = client.keys.current()
    if keys is None:
        raise TemporarilyUnavailable("keys_unavailable")
    try:
        return verify_assertion(parsed, keys, policy, now)
    except InvalidClient as error:
        # A rotated key shows up as an unknown kid (or, without a kid, as no key verifying).
        if error.reason not in _KEY_MISS or client.keys.kind != "jwks_uri":
            raise
        fresh = await client.keys.refresh_for_unknown_kid()
        if fresh is None or fresh is keys:
            raise
    return verify_assertion(parsed, fresh, policy, now)


async def _check_replay(
    request: web.Request, verified: VerifiedAssertion, clock_skew: float, now: float,
    fingerprint: str | None,
) -> None:
    ledger, metrics = request.app[LEDGER], request.app[METRICS]
    started = time.perf_counter()
    try:
        fresh = await ledger.record(verified.client_id, verified.jti,
                                    verified.exp + clock_skew, now, fingerprint=fingerprint)
    except GatewayError:
        metrics.count_replay_check(ledger.name, "error", time.perf_counter() - started)
        raise
    metrics.count_replay_check(ledger.name, "fresh" if fresh else "replayed",
                               time.perf_counter() - started)
    if not fresh:
        raise InvalidClient("replayed")


async def _forward_endpoint(
    request: web.Request, path: str, request_id: str, form: TokenForm, client: ClientRuntime
) -> tuple[web.StreamResponse, int]:
    credential = client.credential
    headers = forwarded_request_headers(request, skip=_ENDPOINT_SKIP, request_id=request_id)
    headers.append(("Content-Type", "application/x-www-form-urlencoded"))
    if credential.authorization is not None:
        headers.append(("Authorization", credential.authorization))
    return await _forward(request, path, headers, credential.body(form.params), request_id)


async def _forward(
    request: web.Request, path: str, headers: list[tuple[str, str]], body: bytes,
    request_id: str,
) -> tuple[web.StreamResponse, int]:
    """Forward on the path as matched; the raw query string is kept as it came."""
    metrics = request.app[METRICS]
    started = time.perf_counter()
    try:
        response, status = await request.app[UPSTREAM].forward(
            request.method, request.raw_path, headers, body, request_id=request_id)
    except GatewayError:
        metrics.observe_backend(path, "error", time.perf_counter() - started)
        raise
    metrics.observe_backend(path, status_class(status), time.perf_counter() - started)
    return response, status


async def handle_passthrough(
    request: web.Request, path: str, request_id: str
) -> web.StreamResponse:
    """Forward as it came (hop-by-hop headers aside); no authentication is involved."""
    body = await read_body(request, MAX_PASSTHROUGH_BODY,
                           request.app[GUARDS].limits.body_timeout)
    headers = forwarded_request_headers(request, skip=_PASSTHROUGH_SKIP, request_id=request_id)
    response, _ = await _forward(request, path, headers, body, request_id)
    return response
