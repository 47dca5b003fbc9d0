"""Key-change events: how the usable keys of a client (or an issuer) changed, and why.

Pure: the shell hands in what a key source holds now, the record of what it held last
time, the moment and the cause of the look, and writes the events this returns. A key is
named by its RFC 7638 thumbprint only, never by its material.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from gateway.core.keyset import VerificationKey
from gateway.core.lifecycle import KeyDeadline, KeyDeadlines

CLIENT = "client"  # the owner of a key set: a configured client ...
ISSUER = "issuer"  # ... or a federation issuer

# Why the set changed. What made the shell look:
START = "start"                # the configuration put in force at start-up
RELOAD = "reload"              # a reload (its jwks, jwks_file, key dates, policy)
FETCH = "fetch"                # a fetched set (jwks_uri, discovery, bundle endpoint)
UNAVAILABLE = "unavailable"    # a fetched set past max_stale, or none to serve
CHECK = "check"                # the periodic check found a key usable again (clock went back)
DISABLED = "disabled"          # the client is now `enabled: false`
REMOVED = "removed"            # the client or issuer is no longer configured
# What a key still held but no longer usable ran into:
EXPIRED = "expired"                          # past its key_expiry date
RETIRED = "retired"                          # past its retire date
CERTIFICATE_EXPIRED = "certificate_expired"  # x5c leaf expired, refuse_expired_certificates
# Not a change of the set: a usable key's certificate came within the warning window.
CERTIFICATE_EXPIRING = "certificate_expiring"

CAUSES = frozenset({START, RELOAD, FETCH, UNAVAILABLE, CHECK, DISABLED, REMOVED, EXPIRED,
                    RETIRED, CERTIFICATE_EXPIRED, CERTIFICATE_EXPIRING})

_REFUSALS = (EXPIRED, RETIRED, CERTIFICATE_EXPIRED)


@dataclass(frozen=True, slots=True)
class KeyLimits:
    """When an owner's keys stop being usable, or are warned about."""

    # key_expiry and retire, as the request path enforces them; None: no dates.
    deadlines: KeyDeadlines | None = None
    certificate_warning: float | None = None  # seconds before notAfter; None: not watched
    refuse_expired_certificates: bool = False
    clock_skew: float = 0.0


NO_LIMITS = KeyLimits()


@dataclass(frozen=True, slots=True)
class HeldKeys:
    """What one owner's key source holds now."""

    source: str  # the source's kind: jwks, jwks_file, jwks_uri, discovery, ...
    keys: tuple[VerificationKey, ...] | None  # None: no keys to serve (past max_stale)
    limits: KeyLimits = NO_LIMITS


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """What was last recorded of one owner's keys: the state events are diffs of."""

    source: str
    usable: frozenset[str]    # thumbprints
    expiring: frozenset[str]  # usable thumbprints whose certificate is within the warning


@dataclass(frozen=True, slots=True)
class KeyEvent:
    """One change of an owner's usable keys with one cause; thumbprints sorted."""

    owner: str  # CLIENT or ISSUER
    name: str   # the client id or the issuer's configured name
    source: str
    cause: str
    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    expiring: tuple[str, ...] = ()   # CERTIFICATE_EXPIRING only
    not_after: float | None = None   # CERTIFICATE_EXPIRING only: the soonest of `expiring`


@dataclass(frozen=True, slots=True)
class KeyAssessment:
    """Held keys at one moment: usable, refused with why, expiring with their notAfter."""

    usable: frozenset[str]
    refused: Mapping[str, str]        # held but unusable thumbprint -> EXPIRED, RETIRED, ...
    expiring: Mapping[str, float]     # usable thumbprint -> its certificate's notAfter


def held_thumbprints(keys: Iterable[VerificationKey]) -> list[str]:
    """The distinct thumbprints of ``keys``, in order (a key may be listed twice)."""
    return list(dict.fromkeys(key.thumbprint for key in keys))


def assess(held: HeldKeys, now: float) -> KeyAssessment:
    """Which held keys are usable at ``now``, why the others are not, which are expiring.

    A key listed several times (with an old and a renewed certificate) counts once: it is
    refused for its certificate only when every listing's certificate has expired, and
    its notAfter is the latest listing's (None when one listing has no certificate).
    """
    entries: dict[str, list[VerificationKey]] = {}
    for key in held.keys or ():
        entries.setdefault(key.thumbprint, []).append(key)
    limits = held.limits
    usable: set[str] = set()
    refused: dict[str, str] = {}
    expiring: dict[str, float] = {}
    for thumbprint, listed in entries.items():
        not_afters = [key.not_after for key in listed]
        not_after = None if None in not_afters else max(n for n in not_afters if n is not None)
        deadline = _deadline(limits.deadlines, thumbprint, listed)
        if deadline is not None and deadline.refuse_from <= now:
            refused[thumbprint] = RETIRED if deadline.retired else EXPIRED
        elif (limits.refuse_expired_certificates and not_after is not None
              and not_after + limits.clock_skew <= now):
            refused[thumbprint] = CERTIFICATE_EXPIRED
        else:
            usable.add(thumbprint)
            warning = limits.certificate_warning
            if warning is not None and not_after is not None and not_after - now < warning:
                expiring[thumbprint] = not_after
    return KeyAssessment(frozenset(usable), refused, expiring)


def _deadline(deadlines: KeyDeadlines | None, thumbprint: str,
              listed: Iterable[VerificationKey]) -> KeyDeadline | None:
    # The sooner of the key's names, as the request path picks it for the kid it verified.
    if deadlines is None:
        return None
    found = [deadline for key in listed
             if (deadline := deadlines.of(key.kid, thumbprint)) is not None]
    return min(found, key=lambda deadline: deadline.refuse_from, default=None)


def key_events(
    owner: str, name: str, before: KeyRecord | None, held: HeldKeys | None, now: float,
    cause: str,
) -> tuple[KeyRecord | None, list[KeyEvent]]:
    """The new record of an owner and the events from ``before`` to what it ``held`` now.

    ``held`` None: the owner is gone (``cause`` DISABLED or REMOVED, or RELOAD for a client
    left without keys of its own). A key no longer usable but still held is removed with
    what it ran into (EXPIRED, RETIRED, CERTIFICATE_EXPIRED); other changes carry ``cause``,
    UNAVAILABLE when the source has no keys to serve. One event per cause, removals and
    additions together; then one CERTIFICATE_EXPIRING event for the usable keys that came
    within the warning window since ``before``. Nothing changed: no event.
    """
    if held is None:
        if before is None or not before.usable:
            return None, []
        return None, [KeyEvent(owner, name, before.source, cause,
                               removed=tuple(sorted(before.usable)))]
    found = assess(held, now)
    record = KeyRecord(held.source, found.usable, frozenset(found.expiring))
    was = before.usable if before is not None else frozenset()
    general = UNAVAILABLE if held.keys is None else cause
    removed_for: dict[str, list[str]] = {}  # cause -> thumbprints it removed
    for thumbprint in sorted(was - found.usable):
        removed_for.setdefault(found.refused.get(thumbprint, general), []).append(thumbprint)
    added = sorted(found.usable - was)
    if added:
        removed_for.setdefault(general, [])
    # The look's own cause first, then what keys ran into, in a fixed order.
    causes = sorted(removed_for, key=lambda why: (
        why != general, _REFUSALS.index(why) if why in _REFUSALS else 0))
    events = [KeyEvent(owner, name, held.source, why,
                       added=tuple(added) if why == general else (),
                       removed=tuple(removed_for[why]))
              for why in causes]
    was_expiring = before.expiring if before is not None else frozenset()
    coming = sorted(set(found.expiring) - was_expiring)
    if coming:
        events.append(KeyEvent(owner, name, held.source, CERTIFICATE_EXPIRING,
                               expiring=tuple(coming),
                               not_after=min(found.expiring[t] for t in coming)))
    return record, events
