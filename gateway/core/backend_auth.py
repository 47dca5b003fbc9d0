"""The backend's own credential for a client, and the rewritten body that carries it."""

from __future__ import annotations

import base64
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import quote, urlencode

FORM_MEDIA_TYPE = "application/x-www-form-urlencoded"

BackendMethod = Literal["client_secret_basic", "client_secret_post", "none"]


def _form_urlencode(value: str) -> str:
    # RFC 6749 §2.3.1: id and secret are form-urlencoded before they go into Basic.
    return quote(value, safe="*-._~").replace("%20", "+")


@dataclass(frozen=True, slots=True)
class BackendCredential:
    """How the gateway authenticates a client to the backend; built once per client at load."""

    client_id: str
    method: BackendMethod
    secret: str | None = None

    # The Authorization header value for client_secret_basic (else None), built once.
    authorization: str | None = field(init=False, default=None)
    # The headers a rewritten request carries for this client, built once.
    forward_headers: tuple[tuple[str, str], ...] = field(init=False, default=())

    def __post_init__(self) -> None:
        if self.method != "none" and not self.secret:
            raise ValueError(f"{self.method} needs a secret")
        if self.method == "client_secret_basic" and self.secret is not None:
            raw = f"{_form_urlencode(self.client_id)}:{_form_urlencode(self.secret)}"
            basic = "Basic " + base64.b64encode(raw.encode()).decode("ascii")
            object.__setattr__(self, "authorization", basic)
        headers = [("Content-Type", FORM_MEDIA_TYPE)]
        if self.authorization is not None:
            headers.append(("Authorization", self.authorization))
        object.__setattr__(self, "forward_headers", tuple(headers))

    def __repr__(self) -> str:
        return f"BackendCredential(client_id={self.client_id!r}, method={self.method!r})"

    def body(self, params: Iterable[tuple[str, str]]) -> bytes:
        """A fresh urlencoded body: the client's parameters plus exactly one credential."""
        items = list(params)
        if self.method == "client_secret_post":
            items += [("client_id", self.client_id), ("client_secret", self.secret or "")]
        elif self.method == "none":
            items.append(("client_id", self.client_id))
        return urlencode(items).encode("ascii")
