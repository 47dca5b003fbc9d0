"""Every reason word: the audit log's ``reason``, the metric label, the logs (a closed set).

The README lists the same words; a test keeps the two equal.
"""

from __future__ import annotations

from enum import StrEnum


class Reason(StrEnum):
    # Accepted.
    OK = "ok"
    LEGACY_SECRET = "legacy_secret"  # a shared secret let through in migration mode
    # The envelope (400, 405).
    METHOD_NOT_ALLOWED = "method_not_allowed"
    UNKNOWN_EXPECTATION = "unknown_expectation"
    BAD_CONTENT_TYPE = "bad_content_type"
    CONTENT_ENCODING = "content_encoding"
    BAD_TRANSFER_ENCODING = "bad_transfer_encoding"
    BODY_TOO_LARGE = "body_too_large"
    BODY_TIMEOUT = "body_timeout"
    INCOMPLETE_BODY = "incomplete_body"
    BAD_ENCODING = "bad_encoding"
    TOO_MANY_PARAMETERS = "too_many_parameters"
    DUPLICATE_PARAMETER = "duplicate_parameter"
    CREDENTIALS_IN_QUERY = "credentials_in_query"
    MULTIPLE_AUTH_METHODS = "multiple_auth_methods"
    EMPTY_ASSERTION = "empty_assertion"
    MISSING_ASSERTION_TYPE = "missing_assertion_type"
    BAD_ASSERTION_TYPE = "bad_assertion_type"
    CLIENT_ID_MISMATCH = "client_id_mismatch"
    UNFORWARDABLE = "unforwardable"  # a header or path the backend client refuses to send
    # Client authentication (401).
    NO_CLIENT_AUTH = "no_client_auth"
    UNSUPPORTED_AUTH_METHOD = "unsupported_auth_method"
    SECRET_NOT_ALLOWED = "secret_not_allowed"  # a configured client, a secret method not allowed
    UNKNOWN_CLIENT = "unknown_client"
    CLIENT_DISABLED = "client_disabled"  # a configured client with enabled: false (offboarded)
    LEGACY_AUTH_EXPIRED = "legacy_auth_expired"
    MALFORMED = "malformed"
    BAD_HEADER = "bad_header"
    FORBIDDEN_HEADER = "forbidden_header"
    ALG_NOT_ALLOWED = "alg_not_allowed"
    BAD_TYP = "bad_typ"
    MISSING_TYP = "missing_typ"
    NO_MATCHING_KEY = "no_matching_key"
    BAD_SIGNATURE = "bad_signature"
    KEY_EXPIRED = "key_expired"  # the key that verified is past its key_expiry or retire date
    CERTIFICATE_KEY_MISMATCH = "certificate_key_mismatch"
    CERTIFICATE_EXPIRED = "certificate_expired"  # past its notAfter, plus the clock skew
    # CA-anchored clients: the x5c chain, its revocation, the leaf's subject or SAN.
    CERTIFICATE_UNTRUSTED = "certificate_untrusted"
    CERTIFICATE_REVOKED = "certificate_revoked"
    CERTIFICATE_SUBJECT_MISMATCH = "certificate_subject_mismatch"
    BAD_ISSUER = "bad_issuer"
    BAD_SUBJECT = "bad_subject"
    BAD_AUDIENCE = "bad_audience"
    MISSING_EXP = "missing_exp"
    EXPIRED = "expired"
    ISSUED_IN_FUTURE = "issued_in_future"
    NOT_YET_VALID = "not_yet_valid"
    BAD_TIME_WINDOW = "bad_time_window"
    LIFETIME_TOO_LONG = "lifetime_too_long"
    MISSING_JTI = "missing_jti"
    BAD_JTI = "bad_jti"
    BAD_CLAIMS = "bad_claims"
    MISSING_IAT = "missing_iat"  # a federated token must say when it was issued
    # Federated trusts (401).
    UNKNOWN_ISSUER = "unknown_issuer"
    NO_TRUST = "no_trust"
    SUBJECT_MISMATCH = "subject_mismatch"
    CLAIM_MISMATCH = "claim_mismatch"
    AMBIGUOUS_IDENTITY = "ambiguous_identity"
    REPLAYED = "replayed"
    # Slow down, or fail closed (429, 503).
    TOO_MANY_FAILURES = "too_many_failures"
    OVERLOADED = "overloaded"
    KEYS_UNAVAILABLE = "keys_unavailable"
    REPLAY_STORE_FULL = "replay_store_full"
    REPLAY_STORE_UNAVAILABLE = "replay_store_unavailable"
    REPLAY_STORE_RESET = "replay_store_reset"  # issued before the shared ledger lost its data
    # The backend, after an accepted authentication (502, 504): the audit's backend_error.
    BACKEND_UNREACHABLE = "backend_unreachable"
    BACKEND_TIMEOUT = "backend_timeout"
    # A discovery document on a passthrough path that cannot be rewritten (502; logged).
    BAD_DISCOVERY_DOCUMENT = "bad_discovery_document"
    # Neither an endpoint nor a passthrough (404; logged, never audited).
    NO_ROUTE = "no_route"
    # Anything unexpected (500, logged with the request id).
    UNEXPECTED = "unexpected"
