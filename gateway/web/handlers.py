"""The public listener's handler: it moves bytes, the authenticator decides, upstream forwards."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from aiohttp import HttpVersion11, web

from gateway.adapters.assemble import Runtime, RuntimeSlot
from gateway.adapters.audit import AuditLog, AuditRecord
from gateway.adapters.metrics import UNKNOWN_CLIENT, GatewayMetrics
from gateway.adapters.upstream import (
    BACKEND_OUTAGES,
    Upstream,
    forwarded_request_headers,
    skipped_request_headers,
)
from gateway.core.attempt import PRIVATE_KEY_JWT, Attempt, untrusted
from gateway.core.authenticator import Approval, Authenticator, TokenRequest
from gateway.core.client_address import (
    NO_TRUSTED_PROXIES,
    ClientOrigin,
    TrustedProxies,
    direct_origin,
)
from gateway.core.errors import (
    ExpectationFailed,
    GatewayError,
    MethodNotAllowed,
    NotFound,
    ServerError,
    TemporarilyUnavailable,
    UntrustedFraming,
)
from gateway.core.reasons import Reason
from gateway.core.usage import UsageBook, credential_ref
from gateway.web.discovery import BACKEND_REQUEST_SKIP, serve_discovery
from gateway.web.exchange import error_response, read_body, request_id_of
from gateway.web.state import Guards

log = logging.getLogger("gateway")

# Passthrough paths (discovery documents and the like) may carry larger bodies than a token form.
MAX_PASSTHROUGH_BODY = 1024 * 1024
# The endpoint body is rebuilt and re-authenticated: the client's own framing and credential go.
# A backend framework that honours a method override would read our POST as another method.
_METHOD_OVERRIDES = ("X-HTTP-Method-Override", "X-Method-Override", "X-HTTP-Method")
_ENDPOINT_SKIP = skipped_request_headers(
    ("Authorization", "Content-Type", "Content-Encoding", "X-Request-Id", *_METHOD_OVERRIDES))
_PASSTHROUGH_SKIP = skipped_request_headers(("X-Request-Id", *_METHOD_OVERRIDES))
_DISCOVERY_SKIP = _PASSTHROUGH_SKIP | skipped_request_headers(BACKEND_REQUEST_SKIP)


class PublicHandler:
    """Every request to the public listener, routed on the raw path, byte for byte.

    Called by aiohttp's low-level server (no router, no middlewares): what is matched is
    exactly what is forwarded, and the collaborators are attributes, not app lookups.
    """

    def __init__(self, slot: RuntimeSlot, guards: Guards, authenticator: Authenticator,
                 metrics: GatewayMetrics, audit: AuditLog,
                 trusted: TrustedProxies = NO_TRUSTED_PROXIES) -> None:
        self.slot, self.guards, self.authenticator = slot, guards, authenticator
        self.metrics, self.audit = metrics, audit
        self.trusted = trusted  # listen.trusted_proxies, parsed once (restart to change)
        self.upstream: Upstream | None = None  # the backend pool, opened when serving starts
        self.usage: UsageBook | None = None  # usage per credential; None: not recorded
        self.usage_clock: Callable[[], float] = time.time

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        """Route on the raw path, byte for byte: what is matched is exactly what is forwarded."""
        runtime = self.slot.current  # read once: a reload does not change this request
        path = request.raw_path.partition("?")[0]
        request_id = request_id_of(request)
        basic = "Authorization" in request.headers
        guards = self.guards
        if guards.in_flight >= guards.limits.max_in_flight:
            # Shed load before reading anything: every admitted request keeps its latency.
            return error_response(TemporarilyUnavailable(Reason.OVERLOADED), request_id=request_id,
                                  basic_challenge=False)
        guards.in_flight += 1
        self.metrics.touch()  # the in-flight gauge is set at the next flush
        try:
            self._check_framing(request)
            if "Expect" in request.headers:
                await self._continue(request)
            if path in runtime.endpoints:
                return await self.handle_endpoint(request, runtime, path, request_id)
            if path in runtime.passthrough:
                if path in runtime.discovery.paths and request.method in ("GET", "HEAD"):
                    return await self.handle_discovery(request, runtime, path, request_id)
                return await self.handle_passthrough(request, path, request_id)
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

    def _origin(self, request: web.BaseRequest) -> ClientOrigin:
        """The client's address and scheme: the peer's, unless the peer is a trusted proxy."""
        peer = request.remote or ""
        trusted = self.trusted
        if not trusted:  # nothing to believe: no header is read
            return direct_origin(peer, request.scheme)
        headers = request.headers
        return trusted.resolve(peer, headers.getall("X-Forwarded-For", ()),
                               headers.getall("X-Forwarded-Proto", ()), request.scheme)

    @staticmethod
    async def _continue(request: web.BaseRequest) -> None:
        """Answer ``Expect: 100-continue`` (curl sends it for bodies over 1 KiB) as aiohttp's
        router would; any other expectation cannot be met (RFC 9110 §10.1.1)."""
        if request.headers["Expect"].strip().lower() != "100-continue":
            raise ExpectationFailed(Reason.UNKNOWN_EXPECTATION,
                                    untrusted(request.headers["Expect"]) or "")
        if request.version == HttpVersion11:
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            request.writer.output_size = 0  # the interim answer is not the response's body

    @staticmethod
    def _check_framing(request: web.BaseRequest) -> None:
        """Only plain chunked transfer coding: the parser would ignore any other coding, and an
        intermediary that applies it would see another body than the one we authenticate."""
        codings = request.headers.getall("Transfer-Encoding", ())
        if codings and [c.strip().lower() for c in codings] != ["chunked"]:
            shown = untrusted(", ".join(codings)) or ""
            raise UntrustedFraming(Reason.BAD_TRANSFER_ENCODING, shown)

    async def handle_endpoint(
        self, request: web.BaseRequest, runtime: Runtime, path: str, request_id: str
    ) -> web.StreamResponse:
        """Read the body, authenticate, forward; audit and count the outcome once."""
        started = time.perf_counter()
        origin = self._origin(request)
        outcome: Approval | GatewayError | None = None
        backend_status: int | None = None
        backend_error: str | None = None
        try:
            self.authenticator.admit(origin.address)
            self._check_token_request(request)
            limits = self.guards.limits
            body = await read_body(request, limits.max_body_bytes, limits.body_timeout)
            token_request = TokenRequest(
                endpoint=path, body=body, content_type=request.headers.get("Content-Type"),
                authorization=request.headers.get("Authorization"),
                query_string=request.query_string, remote=origin.address)
            outcome = await self.authenticator.authenticate(token_request, runtime.clients,
                                                            runtime.federation, runtime.disabled)
            headers, forwarded = self._rewrite(request, request_id, body, outcome, origin)
            try:
                response, backend_status = await self._upstream().forward(
                    request.method, path, request.raw_path, headers, forwarded,
                    request_id=request_id)
            except GatewayError as error:
                backend_error = error.reason
                raise
            if outcome.legacy is not None:
                self._deprecated(response, outcome)
            return response
        except GatewayError as error:
            if outcome is None:
                outcome = error
            if error.detail and error.reason not in BACKEND_OUTAGES:  # those: a warning
                log.info("request %s: %s (%s)", request_id, error.reason, error.detail)
            raise
        finally:
            self._account(origin, path, request_id, outcome, started, backend_status,
                          backend_error)
            # A refusal's traceback holds this frame: drop the cycle here rather than leave
            # it (and the request it holds) to the cyclic collector.
            outcome = None

    def _account(
        self, origin: ClientOrigin, path: str, request_id: str,
        outcome: Approval | GatewayError | None, started: float, backend_status: int | None,
        backend_error: str | None,
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
        metrics = self.metrics
        record = AuditRecord(request_id=request_id, endpoint=path, result=result, reason=reason,
                             method=PRIVATE_KEY_JWT, remote=origin.address or None,
                             backend_status=backend_status, backend_error=backend_error)
        if attempt is not None:
            record.fill(attempt)
            if attempt.verification_seconds is not None:
                metrics.observe_verification(attempt.verification_seconds)
            if attempt.replay is not None:
                metrics.count_replay_check(attempt.replay.store, attempt.replay.result,
                                           attempt.replay.seconds)
            if attempt.decisions and attempt.client is not None:
                for decision in attempt.decisions:
                    metrics.count_federation_decision(attempt.client, decision.trust,
                                                      decision.mode, decision.result)
            if attempt.certificate_not_after is not None and attempt.client is not None:
                # A CA-anchored client's leaf; the gauge is written only when it changed.
                metrics.set_certificate_expiry(attempt.client, attempt.certificate_not_after)
            usage = self.usage
            if usage is not None and result == "accepted" and attempt.client is not None:
                ref = credential_ref(attempt)
                if ref is not None:  # one dict update; shared in Redis in the background
                    usage.record(attempt.client, ref, self.usage_clock())
        metrics.count_auth(record.client or UNKNOWN_CLIENT, path, result, reason,
                           record.method or PRIVATE_KEY_JWT)
        record.latency_ms = round((time.perf_counter() - started) * 1000, 3)
        self.audit.write(record)

    @staticmethod
    def _check_token_request(request: web.BaseRequest) -> None:
        if request.method != "POST":
            raise MethodNotAllowed(Reason.METHOD_NOT_ALLOWED, untrusted(request.method) or "")
        encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding != "identity":
            raise UntrustedFraming(Reason.CONTENT_ENCODING, untrusted(encoding) or "")

    @staticmethod
    def _rewrite(
        request: web.BaseRequest, request_id: str, body: bytes, approval: Approval,
        origin: ClientOrigin,
    ) -> tuple[list[tuple[str, str]], bytes]:
        """The headers and body the backend gets: with the backend's credential, or (migration
        mode) as they came."""
        if approval.legacy is not None or approval.form is None:
            return (forwarded_request_headers(request, skip=_PASSTHROUGH_SKIP,
                                              request_id=request_id, origin=origin), body)
        backend = approval.client.backend
        headers = forwarded_request_headers(request, skip=_ENDPOINT_SKIP, request_id=request_id,
                                            origin=origin)
        headers += backend.forward_headers
        return headers, backend.body(approval.form.params)

    @staticmethod
    def _deprecated(response: web.StreamResponse, approval: Approval) -> None:
        """Migration mode: the answer says the secret is deprecated, and until when."""
        legacy = approval.legacy
        assert legacy is not None
        if legacy.deprecation is not None:  # legacy_auth.since
            response.headers["Deprecation"] = legacy.deprecation
        if legacy.sunset is not None:
            response.headers["Sunset"] = legacy.sunset
        log.warning("client %s authenticated with %s (migration mode)",
                    approval.client.client_id, approval.attempt.method)

    def _upstream(self) -> Upstream:
        upstream = self.upstream
        assert upstream is not None, "serving has not started"
        return upstream

    async def handle_passthrough(
        self, request: web.BaseRequest, path: str, request_id: str
    ) -> web.StreamResponse:
        """Forward as it came (hop-by-hop headers aside); no authentication is involved."""
        body = await read_body(request, MAX_PASSTHROUGH_BODY,
                               self.guards.limits.body_timeout)
        headers = forwarded_request_headers(request, skip=_PASSTHROUGH_SKIP, request_id=request_id,
                                            origin=self._origin(request))
        response, _ = await self._upstream().forward(request.method, path, request.raw_path,
                                                     headers, body, request_id=request_id)
        return response

    async def handle_discovery(
        self, request: web.BaseRequest, runtime: Runtime, path: str, request_id: str
    ) -> web.StreamResponse:
        """A GET or HEAD of a discovery document: rewritten to name the gateway (web.discovery)."""
        body = await read_body(request, MAX_PASSTHROUGH_BODY, self.guards.limits.body_timeout)
        headers = forwarded_request_headers(request, skip=_DISCOVERY_SKIP, request_id=request_id,
                                            origin=self._origin(request))
        return await serve_discovery(
            self._upstream(), runtime.discovery, path, request.raw_path, headers, body,
            request.headers.getall("If-None-Match", []), request_id=request_id,
            now=self.authenticator.clock.time())
