"""Client assertions: parse a compact JWS once, select the key, verify signature, then claims."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from gateway.core.certificates import check_certificate_binding, check_x5c_shape
from gateway.core.errors import GatewayError, InvalidClient, KeyMiss
from gateway.core.keyset import EDDSA_NAMES, JWS_ALGORITHMS, KeySet, VerificationKey, select_keys
from gateway.core.reasons import Reason

MAX_TOKEN_LENGTH = 16 * 1024
MAX_CACHED_HEADERS = 1024  # distinct valid header segments kept (a client uses one or two)
MAX_JTI_LENGTH = 256
MAX_NUMERIC_DATE = 1e12  # year 33658: anything later is nonsense, not a long-lived token
ASSERTION_TYP = "client-authentication+jwt"

# Header members a client assertion may carry. Everything else (crit, b64, jwk, jku, x5u,
# zip, enc, ...) either changes how the token must be processed or points at keys the
# client chose itself: refused instead of ignored. x5c is allowed because MSAL always
# sends it; it is never a source of keys, only checked against the key that verified.
ALLOWED_HEADER_MEMBERS = frozenset({"alg", "kid", "typ", "x5t", "x5t#S256", "x5c"})
# typ values (lower-cased; RFC 7515 §4.1.9 lets "application/" be omitted) -> explicitly typed?
_TYP_VALUES = {
    "jwt": False,
    "application/jwt": False,
    ASSERTION_TYP: True,
    "application/" + ASSERTION_TYP: True,
}
# Valid header segments already checked, by segment: read-only mappings.
_HEADERS: dict[str, Mapping[str, Any]] = {}
# Three non-empty base64url segments, no padding, no whitespace.
_COMPACT_JWS = re.compile(r"([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]+)")


@dataclass(frozen=True, slots=True)
class AssertionPolicy:
    client_id: str
    algorithms: frozenset[str]
    audiences: frozenset[str]
    max_lifetime: float
    clock_skew: float
    require_typ: bool
    # A key whose x5c leaf has expired (plus clock_skew) stops verifying.
    refuse_expired_certificates: bool = False


@dataclass(frozen=True, slots=True)
class ParsedAssertion:
    """A structurally valid assertion, parsed once and not yet verified."""

    header: Mapping[str, Any]
    claims: Mapping[str, Any]
    signing_input: bytes
    signature: bytes

    @property
    def subject(self) -> str | None:
        sub = self.claims.get("sub")
        return sub if isinstance(sub, str) else None

    @property
    def kid(self) -> str | None:
        kid = self.header.get("kid")
        return kid if isinstance(kid, str) else None


@dataclass(frozen=True, slots=True)
class VerifiedAssertion:
    client_id: str
    jti: str
    exp: float
    alg: str
    kid: str | None
    key_thumbprint: str
    iat: float | None = None  # when the client says it issued the assertion, if it did
    credential: str | None = None  # the federated trust that accepted it


def parse_assertion(token: str) -> ParsedAssertion:
    """Parse a compact JWS into header, claims, signing input and signature.

    Raises InvalidClient with reason ``malformed`` (shape, size, base64url, JSON, duplicate
    members, payload not an object), ``bad_header`` (header not an object, missing alg,
    a member that is not a string, an x5c that is not an array of 1..10 base64 strings of
    bounded size) or ``forbidden_header`` (a member outside the allowed set).
    """
    try:
        return _parse(token)
    except GatewayError:
        raise
    except Exception as exc:  # nothing foreign may escape, whatever the input
        raise InvalidClient(Reason.MALFORMED, f"unexpected {type(exc).__name__}") from exc


def verify_assertion(
    parsed: ParsedAssertion, keys: KeySet, policy: AssertionPolicy, now: float
) -> VerifiedAssertion:
    """Check the header against the policy, the signature against the client's keys, then claims.

    Raises InvalidClient with reason alg_not_allowed, bad_typ, missing_typ, no_matching_key,
    bad_signature, certificate_expired (with ``refuse_expired_certificates``: only a key
    whose x5c leaf has expired verified), bad_header (x5c not a certificate),
    certificate_key_mismatch, bad_issuer, bad_subject, bad_audience, missing_exp,
    bad_time_window, expired, issued_in_future, not_yet_valid, lifetime_too_long,
    missing_jti, bad_jti or bad_claims.
    """
    try:
        header = parsed.header
        alg = header["alg"]
        check_algorithm(alg, policy.algorithms)
        check_typ(header.get("typ"), policy.require_typ)
        candidates = select_keys(header, keys, alg)
        soonest = keys.certificate_not_after  # None unless a key of the set has a certificate
        if (soonest is not None and policy.refuse_expired_certificates
                and soonest + policy.clock_skew <= now):
            key = _verify_unexpired(parsed, alg, candidates, now - policy.clock_skew)
        else:
            key = verify_signature(parsed, alg, candidates)
        if "x5c" in header:  # only assertions carrying a certificate pay for parsing it
            check_certificate_binding(header["x5c"], key.key)
        jti, exp, iat = check_claims(parsed.claims, policy, now)
    except GatewayError:
        raise
    except Exception as exc:  # nothing foreign may escape
        raise InvalidClient(Reason.MALFORMED, f"unexpected {type(exc).__name__}") from exc
    return VerifiedAssertion(client_id=policy.client_id, jti=jti, exp=exp, alg=alg, kid=key.kid,
                             key_thumbprint=key.thumbprint, iat=iat)


def _parse(token: str) -> ParsedAssertion:
    if not isinstance(token, str) or len(token) > MAX_TOKEN_LENGTH:
        raise InvalidClient(Reason.MALFORMED, "not a string or longer than the maximum")
    match = _COMPACT_JWS.fullmatch(token)
    if match is None:
        segments = token.count(".") + 1
        raise InvalidClient(Reason.MALFORMED, f"not a compact JWS ({segments} segments)")
    header_segment, payload_segment, signature_segment = match.groups()
    header = _HEADERS.get(header_segment)
    if header is None:
        header = _parse_header(header_segment)
    claims = _decode_json(payload_segment, "payload")
    if type(claims) is not dict:
        raise InvalidClient(Reason.MALFORMED, "payload is not a JSON object")
    signature = _decode_base64url(signature_segment, "signature")
    # The signature segment is the one part the signature does not cover: keep it canonical.
    if base64.urlsafe_b64encode(signature).rstrip(b"=") != signature_segment.encode("ascii"):
        raise InvalidClient(Reason.MALFORMED, "signature: non-canonical base64url")
    return ParsedAssertion(
        header=header,
        claims=claims,
        signing_input=token[: match.end(2)].encode("ascii"),
        signature=signature,
    )


def _parse_header(segment: str) -> Mapping[str, Any]:
    """A header segment checked once; a client sends the same one every time, so the
    outcome of a valid one is kept (read-only, bounded)."""
    header = _decode_json(segment, "header")
    if type(header) is not dict:
        raise InvalidClient(Reason.BAD_HEADER, "header is not a JSON object")
    forbidden = header.keys() - ALLOWED_HEADER_MEMBERS
    if forbidden:
        raise InvalidClient(Reason.FORBIDDEN_HEADER, repr(sorted(forbidden)[:4])[:120])
    if "alg" not in header:
        raise InvalidClient(Reason.BAD_HEADER, "no alg")
    for name, value in header.items():
        if name == "x5c":
            check_x5c_shape(value)
        elif type(value) is not str:
            raise InvalidClient(Reason.BAD_HEADER, f"{name} is not a string")
    if len(_HEADERS) >= MAX_CACHED_HEADERS:
        _HEADERS.clear()  # a flood of distinct headers costs the cache, never memory
    checked = _HEADERS[segment] = MappingProxyType(header)
    return checked


class _DuplicateMember(ValueError):
    pass


def _refuse_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise _DuplicateMember("duplicate member")
    return obj


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


_JSON = json.JSONDecoder(object_pairs_hook=_refuse_duplicates, parse_constant=_refuse_constant)


def _decode_base64url(segment: str, part: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except ValueError as exc:
        raise InvalidClient(Reason.MALFORMED, f"{part}: bad base64url") from exc


def _decode_json(segment: str, part: str) -> Any:
    raw = _decode_base64url(segment, part)
    try:
        return _JSON.decode(raw.decode("utf-8"))
    except _DuplicateMember as exc:
        raise InvalidClient(Reason.MALFORMED, f"{part}: duplicate member") from exc
    except (ValueError, RecursionError) as exc:
        raise InvalidClient(Reason.MALFORMED, f"{part}: not JSON ({type(exc).__name__})") from exc


def check_algorithm(alg: str, allowed: frozenset[str]) -> None:
    """Raises InvalidClient alg_not_allowed unless ``alg`` is known and in ``allowed``."""
    if alg not in JWS_ALGORITHMS or not (
        alg in allowed or (alg in EDDSA_NAMES and not EDDSA_NAMES.isdisjoint(allowed))
    ):
        raise InvalidClient(Reason.ALG_NOT_ALLOWED, repr(alg)[:40])


def check_typ(typ: str | None, require_typ: bool) -> None:
    explicit = False
    if typ is not None:
        explicit_or_none = _TYP_VALUES.get(typ.lower())
        if explicit_or_none is None:
            raise InvalidClient(Reason.BAD_TYP, repr(typ)[:80])
        explicit = explicit_or_none
    if require_typ and not explicit:
        raise InvalidClient(Reason.MISSING_TYP, f"typ must be {ASSERTION_TYP}")


def verify_signature(
    parsed: ParsedAssertion, alg: str, candidates: tuple[VerificationKey, ...]
) -> VerificationKey:
    signing_input, signature = parsed.signing_input, parsed.signature
    for key in candidates:
        # select_keys kept only keys that may verify alg: each has a verifier for it,
        # and a verifier never raises (a signature it cannot parse is a failed check).
        if key.verifiers[alg](signing_input, signature):
            return key
    raise KeyMiss(Reason.BAD_SIGNATURE, f"{len(candidates)} key(s) tried")


def _verify_unexpired(
    parsed: ParsedAssertion, alg: str, candidates: tuple[VerificationKey, ...], cutoff: float
) -> VerificationKey:
    """verify_signature, keys whose certificate expired at or before ``cutoff`` tried last.

    Raises KeyMiss certificate_expired when only such a key verifies (a refetch may bring
    its renewed certificate), KeyMiss bad_signature when none does.
    """
    expired = tuple(key for key in candidates
                    if key.not_after is not None and key.not_after <= cutoff)
    if not expired:
        return verify_signature(parsed, alg, candidates)
    live = tuple(key for key in candidates if key.not_after is None or key.not_after > cutoff)
    key = verify_signature(parsed, alg, live + expired)
    if key.not_after is not None and key.not_after <= cutoff:
        raise KeyMiss(Reason.CERTIFICATE_EXPIRED, f"x5c notAfter {key.not_after:.0f}, "
                      f"kid {str(key.kid)[:64]!r}")
    return key


def check_claims(
    claims: Mapping[str, Any], policy: AssertionPolicy, now: float
) -> tuple[str, float, float | None]:
    """A client's own assertion's claims under ``policy``: (jti, exp, iat).

    Raises InvalidClient bad_issuer, bad_subject, bad_audience, the reasons of
    ``check_times``, lifetime_too_long, missing_jti or bad_jti.
    """
    client_id = policy.client_id
    if claims.get("iss") != client_id:
        raise InvalidClient(Reason.BAD_ISSUER, repr(claims.get("iss"))[:80])
    if claims.get("sub") != client_id:
        raise InvalidClient(Reason.BAD_SUBJECT, repr(claims.get("sub"))[:80])
    check_audience(claims.get("aud"), policy.audiences)
    exp, iat = check_times(claims, policy.clock_skew, now)
    check_lifetime(claims, exp, policy.max_lifetime, now)
    return check_jti(claims), exp, iat


def check_times(
    claims: Mapping[str, Any], clock_skew: float, now: float, *, require_iat: bool = False
) -> tuple[float, float | None]:
    """exp (required), iat and nbf against ``now`` give or take ``clock_skew``: (exp, iat).

    Raises InvalidClient missing_exp, missing_iat (with ``require_iat``), bad_claims,
    bad_time_window, expired, issued_in_future or not_yet_valid.
    """
    if "exp" not in claims:
        raise InvalidClient(Reason.MISSING_EXP)
    if require_iat and "iat" not in claims:
        raise InvalidClient(Reason.MISSING_IAT)
    exp = numeric_date(claims, "exp")
    iat = numeric_date(claims, "iat") if "iat" in claims else None
    nbf = numeric_date(claims, "nbf") if "nbf" in claims else None
    # An empty or inverted window is no assertion at all, however the skew would treat it.
    if (iat is not None and exp <= iat) or (nbf is not None and nbf >= exp):
        raise InvalidClient(Reason.BAD_TIME_WINDOW, f"iat {iat} nbf {nbf} exp {exp}")
    if exp + clock_skew <= now:
        raise InvalidClient(Reason.EXPIRED, f"exp {exp} now {now}")
    if iat is not None and iat > now + clock_skew:
        raise InvalidClient(Reason.ISSUED_IN_FUTURE, f"iat {iat} now {now}")
    if nbf is not None and nbf > now + clock_skew:
        raise InvalidClient(Reason.NOT_YET_VALID, f"nbf {nbf} now {now}")
    return float(exp), (None if iat is None else float(iat))


def check_lifetime(
    claims: Mapping[str, Any], exp: float, max_lifetime: float, now: float
) -> None:
    """exp - iat (exp - now without iat) at most ``max_lifetime``; call after check_times.

    Raises InvalidClient lifetime_too_long.
    """
    iat = claims.get("iat")
    lifetime = exp - (now if iat is None else iat)
    if lifetime > max_lifetime:
        raise InvalidClient(Reason.LIFETIME_TOO_LONG, f"{lifetime:.0f}s")


def check_audience(aud: object, audiences: frozenset[str]) -> None:
    # One audience only: a token valid at several servers is one any of them can replay here.
    if type(aud) is list:
        if len(aud) != 1:
            raise InvalidClient(Reason.BAD_AUDIENCE, f"{len(aud)} audiences")
        aud = aud[0]
    if type(aud) is not str or aud not in audiences:
        raise InvalidClient(Reason.BAD_AUDIENCE, repr(aud)[:120])


def numeric_date(claims: Mapping[str, Any], name: str) -> float:
    value = claims[name]
    kind = type(value)  # bool is an int subclass: compare types exactly
    # The range check also refuses NaN and infinities (every comparison with NaN is false).
    if (kind is not int and kind is not float) or not 0 <= value <= MAX_NUMERIC_DATE:
        raise InvalidClient(Reason.BAD_CLAIMS, f"{name} is not a NumericDate")
    return value  # type: ignore[no-any-return]


def check_jti(claims: Mapping[str, Any]) -> str:
    if "jti" not in claims:
        raise InvalidClient(Reason.MISSING_JTI)
    jti = claims["jti"]
    if type(jti) is not str or not 1 <= len(jti) <= MAX_JTI_LENGTH:
        raise InvalidClient(Reason.BAD_JTI, "not a string of 1 to 256 characters")
    try:
        jti.encode("utf-8")  # a lone surrogate would break every store and log downstream
    except UnicodeEncodeError as exc:
        raise InvalidClient(Reason.BAD_JTI, "not encodable as UTF-8") from exc
    return jti
