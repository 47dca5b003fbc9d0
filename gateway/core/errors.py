"""The error model: every refusal is a GatewayError with a public face and a private reason.

    GatewayError                      code              status
    ├── InvalidRequest                invalid_request   400  malformed request or envelope
    │   └── UntrustedFraming                              where the request ends is in doubt
    ├── InvalidClient                 invalid_client    401  assertion, keys or client wrong
    │   ├── KeyMiss                                       no registered key verified it
    │   └── UnsupportedAuthMethod                         a shared secret, not an assertion
    ├── TemporarilyUnavailable        temporarily_unavailable 503  ledger or key source down
    │   └── RetryLater                                    known when to retry (Retry-After)
    ├── TooManyRequests               temporarily_unavailable 429  failed attempts, slow down
    ├── BadGateway                    bad_gateway       502  backend refused or unreachable
    ├── GatewayTimeout                gateway_timeout   504  backend too slow
    ├── NotFound                      not_found         404  no such route
    ├── MethodNotAllowed              invalid_request   405  only POST reaches an endpoint
    ├── ExpectationFailed             invalid_request   417  an Expect other than 100-continue
    └── ServerError                   server_error      500  anything unexpected (opaque)

The public ``description`` is fixed per class, so a caller cannot tell which
check failed; ``reason`` (a ``Reason``: a closed set of machine words) goes to logs and the
metric label, ``detail`` (free text) to logs only. Foreign exceptions are
translated where they are caught, with ``raise ... from exc``. The subclasses
steer the callers (close the connection, refetch keys, try migration mode) without
comparing reason words; ``attempt`` carries what the authenticator learnt before
it refused, for the audit line and the metrics.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from gateway.core.reasons import Reason

if TYPE_CHECKING:
    from gateway.core.attempt import Attempt


class GatewayError(Exception):
    """Root of every error the gateway answers with."""

    code: ClassVar[str] = "server_error"
    status: ClassVar[int] = 500
    description: ClassVar[str] = "The server encountered an unexpected condition."

    def __init__(self, reason: Reason, detail: str = "") -> None:
        # Reason() refuses a word outside the enumeration, even from untyped callers.
        self.reason = Reason(reason)
        super().__init__(f"{self.reason}: {detail}" if detail else str(self.reason))
        self.detail = detail
        self.attempt: Attempt | None = None
        # Seconds after which a retry may succeed (the Retry-After header), when known.
        self.retry_after: float | None = None


class InvalidRequest(GatewayError):
    code = "invalid_request"
    status = 400
    description = "The request is missing a required parameter or is otherwise malformed."


class UntrustedFraming(InvalidRequest):
    """The body's framing or encoding is in doubt: nothing after it on the connection is read."""


class InvalidClient(GatewayError):
    code = "invalid_client"
    status = 401
    description = "Client authentication failed."


class KeyMiss(InvalidClient):
    """No key of the client verified the signature: a rotated key may be worth a refetch."""


class UnsupportedAuthMethod(InvalidClient):
    """The request authenticates with a shared secret: only migration mode may accept it."""


class TemporarilyUnavailable(GatewayError):
    code = "temporarily_unavailable"
    status = 503
    description = "The service is temporarily unable to handle the request."


class RetryLater(TemporarilyUnavailable):
    """Unavailable for a known while: ``retry_after`` seconds (a fresh request then succeeds)."""

    def __init__(self, reason: Reason, retry_after: float, detail: str = "") -> None:
        super().__init__(reason, detail)
        self.retry_after = retry_after


class TooManyRequests(GatewayError):
    """Too many failed authentications from one client or address: try again later."""

    code = "temporarily_unavailable"
    status = 429
    description = "Too many failed attempts; retry later."

    def __init__(self, reason: Reason, retry_after: float, detail: str = "") -> None:
        super().__init__(reason, detail)
        self.retry_after = retry_after


class BadGateway(GatewayError):
    code = "bad_gateway"
    status = 502
    description = "The upstream authorization server could not be reached."


class GatewayTimeout(GatewayError):
    code = "gateway_timeout"
    status = 504
    description = "The upstream authorization server did not answer in time."


class NotFound(GatewayError):
    code = "not_found"
    status = 404
    description = "The requested resource does not exist."


class ExpectationFailed(GatewayError):
    code = "invalid_request"
    status = 417
    description = "The request's expectation cannot be met."


class MethodNotAllowed(GatewayError):
    code = "invalid_request"
    status = 405
    description = "The request method is not allowed for this resource."


class ServerError(GatewayError):
    code = "server_error"
    status = 500
    description = "The server encountered an unexpected condition."
