"""Key lifecycle on the command line: `check` and `keys` warn of key_expiry and retire dates
passed or near, of names that match no key, and of more keys than max_keys_per_client."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from gateway.cli.main import check, keys_inventory
from tests.conftest import BACKEND_SECRET, gateway_yaml
from tests.support.tokens import Signer, make_signer

CLIENT = "ci-pipeline"


@dataclass
class Ran:
    returncode: int
    stdout: str

    def warnings(self) -> list[str]:
        return [line for line in self.stdout.splitlines() if line.startswith("warning:")]


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> Callable[..., Ran]:
    """``check`` (strict) or ``keys`` in this process: the exit code and what they print."""
    monkeypatch.setenv("CI_SECRET", BACKEND_SECRET)

    def verb(name: str, path: Path, *accept: str, as_json: bool = False) -> Ran:
        capsys.readouterr()
        code = (check(path, strict=True, accept=accept) if name == "check"
                else keys_inventory(path, as_json=as_json))
        return Ran(code, capsys.readouterr().out)

    return verb


def day(offset: int) -> str:
    """Today (UTC) plus ``offset`` days, as a YAML date."""
    return (datetime.now(UTC).date() + timedelta(days=offset)).isoformat()


def config(tmp_path: Path, *keys: Signer, client: str = "", policy: str = "") -> Path:
    path = tmp_path / "gateway.yaml"
    text = gateway_yaml("http://127.0.0.1:9", {"keys": [k.public_jwk for k in keys]},
                        client=client, policy=policy)
    path.write_text(text.replace(", RS256]", "]", 1))  # no other lint speaks up
    return path


OLD = make_signer("ES256", kid="old")
NEW = make_signer("ES256", kid="new", slot=1)
WHERE = f"clients.{CLIENT}"

CASES = {
    "expired": ("key_expiry: {old: DATE}", -1, "key-expired", f"{WHERE}.key_expiry.old",
                "expired on"),
    "expiring": ("key_expiry: {old: DATE}", 3, "key-expiring", f"{WHERE}.key_expiry.old",
                 "day(s) left"),
    "retired": ("retire: {old: DATE}", -1, "key-retired", f"{WHERE}.retire.old",
                "overlap of key old ended"),
    "retiring": ("retire: {old: DATE}", 0, "key-retiring", f"{WHERE}.retire.old",
                 "0 day(s) left"),
}


@pytest.mark.parametrize(("client", "offset", "wid", "where", "words"), CASES.values(),
                         ids=CASES.keys())
def test_check_warns_of_a_date_passed_or_near(run: Callable[..., Ran], tmp_path: Path,
                                              client: str, offset: int, wid: str, where: str,
                                              words: str) -> None:
    result = run("check", config(tmp_path, OLD, NEW, client=client.replace("DATE",
                                                                           day(offset))))
    [warning] = result.warnings()
    assert warning.startswith(f"warning: {where}: ") and warning.endswith(f" [{wid}]")
    assert words in warning
    assert result.returncode == 1  # --strict
    accepted = run("check", config(tmp_path, OLD, NEW, client=client.replace(
        "DATE", day(offset))), wid)
    assert accepted.returncode == 0 and not accepted.warnings()


@pytest.mark.parametrize("client", [
    pytest.param(f"key_expiry: {{old: {day(60)}}}", id="expiry-far-away"),
    pytest.param(f"retire: {{old: {day(60)}}}", id="overlap-far-from-its-end"),
    pytest.param(f"key_expiry: {{old: {day(20)}}}\n    certificate_expiry_warning: 7d",
                 id="beyond-a-client-warning-window"),
])
def test_check_is_quiet_for_dates_far_enough(run: Callable[..., Ran], tmp_path: Path,
                                             client: str) -> None:
    result = run("check", config(tmp_path, OLD, NEW, client=client))
    assert result.returncode == 0 and not result.warnings(), result.stdout


def test_check_warns_of_a_name_that_matches_no_key_of_a_static_set(
    run: Callable[..., Ran], tmp_path: Path
) -> None:
    thumbprint = OLD.keyset().keys[0].thumbprint
    client = f"key_expiry: {{typo: {day(60)}, {thumbprint}: {day(60)}}}"
    result = run("check", config(tmp_path, OLD, client=client))
    [warning] = result.warnings()
    assert warning.startswith(f"warning: {WHERE}.key_expiry.typo: typo is neither the kid "
                              "nor the thumbprint")
    assert warning.endswith("[key-unmatched]")


def test_check_does_not_judge_names_of_a_jwks_uri_set(run: Callable[..., Ran],
                                                      tmp_path: Path) -> None:
    path = config(tmp_path, OLD)
    text = path.read_text().replace(
        "  ci-pipeline:\n",
        f"  partner:\n    jwks_uri: https://partner.example/jwks.json\n"
        f"    retire: {{not-published-yet: {day(60)}, gone: {day(-3)}}}\n"
        "    backend_auth: {method: none}\n  ci-pipeline:\n", 1)
    path.write_text(text)
    result = run("check", path)
    # Not fetched by check: its names may match a key published later; its dates still count.
    [warning] = result.warnings()
    assert warning.startswith("warning: clients.partner.retire.gone: ")


def test_check_warns_of_more_keys_than_max_keys_per_client(run: Callable[..., Ran],
                                                           tmp_path: Path) -> None:
    third = make_signer("ES256", kid="third", slot=2)
    result = run("check", config(tmp_path, OLD, NEW, third, policy=", max_keys_per_client: 2"))
    [warning] = result.warnings()
    assert warning.startswith(f"warning: {WHERE}.jwks: 3 keys, more than max_keys_per_client "
                              "(2)")
    assert warning.endswith("[too-many-keys]")
    # A client may allow itself more.
    relaxed = config(tmp_path, OLD, NEW, third, policy=", max_keys_per_client: 2",
                     client="max_keys_per_client: 3")
    assert run("check", relaxed).returncode == 0


def test_keys_shows_each_keys_end_and_the_warnings(run: Callable[..., Ran],
                                                   tmp_path: Path) -> None:
    client = f"key_expiry: {{new: 2099-12-31}}\n    retire: {{old: {day(-1)}}}"
    path = config(tmp_path, OLD, NEW, client=client)
    text = run("keys", path)
    assert text.returncode == 0, text.stdout
    lines = text.stdout.splitlines()
    [old_line] = [line for line in lines if line.startswith("  kid=old ")]
    [new_line] = [line for line in lines if line.startswith("  kid=new ")]
    assert old_line.endswith(f" retire={day(-1)}") and new_line.endswith(" expiry=2099-12-31")
    assert lines[-1].startswith(f"  warning: {WHERE}.retire.old: the overlap of key old ended")
    listed = run("keys", path, as_json=True)
    [entry] = json.loads(listed.stdout)
    by_kid = {key["kid"]: key for key in entry["keys"]}
    assert (by_kid["old"]["retire"], by_kid["old"]["expiry"]) == (day(-1), None)
    assert (by_kid["new"]["retire"], by_kid["new"]["expiry"]) == (None, "2099-12-31")
    [warning] = entry["warnings"]
    assert warning.endswith("[key-retired]")

