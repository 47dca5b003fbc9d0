"""HTTP handlers: they move bytes; the authenticator decides, the upstream forwards."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from aiohttp import web

from gateway.adapters.audit import AuditRecord
from gateway.adapters.metrics import UNKNOWN_CLIENT, status_class
from gateway.adapters.upstream import forwarded_request_headers, skipped_request_headers
from gateway.core.attempt import PRIVATE_KEY_JWT, Attempt, untrusted
from gateway.core.authenticator import Approval, TokenRequest
from gateway.core.errors import (
    GatewayError,
    MethodNotAllowed,
    NotFound,
    ServerError,
    TemporarilyUnavailable,
    UntrustedFraming,
)
from gateway.core.reasons import Reason
from gateway.web.exchange import error_response, read_body, request_id_of
from gateway.web.state import AUDIT, AUTHENTICATOR, GUARDS, METRICS, RUNTIME, UPSTREAM

if TYPE_CHECKING:
    from gateway.adapters.assemble import Runtime

log = logging.getLogger("gateway")

# Passthrough paths (discovery documents and the like) may carry larger bodies than a token form.
MAX_PASSTHROUGH_BODY = 1024 * 1024
# The endpoint body is rebuilt and re-authenticated: the client's own framing and credential go.
# A backend framework that honours a method override would read our POST as another method.
_METHOD_OVERRIDES = ("X-HTTP-Method-Override", "X-Method-Override", "X-HTTP-Method")
_ENDPOINT_SKIP = skipped_request_headers(
    ("Authorization", "Content-Type", "Content-Encoding", "X-Request-Id", *_METHOD_OVERRIDES))
_PASSTHROUGH_SKIP = skipped_request_headers(("X-Request-Id", *_METHOD_OVERRIDES))


async def dispatch(request: web.Request) -> web.StreamResponse:
    """Route on the raw path, byte for byte: what is matched is exactly what is forwarded."""
    runtime = request.app[RUNTIME].current  # read once: a reload does not change this request
    path = request.raw_path.partition("?")[0]
    request_id = request_id_of(request)
    basic = "Authorization" in request.headers
    guards = request.app[GUARDS]
    if guards.in_flight >= guards.limits.max_in_flight:
        # Shed load before reading anything: every admitted request keeps its latency.
        return error_response(TemporarilyUnavailable(Reason.OVERLOADED), request_id=request_id,
                              basic_challenge=False)
    guards.in_flight += 1  # the gauge reads it at each metrics flush
    try:
        _check_framing(request)
        if path in runtime.endpoints:
            return await handle_endpoint(request, runtime, path, request_id)
        if path in runtime.passthrough:
            return await handle_passthrough(request, path, request_id)
        raise NotFound(Reason.NO_ROUTE)
    except GatewayError as error:
        response = error_response(error, request_id=request_id, basic_challenge=basic)
        if isinstance(error, UntrustedFraming):
            # Where this request ends is in doubt: nothing after it on the connection is read.
            response.force_close()
        return response
    except Exception:
        log.exception("unexpected error (request_id=%s)", request_id)
        return error_response(ServerError(Reason.UNEXPECTED), request_id=request_id,
                              basic_challenge=False)
    finally:
        guards.in_flight -= 1


def _check_framing(request: web.Request) -> None:
    """Only plain chunked transfer coding: the parser would ignore any other coding, and an
    intermediary that applies it would see another body than the one we authenticate."""
    codings = request.headers.getall("Transfer-Encoding", ())
    if codings and [c.strip().lower() for c in codings] != ["chunked"]:
        raise UntrustedFraming(Reason.BAD_TRANSFER_ENCODING, untrusted(", ".join(codings)) or "")


async def handle_endpoint(
    request: web.Request, runtime: Runtime, path: str, request_id: str
) -> web.StreamResponse:
    """Read the body, authenticate, forward; audit and count the outcome once."""
    started = time.perf_counter()
    outcome: Approval | GatewayError | None = None
    backend_status: int | None = None
    backend_error: str | None = None
    try:
        body = await _read_token_request(request)
        token_request = TokenRequest(
            endpoint=path, body=body, content_type=request.headers.get("Content-Type"),
            authorization=request.headers.get("Authorization"),
            query_string=request.query_string, remote=request.remote or "")
        outcome = await request.app[AUTHENTICATOR].authenticate(token_request, runtime.clients)
        try:
            response, backend_status = await _forward_approved(
                request, path, request_id, body, outcome)
        except GatewayError as error:
            backend_error = error.reason
            raise
        return response
    except GatewayError as error:
        if outcome is None:
            outcome = error
        if error.detail:
            log.info("request %s: %s (%s)", request_id, error.reason, error.detail)
        raise
    finally:
        _account(request, path, request_id, outcome, started, backend_status, backend_error)


def _account(
    request: web.Request, path: str, request_id: str, outcome: Approval | GatewayError | None,
    started: float, backend_status: int | None, backend_error: str | None,
) -> None:
    """The audit line and the metrics of one decision, from its outcome."""
    attempt: Attempt | None
    if isinstance(outcome, Approval):
        result, reason, attempt = "accepted", outcome.reason, outcome.attempt
    else:
        # None: something unexpected escaped, answered with an opaque 500.
        result = "rejected"
        reason = outcome.reason if outcome is not None else Reason.UNEXPECTED
        attempt = outcome.attempt if outcome is not None else None
    metrics = request.app[METRICS]
    record = AuditRecord(request_id=request_id, endpoint=path, result=result, reason=reason,
                         method=PRIVATE_KEY_JWT, remote=request.remote,
                         backend_status=backend_status, backend_error=backend_error)
    if attempt is not None:
        record.fill(attempt)
        if attempt.verification_seconds is not None:
            metrics.observe_verification(attempt.verification_seconds)
        if attempt.replay is not None:
            metrics.count_replay_check(attempt.replay.store, attempt.replay.result,
                                       attempt.replay.seconds)
    metrics.count_auth(record.client or UNKNOWN_CLIENT, path, result, reason,
                       record.method or PRIVATE_KEY_JWT)
    record.latency_ms = round((time.perf_counter() - started) * 1000, 3)
    request.app[AUDIT].write(record)


async def _read_token_request(request: web.Request) -> bytes:
    if request.method != "POST":
        raise MethodNotAllowed(Reason.METHOD_NOT_ALLOWED, untrusted(request.method) or "")
    encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding != "identity":
        raise UntrustedFraming(Reason.CONTENT_ENCODING, untrusted(encoding) or "")
    limits = request.app[GUARDS].limits
    return await read_body(request, limits.max_body_bytes, limits.body_timeout)


async def _forward_approved(
    request: web.Request, path: str, request_id: str, body: bytes, approval: Approval
) -> tuple[web.StreamResponse, int]:
    """Forward with the backend's credential, or (migration mode) as it came, deprecated."""
    legacy = approval.legacy
    if legacy is not None or approval.form is None:
        headers = forwarded_request_headers(request, skip=_PASSTHROUGH_SKIP,
                                            request_id=request_id)
        response, status = await _forward(request, path, headers, body, request_id)
        if legacy is not None:
            response.headers["Deprecation"] = legacy.deprecation
            if legacy.sunset is not None:
                response.headers["Sunset"] = legacy.sunset
        log.warning("client %s authenticated with %s (migration mode)",
                    approval.client.client_id, approval.attempt.method)
        return response, status
    backend = approval.client.backend
    headers = forwarded_request_headers(request, skip=_ENDPOINT_SKIP, request_id=request_id)
    headers += backend.forward_headers
    return await _forward(request, path, headers, backend.body(approval.form.params),
                          request_id)


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
