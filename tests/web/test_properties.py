"""Property tests against the running app: hostile input never yields a 5xx or a forwarded request.

The gateway and its backend run on real loopback sockets in a thread of their own, so that
Hypothesis can drive plain blocking HTTP requests at them.
"""

from __future__ import annotations

import asyncio
import http.client
import io
import json
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.config.loading import parse_settings
from gateway.web.app import create_gateway
from tests.conftest import ASSERTION_TYPE, ISSUER, TOKEN_PATH, gateway_yaml
from tests.support.tokens import Signer, b64url, make_signer

CLIENT = "ci-pipeline"
# A fixed budget in CI; `make fuzz` raises it (FUZZ_EXAMPLES=5000).
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "150"))


@dataclass
class Live:
    port: int
    forwarded: list[bytes]
    signer: Signer

    def post(self, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            connection.request("POST", TOKEN_PATH, body=body, headers=headers)
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    signer = make_signer("ES256")
    forwarded: list[bytes] = []
    ready = threading.Event()
    stop: dict[str, Any] = {}
    ports: dict[str, int] = {}

    async def main() -> None:
        async def backend(request: web.Request) -> web.Response:
            forwarded.append(await request.read())
            return web.json_response({"access_token": "x", "token_type": "Bearer"})

        backend_app = web.Application()
        backend_app.router.add_post(TOKEN_PATH, backend)
        backend_runner = web.AppRunner(backend_app, access_log=None)
        await backend_runner.setup()
        await web.TCPSite(backend_runner, "127.0.0.1", 0).start()
        backend_port = backend_runner.addresses[0][1]
        text = gateway_yaml(f"http://127.0.0.1:{backend_port}", {"keys": [signer.public_jwk]})
        config = parse_settings(text, base_dir=Path(tmp_path_factory.mktemp("props")),
                                env={"CI_SECRET": "property-test-secret"})
        gateway = create_gateway(config, audit_stream=io.StringIO())
        runner = gateway.public_runner(access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        ports["gateway"] = runner.addresses[0][1]
        done = asyncio.Event()
        loop = asyncio.get_running_loop()
        stop["set"] = lambda: loop.call_soon_threadsafe(done.set)
        ready.set()
        await done.wait()
        await runner.cleanup()
        await backend_runner.cleanup()

    thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
    thread.start()
    assert ready.wait(20), "the gateway did not start"
    yield Live(ports["gateway"], forwarded, signer)
    stop["set"]()
    thread.join(20)


json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70),
                         st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=40))
json_values = st.recursive(json_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=12)
claim_names = st.sampled_from(["iss", "sub", "aud", "exp", "iat", "nbf", "jti", "typ", "x"])
header_names = st.sampled_from(["alg", "kid", "typ", "crit", "jwk", "x5t", "x5t#S256", "b64",
                                "zip", "x5c", "jku"])


def _dumps(value: Any) -> bytes:
    return json.dumps(value, allow_nan=True).encode()


@st.composite
def hostile_assertions(draw: st.DrawFn, signer: Signer) -> str:
    now = int(time.time())
    head = {"alg": draw(st.sampled_from(["ES256", "RS256", "none", "HS256", "EdDSA", ""])),
            **draw(st.dictionaries(header_names, json_values, max_size=3))}
    payload: dict[str, Any] = {"iss": CLIENT, "sub": CLIENT, "aud": ISSUER, "iat": now,
                               "exp": now + 60, "jti": draw(st.text(min_size=1, max_size=20))}
    payload.update(draw(st.dictionaries(claim_names, json_values, min_size=1, max_size=4)))
    shape = draw(st.sampled_from(["signed", "raw", "junk"]))
    if shape == "signed":
        return signer.sign(_dumps(head), _dumps(payload))
    if shape == "raw":
        return ".".join([b64url(_dumps(head)), b64url(_dumps(payload)),
                         b64url(draw(st.binary(max_size=80)))])
    return draw(st.text(max_size=200))


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_hostile_assertions_are_refused_cleanly(live: Live, data: st.DataObject) -> None:
    assertion = data.draw(hostile_assertions(live.signer))
    extra = data.draw(st.dictionaries(st.text(max_size=10), st.text(max_size=10), max_size=2))
    body = urlencode({"grant_type": "client_credentials", "client_assertion_type": ASSERTION_TYPE,
                      "client_assertion": assertion, **extra}).encode()
    before = len(live.forwarded)
    status, raw = live.post(body, {"Content-Type": "application/x-www-form-urlencoded"})
    assert status < 500, raw
    if status != 200:
        assert len(live.forwarded) == before
        assert json.loads(raw)["error"] in {"invalid_request", "invalid_client"}


@settings(max_examples=EXAMPLES, deadline=None)
@given(body=st.one_of(st.binary(max_size=300),
                      st.lists(st.tuples(st.text(max_size=12), st.text(max_size=30)), max_size=6)
                      .map(lambda pairs: "&".join(f"{quote(k)}={quote(v)}" for k, v in pairs)
                           .encode())),
       content_type=st.sampled_from(["application/x-www-form-urlencoded",
                                     "application/x-www-form-urlencoded; charset=utf-8",
                                     "application/x-www-form-urlencoded; charset=latin-1",
                                     "application/json", "text/plain", ""]),
       authorization=st.one_of(st.none(), st.text(max_size=30).filter(
           lambda v: v.isprintable() and v.isascii() and v.strip() == v)))
def test_hostile_bodies_are_refused_cleanly(
    live: Live, body: bytes, content_type: str, authorization: str | None
) -> None:
    headers = {"Content-Type": content_type}
    if authorization:
        headers["Authorization"] = authorization
    before = len(live.forwarded)
    status, raw = live.post(body, headers)
    assert 400 <= status < 500, raw
    assert len(live.forwarded) == before


json_texts = st.one_of(
    st.just('{"a": 1}'),
    json_values.map(lambda value: json.dumps(value, allow_nan=True)),
    st.integers(1, 400).map(lambda depth: "[" * depth + "]" * depth),  # deep nesting
    st.integers(0, 10**6).map(lambda n: "1" + "0" * n if n < 5000 else "1e" + str(n)),
)


@st.composite
def duplicated_members(draw: st.DrawFn) -> tuple[bytes, bytes]:
    """A header and payload as raw JSON text, often with a member given twice."""
    now = int(time.time())
    claims = [("iss", CLIENT), ("sub", CLIENT), ("aud", ISSUER), ("iat", now),
              ("exp", now + 60), ("jti", draw(st.text(min_size=1, max_size=12)))]
    header = [("alg", "ES256")]
    target = draw(st.sampled_from(["header", "payload", "none"]))
    members = claims if target != "header" else header
    if target != "none":
        name, _ = draw(st.sampled_from(members))
        members = [*members, (name, draw(json_values))]
    extra = draw(st.lists(st.tuples(st.sampled_from(["x", "nested", "big"]), json_texts),
                          max_size=2))

    def text(pairs: list[tuple[str, Any]], raw: list[tuple[str, str]]) -> bytes:
        parts = [f"{json.dumps(k)}: {json.dumps(v, allow_nan=True)}" for k, v in pairs]
        parts += [f"{json.dumps(k)}: {v}" for k, v in raw]
        return ("{" + ", ".join(parts) + "}").encode("utf-8", "surrogatepass")

    return (text(header if target == "header" else [("alg", "ES256")], []),
            text(claims if target != "payload" else members, extra))


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_duplicate_members_and_hostile_json_are_refused(live: Live, data: st.DataObject) -> None:
    """Duplicate JSON members are refused outright: parsers disagree on which one wins."""
    header, payload = data.draw(duplicated_members())
    assertion = live.signer.sign(header, payload)  # a genuine signature over hostile JSON
    body = urlencode({"grant_type": "client_credentials", "client_assertion_type": ASSERTION_TYPE,
                      "client_assertion": assertion}).encode()
    before = len(live.forwarded)
    status, raw = live.post(body, {"Content-Type": "application/x-www-form-urlencoded"})
    assert status < 500, raw
    if status == 200:  # only ever for JSON without a repeated top-level member
        for part in (header, payload):
            names = [name for name, _ in json.loads(part, object_pairs_hook=list)]
            assert len(names) == len(set(names)), part
        assert len(live.forwarded) == before + 1
    else:
        assert len(live.forwarded) == before
