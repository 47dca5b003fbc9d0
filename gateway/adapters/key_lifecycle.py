"""Key lifecycle settings in the core's terms (deadlines, policy), and what ``check`` and
``keys`` warn about: key_expiry and retire dates passed or near, names that match no key,
more keys than ``max_keys_per_client``."""

from __future__ import annotations

from datetime import date

from gateway.adapters.assemble import Runtime, registered_keys
from gateway.config.lint import LintWarning
from gateway.config.settings import ClientSettings, Settings
from gateway.config.yaml_dialect import join_path
from gateway.core.keyset import KeySet
from gateway.core.keysource import StaticKeySource
from gateway.core.lifecycle import KeyDeadlines, LifecyclePolicy, refuse_from, too_many_keys

DAY = 86400.0


def key_deadlines(client: ClientSettings) -> KeyDeadlines | None:
    """The client's key_expiry and retire dates; None when it has neither."""
    return KeyDeadlines.of_settings(client.key_expiry, client.retire)


def lifecycle_policy(settings: Settings, client_id: str) -> LifecyclePolicy:
    """The client's lifecycle policy, its overrides merged in; KeyError for an unknown id."""
    policy = settings.effective_policy(client_id)
    return LifecyclePolicy(
        key_max_age=policy.key_max_age, key_unused_after=policy.key_unused_after,
        client_dormant_after=policy.client_dormant_after,
        max_keys_per_client=policy.max_keys_per_client,
        expiry_warning=policy.certificate_expiry_warning)


def _date_warning(where: str, name: str, last_day: date, retired: bool, now: float,
                  within: float) -> LintWarning | None:
    ends = refuse_from(last_day)
    if ends <= now:
        if retired:
            return LintWarning("key-retired", where, f"the overlap of key {name} ended on "
                               f"{last_day}: it is refused (key_expired); remove it from the "
                               "client's key set and from retire")
        return LintWarning("key-expired", where, f"key {name} expired on {last_day}: it is "
                           "refused (key_expired); remove it from the client's key set and "
                           "from key_expiry")
    if ends - now > within:
        return None
    days = int((ends - now) // DAY)
    if retired:
        return LintWarning("key-retiring", where, f"key {name} is refused after {last_day} "
                           f"({days} day(s) left); make sure its last users have moved to "
                           "the new key (the inventory shows its last use)")
    return LintWarning("key-expiring", where, f"key {name} is refused after {last_day} "
                       f"({days} day(s) left); publish its successor and have the client "
                       "switch, or move the date deliberately")


def client_key_warnings(settings: Settings, client_id: str, keys: KeySet | None, now: float,
                        *, match_names: bool) -> list[LintWarning]:
    """What one client's key lifecycle deserves a warning for at ``now``.

    ``keys``: the key set held (None: not known, as a jwks_uri set in ``check``); with
    ``match_names``, a key_expiry or retire name that matches none of them is warned about.
    """
    client = settings.clients[client_id]
    policy = lifecycle_policy(settings, client_id)
    path = join_path("clients", client_id)
    warnings: list[LintWarning] = []
    deadlines = key_deadlines(client)
    matched = deadlines.matched((key.kid, key.thumbprint) for key in keys.keys) \
        if deadlines is not None and keys is not None else frozenset()
    for setting, dates, retired in (("key_expiry", client.key_expiry, False),
                                    ("retire", client.retire, True)):
        for name, last_day in dates.items():
            where = join_path(join_path(path, setting), name)
            warning = _date_warning(where, name, last_day, retired, now,
                                    policy.expiry_warning)
            if warning is not None:
                warnings.append(warning)
            if match_names and keys is not None and name not in matched:
                warnings.append(LintWarning(
                    "key-unmatched", where, f"{name} is neither the kid nor the thumbprint "
                    "of a key of the client's set: the date applies to nothing; correct the "
                    "name (pkjwt-gateway keys shows both) or remove the entry"))
    if keys is not None and too_many_keys(len(keys.keys), policy):
        source = next(name for name in ("jwks", "jwks_file", "jwks_uri")
                      if getattr(client, name) is not None)
        warnings.append(LintWarning(
            "too-many-keys", join_path(path, source),
            f"{len(keys.keys)} keys, more than max_keys_per_client "
            f"({policy.max_keys_per_client}): each is a way in; remove the keys rotation "
            "left behind (the inventory shows which are unused)"))
    return warnings


def _held_static(runtime: Runtime) -> dict[str, KeySet]:
    """The configured (jwks, jwks_file) key sets of the runtime's clients."""
    held: dict[str, KeySet] = {}
    for client_id, client in runtime.clients.items():
        registered = registered_keys(client)
        if registered is not None and isinstance(registered.source, StaticKeySource):
            keys = registered.source.current()
            if keys is not None:
                held[client_id] = keys
    return held


def key_lifecycle_warnings(runtime: Runtime, now: float) -> list[LintWarning]:
    """``check``'s key lifecycle warnings for every enabled client with registered keys.

    Configured sets are matched against the names and counted; a jwks_uri set is not
    fetched by ``check``, so only its dates are judged (a name may match a key published
    later).
    """
    settings = runtime.settings
    held = _held_static(runtime)
    warnings: list[LintWarning] = []
    for client_id, client in settings.clients.items():
        if client.enabled and client.has_own_keys:
            warnings += client_key_warnings(settings, client_id, held.get(client_id), now,
                                            match_names=client.jwks_uri is None)
    return warnings

