"""Noticing that the shared replay store forgot: an epoch marker beside each hash tag's jtis.

A Redis restarted without persistence, a ``FLUSHALL``, or a promoted replica that missed
writes has lost jtis that some process accepted; re-sent through a process that never saw
them, they would look fresh. So next to each client's jti keys (same hash tag, same cluster
slot) lives ``pkjwt:marker:{<tag>}``, whose value names the store's epoch for that tag:
``<random id>|<time of the last detected loss>`` (``|0`` when none). Every batch of checks
sends ``SET marker <offer> NX GET`` for its tags after its jti writes, in the same pipeline:

- no marker and none known to this process: a first start; our offer (``<id>|0``) is written;
- the marker this process knows: nothing happened;
- a marker it did not know, recording a later loss than the one it knows: another process
  noticed a loss first; its time is adopted;
- no marker where one was known: a loss, noticed now; our offer (``<id>|<now>``) is written
  by SET NX, so of several processes noticing at once exactly one writes and the others
  adopt its time;
- an unknown marker recording no later loss (a process that started after the loss wrote a
  first-start marker, or a promoted replica holds an older one): a loss too; only then a
  short script replaces that very value, atomically, in the tag's slot.

Marker keys carry no TTL and number one per configured client: ``noeviction`` keeps them.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass

MARKER_PREFIX = "pkjwt:marker:"
# Loss times this close together are one loss, noticed by several processes or on several
# tags: the metric counts it once.
ONE_LOSS_SECONDS = 60.0
# KEYS[1]: the marker; ARGV[1]: the marker this process knew; ARGV[2]: its offer for a loss.
# Replaces an unknown marker unless it records a later loss than the known one.
RESOLVE_SCRIPT = """
local current = redis.call('GET', KEYS[1])
if current == ARGV[1] then
  return current
end
if current then
  local found = tonumber(string.match(current, '|([^|]*)$')) or 0
  local known = tonumber(string.match(ARGV[1], '|([^|]*)$')) or 0
  if found > known then
    return current
  end
end
redis.call('SET', KEYS[1], ARGV[2])
return ARGV[2]
"""

log = logging.getLogger("gateway")


def marker_key(tag: str) -> str:
    """``pkjwt:marker:{<tag>}``: the same hash tag, so the same slot, as the tag's jti keys."""
    return f"{MARKER_PREFIX}{{{tag}}}"


def loss_time_of(marker: bytes) -> float:
    """The loss time a marker records; 0.0 for a first-start marker or an unreadable one."""
    try:
        value = float(marker.rpartition(b"|")[2])
    except ValueError:
        return 0.0
    return value if value > 0 else 0.0


@dataclass(frozen=True, slots=True)
class Offer:
    """What one batch writes where a marker is missing: for a first start, or for a loss."""

    first: bytes
    loss: bytes

    @classmethod
    def new(cls, loss_time: float, epoch: str | None = None) -> Offer:
        """``epoch``: the writer's id (random when not given); one process keeps one id, its
        offers still differ from each other, every loss time being later than the last."""
        epoch = epoch if epoch is not None else secrets.token_hex(8)
        return cls(f"{epoch}|0".encode(), f"{epoch}|{loss_time:.3f}".encode())


class EpochMarkers:
    """What this process knows of each tag's marker, and the loss times it learnt (no I/O).

    ``unread`` holds the tags to read at first contact (the configured clients): a process
    that has read a marker before the loss can tell a lost store from a new one.
    """

    def __init__(self, tags: Iterable[str] = (),
                 on_reset: Callable[[], None] | None = None) -> None:
        self._known: dict[str, bytes] = {}
        self._loss: dict[str, float] = {}
        self.unread = set(tags)
        self._on_reset = on_reset
        self._latest = 0.0  # the latest loss time known, of any tag
        self._counted: float | None = None  # the loss time last counted
        self.learnt = 0  # losses learnt so far, counted or not
        self._epoch = secrets.token_hex(8)  # this process's id in the markers it writes

    def loss_time(self, tag: str) -> float | None:
        """When the store lost this tag's data, as far as this process knows."""
        return self._loss.get(tag)

    def known(self, tag: str) -> bytes | None:
        return self._known.get(tag)

    def known_tags(self) -> list[str]:
        return list(self._known)

    def offer(self, now: float) -> Offer:
        """This batch's offer: its loss time is later than any loss this process knows."""
        # No random draw per batch: the process's id and a loss time later than any known.
        return Offer.new(max(now, self._latest + 0.001), self._epoch)

    def offered(self, tag: str, offer: Offer) -> bytes:
        """The value to ``SET NX`` for ``tag``."""
        return offer.loss if tag in self._known else offer.first

    def observe(self, tag: str, offered: bytes, reply: bytes | None) -> bool:
        """Take the reply to ``SET marker offered NX GET``; False for a conflict only
        RESOLVE_SCRIPT may settle (an unknown marker that records no later loss)."""
        self.unread.discard(tag)
        known = self._known.get(tag)
        current = offered if reply is None else reply
        if current == known:
            return True
        if known is None or loss_time_of(current) > loss_time_of(known):
            self.resolved(tag, current)
            return True
        return False

    def resolved(self, tag: str, marker: bytes) -> None:
        """Adopt ``marker`` (written by us or found) as the tag's epoch."""
        previous = self._known.get(tag)
        self._known[tag] = marker
        loss = loss_time_of(marker)
        if loss <= self._loss.get(tag, 0.0):
            return
        self._loss[tag] = loss
        self._latest = max(self._latest, loss)
        if previous is None:  # learnt at first contact: a past loss, not news
            return
        self.learnt += 1
        if self._counted is None or loss - self._counted > ONE_LOSS_SECONDS:
            self._counted = loss
            log.warning("the replay store lost its data (noticed at %.3f): assertions issued "
                        "before then plus the clock skew are refused (replay_store_reset)", loss)
            if self._on_reset is not None:
                self._on_reset()
