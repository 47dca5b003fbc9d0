"""Key lifecycle rules: when a registered key is refused (key_expiry, retire), and which
credentials and clients the lifecycle policy flags (old, unused, expiring, retiring,
expired; dormant clients).

Plain functions over the usage book's values, the prepared deadlines and an injected
``now``: the request path only calls ``check_key_deadline``, and only for a client that
has a deadline at all.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from types import MappingProxyType

from gateway.core.attempt import Attempt
from gateway.core.errors import InvalidClient
from gateway.core.reasons import Reason
from gateway.core.usage import Usage

# The flags a credential may carry, in the order they are shown.
OLD, UNUSED, EXPIRING, RETIRING, EXPIRED = "old", "unused", "expiring", "retiring", "expired"
FLAGS = (OLD, UNUSED, EXPIRING, RETIRING, EXPIRED)
DEFAULT_EXPIRY_WARNING = 14 * 86400.0  # policy.certificate_expiry_warning's default


def refuse_from(last_day: date) -> float:
    """The first moment refused after ``last_day`` (UTC): 00:00 UTC of the next day."""
    return datetime.combine(last_day + timedelta(days=1), time(), UTC).timestamp()


@dataclass(frozen=True, slots=True)
class KeyDeadline:
    """The end of one key: accepted through ``last_day`` (UTC), refused from ``refuse_from``."""

    last_day: date
    refuse_from: float  # epoch seconds: 00:00 UTC of the day after last_day
    retired: bool  # from `retire` (the end of a rotation overlap), else from `key_expiry`

    @classmethod
    def on(cls, last_day: date, *, retired: bool) -> KeyDeadline:
        return cls(last_day, refuse_from(last_day), retired)

    @property
    def setting(self) -> str:
        """The setting this deadline comes from."""
        return "retire" if self.retired else "key_expiry"


def _sooner(a: KeyDeadline | None, b: KeyDeadline | None) -> KeyDeadline | None:
    if a is None or (b is not None and b.refuse_from < a.refuse_from):
        return b
    return a


@dataclass(frozen=True, slots=True)
class KeyDeadlines:
    """A client's key deadlines by the name the configuration gives a key: a kid, or an
    RFC 7638 thumbprint. Both names of one key may carry one: the sooner wins."""

    by_name: Mapping[str, KeyDeadline]

    @classmethod
    def of_settings(cls, key_expiry: Mapping[str, date],
                    retire: Mapping[str, date]) -> KeyDeadlines | None:
        """The deadlines of a client's ``key_expiry`` and ``retire``; None when it has none,
        so the request path pays nothing for the clients without."""
        by_name: dict[str, KeyDeadline] = {}
        for names, retired in ((key_expiry, False), (retire, True)):
            for name, last_day in names.items():
                deadline, held = KeyDeadline.on(last_day, retired=retired), by_name.get(name)
                if held is None or deadline.refuse_from < held.refuse_from:
                    by_name[name] = deadline
        return cls(MappingProxyType(by_name)) if by_name else None

    def of(self, kid: str | None, thumbprint: str) -> KeyDeadline | None:
        """The deadline of the key with this kid and thumbprint, if any (the sooner of two)."""
        by_name = self.by_name
        found = by_name.get(thumbprint)
        if kid is not None:
            found = _sooner(found, by_name.get(kid))
        return found

    def matched(self, keys: Iterable[tuple[str | None, str]]) -> frozenset[str]:
        """The names that match one of ``keys`` (kid, thumbprint) pairs."""
        names: set[str] = set()
        for kid, thumbprint in keys:
            names.update(name for name in (kid, thumbprint)
                         if name is not None and name in self.by_name)
        return frozenset(names)


def check_key_deadline(deadlines: KeyDeadlines, kid: str | None, thumbprint: str, now: float,
                       attempt: Attempt) -> None:
    """Refuse the key that verified once its deadline has come.

    Raises InvalidClient ``key_expired`` (the detail says whether the key expired or was
    retired, and when) with the key's thumbprint on ``attempt`` for the audit line.
    """
    deadline = deadlines.of(kid, thumbprint)
    if deadline is None or now < deadline.refuse_from:
        return
    attempt.key_thumbprint = thumbprint
    what = "retired" if deadline.retired else "expired"
    name = f"kid {kid[:64]!r}" if kid is not None else f"thumbprint {thumbprint}"
    raise InvalidClient(Reason.KEY_EXPIRED, f"key {name} {what}: its {deadline.setting} date "
                                            f"{deadline.last_day.isoformat()} has passed")


@dataclass(frozen=True, slots=True)
class LifecyclePolicy:
    """A client's lifecycle policy in seconds; None: that rule is off."""

    key_max_age: float | None = None
    key_unused_after: float | None = None
    client_dormant_after: float | None = None
    max_keys_per_client: int | None = None
    # How close an expiry (key_expiry, a certificate's notAfter) is flagged `expiring`.
    expiry_warning: float = DEFAULT_EXPIRY_WARNING


NO_POLICY = LifecyclePolicy()


def credential_flags(usage: Usage | None, now: float, policy: LifecyclePolicy, *,
                     deadline: KeyDeadline | None = None,
                     not_after: float | None = None) -> frozenset[str]:
    """The flags of one credential of a client at ``now``:

    - ``old``: first seen more than ``key_max_age`` ago;
    - ``unused``: not used for more than ``key_unused_after`` (since first seen if never);
    - ``expiring``: its ``key_expiry`` (or a certificate's ``not_after``) comes within
      ``expiry_warning``;
    - ``retiring``: a ``retire`` date not yet passed (the rotation overlap is running);
    - ``expired``: its deadline or ``not_after`` has passed: it is refused.
    """
    flags = set()
    first_seen = usage.first_seen if usage is not None else None
    if first_seen is not None:
        if policy.key_max_age is not None and now - first_seen > policy.key_max_age:
            flags.add(OLD)
        last = usage.last_used if usage is not None and usage.last_used is not None \
            else first_seen
        if policy.key_unused_after is not None and now - last > policy.key_unused_after:
            flags.add(UNUSED)
    ends = [] if not_after is None else [(not_after, False)]
    if deadline is not None:
        ends.append((deadline.refuse_from, deadline.retired))
    for end, retired in ends:
        if now >= end:
            flags.add(EXPIRED)
        elif retired:
            flags.add(RETIRING)
        elif end - now <= policy.expiry_warning:
            flags.add(EXPIRING)
    return frozenset(flags)


def earliest_first_seen(usages: Iterable[Usage]) -> float | None:
    """When the gateway first saw any of these credentials."""
    seen = [usage.first_seen for usage in usages if usage.first_seen is not None]
    return min(seen, default=None)


def client_dormant(last_success: float | None, first_seen: float | None, now: float,
                   policy: LifecyclePolicy) -> bool:
    """No successful authentication for more than ``client_dormant_after``: counted from the
    last success, or, for a client that never had one, from when its credentials were first
    seen. False while the rule is off or nothing is known of the client."""
    after = policy.client_dormant_after
    since = last_success if last_success is not None else first_seen
    return after is not None and since is not None and now - since > after


def too_many_keys(count: int, policy: LifecyclePolicy) -> bool:
    """More keys than ``max_keys_per_client``."""
    return policy.max_keys_per_client is not None and count > policy.max_keys_per_client

