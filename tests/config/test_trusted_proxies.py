"""listen.trusted_proxies: addresses or CIDR networks, checked at load, warned about when all."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config.lint import lint_settings, warning_id
from tests.config.test_settings import changed, load, problems

KEY = "listen.trusted_proxies"


def test_trusted_proxies_default_to_none(tmp_path: Path) -> None:
    assert load(tmp_path, changed({})).listen.trusted_proxies == ()


def test_addresses_and_networks_are_kept_in_canonical_form(tmp_path: Path) -> None:
    settings = load(tmp_path, changed({KEY: ["10.0.0.0/8", "192.0.2.5", "2001:DB8::/32",
                                             "172.16.0.0/255.240.0.0"]}))
    assert settings.listen.trusted_proxies == (
        "10.0.0.0/8", "192.0.2.5/32", "2001:db8::/32", "172.16.0.0/12")


@pytest.mark.parametrize(("value", "needle"), [
    pytest.param("10.0.0.1/8", "has host bits set; the network is 10.0.0.0/8", id="host-bits"),
    pytest.param("10.0.0.0/33", "CIDR notation", id="prefix-too-long"),
    pytest.param("ingress", "CIDR notation", id="a-name"),
    pytest.param("10.0.0.0/8, 11.0.0.0/8", "CIDR notation", id="two-in-one-string"),
    pytest.param("fe80::1%eth0", "no zone id", id="zone-id"),
    pytest.param(" 10.0.0.0/8", "CIDR notation", id="spaces"),
])
def test_a_bad_entry_is_reported_at_its_index(tmp_path: Path, value: str, needle: str) -> None:
    found = problems(tmp_path, changed({KEY: ["127.0.0.1/32", value]}))
    assert [where for where, _ in found] == [f"{KEY}[1]"]
    assert needle in found[0][1]


def test_a_single_string_is_not_a_list(tmp_path: Path) -> None:
    assert [where for where, _ in problems(tmp_path, changed({KEY: "10.0.0.0/8"}))] == [KEY]


@pytest.mark.parametrize("everything", ["0.0.0.0/0", "::/0"])
def test_trusting_every_address_is_warned_about(tmp_path: Path, everything: str) -> None:
    warnings = lint_settings(load(tmp_path, changed({KEY: ["10.0.0.0/8", everything]})))
    assert [where for where, _ in warnings] == [KEY]
    assert everything in warnings[0][1] and warnings[0][1].count(";") == 1
    assert warning_id(warnings[0]) == "trusted-proxies"


def test_proxy_networks_are_not_warned_about(tmp_path: Path) -> None:
    settings = load(tmp_path, changed({KEY: ["10.0.0.0/8", "fd00::/8"]}))
    assert lint_settings(settings) == []
