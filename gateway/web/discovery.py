"""Discovery documents on passthrough paths: fetched whole, rewritten, served as a new body.

The core (``core.discovery_document``) decides what the document says; this module moves
the bytes and keeps the HTTP around it true to the new body: its own Content-Length and
entity tag, If-None-Match answered here, nothing that described the backend's bytes.
"""

from __future__ import annotations

import logging

from aiohttp import web
from multidict import CIMultiDict

from gateway.adapters.upstream import Upstream, reply_headers
from gateway.core.discovery_document import (
    DiscoveryRewrite,
    UnusableDocument,
    check_representation,
    entity_tag,
    none_match,
)
from gateway.core.errors import BadGateway
from gateway.core.reasons import Reason

log = logging.getLogger("gateway")

# Request headers that would let the backend answer with anything but the whole document in
# identity coding: a 304 or 206 of the backend's bytes describes another body than ours.
# Validators are evaluated here, against the rewritten body.
BACKEND_REQUEST_SKIP = ("Accept-Encoding", "If-None-Match", "If-Match", "If-Modified-Since",
                        "If-Unmodified-Since", "If-Range", "Range")
# Answer headers that describe the backend's bytes, not the rewritten ones. Last-Modified
# goes too: the document also changes when the gateway's configuration does.
_DESCRIBES_BACKEND_BYTES = ("ETag", "Last-Modified", "Content-Type", "Content-Encoding",
                            "Content-MD5", "Digest", "Content-Digest", "Repr-Digest",
                            "Accept-Ranges", "Content-Range")
# What a 304 carries (RFC 9110 §15.4.5), besides ETag and X-Request-Id.
_NOT_MODIFIED_KEEP = frozenset({"cache-control", "expires", "vary", "content-location"})


async def serve_discovery(
    upstream: Upstream, rewrite: DiscoveryRewrite, path: str, path_qs: str,
    headers: list[tuple[str, str]], body: bytes, if_none_match: list[str], *,
    request_id: str, now: float,
) -> web.Response:
    """GET the document (also for a HEAD: the length and tag need the body), rewrite a 200,
    relay anything else as it came.

    Raises BadGateway ``bad_discovery_document`` when a 200 cannot be rewritten, and what
    Upstream.exchange raises.
    """
    reply = await upstream.exchange("GET", path, path_qs,
                                    [*headers, ("Accept-Encoding", "identity")], body)
    relayed = reply_headers(reply, request_id)
    if reply.status != 200:
        return web.Response(status=reply.status, reason=reply.reason or None, headers=relayed,
                            body=reply.body)
    try:
        check_representation(relayed.get("Content-Type"), relayed.get("Content-Encoding"),
                             len(reply.body))
        document = rewrite.rewrite(reply.body, now)
    except UnusableDocument as exc:
        log.warning("request %s: discovery document at %s not served: %s", request_id, path,
                    exc)
        raise BadGateway(Reason.BAD_DISCOVERY_DOCUMENT, str(exc)) from exc
    for name in _DESCRIBES_BACKEND_BYTES:
        relayed.popall(name, None)
    tag = entity_tag(document)
    relayed["ETag"] = tag
    if none_match(if_none_match, tag):
        kept = CIMultiDict((name, value) for name, value in relayed.items()
                           if name.lower() in _NOT_MODIFIED_KEEP)
        kept["ETag"], kept["X-Request-Id"] = tag, request_id
        return web.Response(status=304, headers=kept)
    relayed["Content-Type"] = "application/json"
    return web.Response(status=200, headers=relayed, body=document)
