"""Every foreign exception each adapter can meet maps to a documented gateway error.

Each boundary's library is enumerated, so a new exception class in it (or in the backend
client) fails here until it is mapped and documented; an exception nobody mapped is left
alone (or, for the fail-closed replay ledger, refused and flagged).
"""

from __future__ import annotations

import builtins
import inspect
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any, cast, get_args

import aiohttp
import aiohttp.client_exceptions
import httptools
import pytest
import redis.exceptions
from aiohttp.client_reqrep import ConnectionKey
from multidict import CIMultiDict, CIMultiDictProxy
from redis.asyncio import Redis
from yarl import URL

from gateway.adapters import backend_client
from gateway.adapters.backend_client import (
    FOREIGN_FAILURES,
    BackendClient,
    BackendTimeout,
    BackendUnavailable,
    Stage,
    UnsendableRequest,
    backend_error_for,
)
from gateway.adapters.jwks_fetch import FETCH_RESULTS, JwksFetchError, fetch_error_for
from gateway.adapters.jwks_guard import ForbiddenAddress
from gateway.adapters.replay_redis import (
    STORE_FAILURES,
    RedisReplayLedger,
    translate_redis_error,
)
from gateway.adapters.upstream import Upstream, gateway_error_for
from gateway.core.errors import (
    BadGateway,
    GatewayError,
    GatewayTimeout,
    InvalidRequest,
    TemporarilyUnavailable,
)

README = (Path(__file__).parents[2] / "README.md").read_text()


class Unforeseen(Exception):
    """An exception no boundary has heard of: it must never be mapped silently."""


def exception_classes(module: ModuleType, names: Iterator[str] | None = None
                      ) -> list[type[BaseException]]:
    """The exception classes ``module`` defines (or exports under ``names``)."""
    if names is not None:
        found = [getattr(module, name) for name in names]
    else:
        found = [cls for _, cls in inspect.getmembers(module, inspect.isclass)
                 if cls.__module__ == module.__name__]
    return [cls for cls in found if isinstance(cls, type) and issubclass(cls, BaseException)]


def documented(reason: str) -> bool:
    return f"`{reason}`" in README


# --- the backend client -------------------------------------------------------------------

BACKEND_EXPECTED: dict[type[BaseException], tuple[type[GatewayError], str]] = {
    BackendTimeout: (GatewayTimeout, "backend_timeout"),
    BackendUnavailable: (BadGateway, "backend_unreachable"),
    UnsendableRequest: (InvalidRequest, "unforwardable"),
}
BACKEND_CLASSES = exception_classes(backend_client)
# What the client meets on the wire: the OS (TLS and name resolution included) and llhttp.
WIRE_CLASSES = sorted(
    {cls for module in (builtins, ssl, socket) for cls in exception_classes(module, iter(
        name for name in vars(module) if not name.startswith("_")))
     if issubclass(cls, OSError)}
    | set(exception_classes(httptools, iter(dir(httptools))))
    | {RuntimeError},
    key=lambda cls: f"{cls.__module__}.{cls.__qualname__}",
)
STAGES: tuple[Stage, ...] = get_args(Stage)


def test_the_backend_enumeration_is_not_trivial() -> None:
    assert len(BACKEND_CLASSES) >= 3
    assert len(WIRE_CLASSES) >= 25
    assert {TimeoutError, ConnectionRefusedError, ssl.SSLCertVerificationError,
            socket.gaierror, httptools.HttpParserUpgrade} <= set(WIRE_CLASSES)


@pytest.mark.parametrize("cls", BACKEND_CLASSES, ids=lambda cls: cls.__name__)
def test_every_backend_client_exception_maps_to_a_documented_error(
    cls: type[BaseException],
) -> None:
    assert cls in BACKEND_EXPECTED, f"{cls.__name__} has no gateway error: map it in upstream"
    error = gateway_error_for(cls("detail"))
    kind, reason = BACKEND_EXPECTED[cls]
    assert type(error) is kind and error.reason == reason
    assert documented(reason)


@pytest.mark.parametrize("cls", WIRE_CLASSES, ids=lambda cls: cls.__qualname__)
def test_every_wire_failure_becomes_a_documented_gateway_error(
    cls: type[BaseException],
) -> None:
    met = [stage for stage in STAGES if issubclass(cls, FOREIGN_FAILURES[stage])]
    assert met, f"{cls.__name__} is met at no stage"
    for stage in met:
        own = backend_error_for(cls(), stage)
        assert isinstance(own, BackendUnavailable), stage
        error = gateway_error_for(own)
        assert error is not None and documented(error.reason)
        expected = GatewayTimeout if issubclass(cls, TimeoutError) else BadGateway
        assert type(error) is expected, stage


@pytest.mark.parametrize("exc", [Unforeseen(), ValueError("a bug"), KeyError("k"),
                                 UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogate")],
                         ids=["unforeseen", "value-error", "key-error", "unicode-error"])
def test_other_exceptions_are_never_mapped_at_the_backend(exc: Exception) -> None:
    assert all(backend_error_for(exc, stage) is None for stage in STAGES)
    assert gateway_error_for(exc) is None


class _RaisingClient:
    def __init__(self, exc: Exception) -> None:
        self.exc = exc

    async def request(self, *args: object) -> None:
        raise self.exc


async def test_a_value_error_inside_the_client_is_not_a_client_error() -> None:
    upstream = Upstream(cast(BackendClient, _RaisingClient(ValueError("a bug"))))
    with pytest.raises(ValueError, match="a bug"):
        await upstream.forward("POST", "/t", "/t", [], b"", request_id="r")


async def test_upstream_maps_real_failures_over_loopback() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    upstream = Upstream(BackendClient(f"http://127.0.0.1:{port}", timeout=2.0))
    try:
        with pytest.raises(BadGateway) as refused:
            await upstream.forward("POST", "/t", "/t", [], b"x", request_id="r")
        assert refused.value.reason == "backend_unreachable"
        assert isinstance(refused.value.__cause__, BackendUnavailable)
        with pytest.raises(InvalidRequest) as unsendable:
            await upstream.forward("POST", "/t", "/t", [("X-A", "v\r\nX-B: 1")], b"x",
                                   request_id="r")
        assert unsendable.value.reason == "unforwardable"
        assert isinstance(unsendable.value.__cause__, UnsendableRequest)
    finally:
        await upstream.close()


# --- the Redis client ---------------------------------------------------------------------

REDIS_CLASSES = [*exception_classes(redis.exceptions), TimeoutError, OSError]


def redis_sample(cls: type[BaseException]) -> BaseException:
    if issubclass(cls, redis.exceptions.AskError):  # MOVED and ASK carry "slot host:port"
        return cls("3999 127.0.0.1:6381")
    return cls("boom")


def test_the_redis_enumeration_is_not_trivial() -> None:
    assert len(REDIS_CLASSES) >= 30
    assert {redis.exceptions.RedisError, redis.exceptions.RedisClusterException,
            redis.exceptions.ConnectionError} <= set(REDIS_CLASSES)


@pytest.mark.parametrize("cls", REDIS_CLASSES, ids=lambda cls: cls.__name__)
def test_every_redis_failure_is_a_503(cls: type[BaseException]) -> None:
    exc = redis_sample(cls)
    assert isinstance(exc, STORE_FAILURES), f"{cls.__name__} is not a known store failure"
    error = translate_redis_error(exc)
    assert isinstance(error, TemporarilyUnavailable) and error.status == 503
    assert error.reason == "replay_store_unavailable" and documented(error.reason)
    assert error.detail.startswith(cls.__name__)


@pytest.mark.parametrize("exc", [Unforeseen("?"), AttributeError("'NoneType' object")],
                         ids=["unforeseen", "attribute-error"])
def test_an_unforeseen_exception_fails_closed_but_is_flagged(exc: Exception) -> None:
    assert not isinstance(exc, STORE_FAILURES)
    error = translate_redis_error(exc)
    assert error.reason == "replay_store_unavailable"
    assert error.detail.startswith(f"unexpected {type(exc).__name__}")


class _FailingRedis:
    """Fails as the client does, whichever way a check reaches the server."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc
        self.connection_pool = _FailingPool(exc)

    def pipeline(self, *args: object, **kwargs: object) -> _FailingPipeline:
        return _FailingPipeline(self.exc)


class _FailingPool:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc

    async def get_connection(self) -> _FailingConnection:
        return _FailingConnection(self.exc)

    async def release(self, connection: object) -> None:
        return None


class _FailingConnection:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc

    def pack_commands(self, commands: object) -> list[bytes]:
        return []

    async def send_packed_command(self, *args: object) -> None:
        raise self.exc

    async def disconnect(self) -> None:
        return None


class _FailingPipeline:
    """Queues commands, then fails as the client does when executed."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc

    async def __aenter__(self) -> _FailingPipeline:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    def set(self, *args: object, **kwargs: object) -> None:
        return None

    async def execute(self, *args: object, **kwargs: object) -> Any:
        raise self.exc


@pytest.mark.parametrize("cls", REDIS_CLASSES, ids=lambda cls: cls.__name__)
async def test_the_ledger_catches_every_redis_failure(cls: type[BaseException]) -> None:
    exc = redis_sample(cls)
    ledger = RedisReplayLedger(cast(Redis, _FailingRedis(exc)), batch=False)
    with pytest.raises(TemporarilyUnavailable) as caught:
        await ledger.record("c", "j", 200.0, 100.0)
    assert caught.value.__cause__ is exc
    assert caught.value.detail == translate_redis_error(exc).detail
    assert ledger.ready() is False


# --- the JWKS fetch -----------------------------------------------------------------------

KEY = ConnectionKey("keys.example", 443, True, True, None, None, None, "keys.example")
JWKS_URL = URL("https://keys.example/jwks.json")
REQUEST = aiohttp.RequestInfo(JWKS_URL, "GET", CIMultiDictProxy(CIMultiDict()), JWKS_URL)
AIOHTTP_CLASSES = exception_classes(aiohttp.client_exceptions,
                                    iter(aiohttp.client_exceptions.__all__))
# Exported by aiohttp's client, never met by a GET: checked not to be a ClientError below.
NEVER_MET = {aiohttp.WSMessageTypeError}
JWKS_CLASSES = [cls for cls in AIOHTTP_CLASSES if cls not in NEVER_MET] + [
    ssl.SSLError, ssl.SSLCertVerificationError, OSError, ConnectionRefusedError, TimeoutError,
    ValueError, ForbiddenAddress,
]


def jwks_sample(cls: type[BaseException]) -> BaseException:
    """An instance built with the arguments aiohttp itself passes."""
    if issubclass(cls, aiohttp.ClientConnectorCertificateError):
        return cls(KEY, ssl.SSLCertVerificationError(1, "certificate verify failed"))
    if issubclass(cls, aiohttp.ClientConnectorError):
        return cls(KEY, ConnectionRefusedError(111, "Connection refused"))
    if issubclass(cls, aiohttp.ClientResponseError):
        return cls(REQUEST, (), status=502)
    if issubclass(cls, aiohttp.ServerFingerprintMismatch):
        return cls(b"a", b"b", "keys.example", 443)
    if issubclass(cls, aiohttp.InvalidURL):
        return cls(JWKS_URL)
    return cls("boom")


def test_the_jwks_enumeration_is_not_trivial() -> None:
    assert len(AIOHTTP_CLASSES) >= 25
    for cls in NEVER_MET:
        assert cls in AIOHTTP_CLASSES and not issubclass(cls, aiohttp.ClientError)
        assert fetch_error_for(jwks_sample(cls), 1.0) is None


@pytest.mark.parametrize("cls", JWKS_CLASSES, ids=lambda cls: cls.__name__)
def test_every_fetch_failure_has_a_fetch_result(cls: type[BaseException]) -> None:
    error = fetch_error_for(jwks_sample(cls), 1.0)
    assert isinstance(error, JwksFetchError), f"{cls.__name__} is not mapped"
    assert error.reason in FETCH_RESULTS - {"ok", "not_modified"}
    assert documented(error.reason)


@pytest.mark.parametrize(("exc", "reason"), [
    pytest.param(aiohttp.ConnectionTimeoutError(), "timeout", id="connect-timeout"),
    pytest.param(aiohttp.SocketTimeoutError(), "timeout", id="read-timeout"),
    pytest.param(TimeoutError(), "timeout", id="budget"),
    pytest.param(ForbiddenAddress("10.0.0.1"), "forbidden_address", id="literal"),
    pytest.param(aiohttp.ClientConnectorDNSError(KEY, ForbiddenAddress("10.0.0.1")),
                 "forbidden_address", id="resolved"),
    pytest.param(aiohttp.ClientConnectorDNSError(KEY, socket.gaierror(-2, "unknown")),
                 "connect_error", id="no-such-name"),
    pytest.param(jwks_sample(aiohttp.ClientConnectorCertificateError), "tls_error",
                 id="untrusted"),
    pytest.param(ssl.SSLError(1, "handshake"), "tls_error", id="ssl"),
    pytest.param(ValueError("bad url"), "connect_error", id="value-error"),
])
def test_fetch_failures_map_by_meaning(exc: BaseException, reason: str) -> None:
    error = fetch_error_for(exc, 1.0)
    assert error is not None and error.reason == reason


@pytest.mark.parametrize("exc", [Unforeseen(), KeyError("k"), TypeError("t")],
                         ids=["unforeseen", "key-error", "type-error"])
def test_other_exceptions_are_never_mapped_by_the_fetch(exc: Exception) -> None:
    assert fetch_error_for(exc, 1.0) is None
