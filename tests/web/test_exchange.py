"""Request ids: unique, of the allowed shape, and another prefix in a forked child."""

from __future__ import annotations

import os

from aiohttp.test_utils import make_mocked_request

from gateway.web.exchange import REQUEST_ID_PATTERN, request_id_of


def new_id(**headers: str) -> str:
    return request_id_of(make_mocked_request("POST", "/oauth2/token", headers=headers))


def test_generated_ids_are_unique_and_well_formed() -> None:
    ids = [new_id() for _ in range(2_000)]
    assert len(set(ids)) == len(ids)
    assert all(REQUEST_ID_PATTERN.fullmatch(i) and len(i) == 24 for i in ids)


def test_a_sane_caller_id_is_kept_and_anything_else_replaced() -> None:
    assert new_id(**{"X-Request-Id": "abc-123:x.y_z"}) == "abc-123:x.y_z"
    replaced = new_id(**{"X-Request-Id": "bad id\u2028"})
    assert replaced != "bad id\u2028" and REQUEST_ID_PATTERN.fullmatch(replaced)


def test_a_forked_child_takes_its_own_prefix() -> None:
    parent = new_id()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child reports one id and leaves at once
        os.write(write, new_id().encode())
        os._exit(0)
    os.close(write)
    child = os.read(read, 64).decode()
    os.close(read)
    os.waitpid(pid, 0)
    assert REQUEST_ID_PATTERN.fullmatch(child)
    assert child[:12] != parent[:12]
