"""Property-based (issue 6, item 6): random sequences of PUT, REPLACE, GET, DELETE, UNLINK, RELINK
and listings against one real master and a plain dict model; every answer and the final
listings agree.

Keys come from a handful of names so that operations collide. Each example starts from an
empty key set (the previous example's keys are deleted first).
"""

import sys

from conftest import Master, fetch, key2path, md5hex
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, rule, run_state_machine_as_test

KEYS = [b"/m/a", b"/m/ab", b"/m/a/b", "/m/\u00e4".encode()]
PREFIXES = [b"/m/", b"/m/a", b"/m/a/", b"/m/b", b"/m/c"]
LIVE, UNLINKED = "live", "unlinked"

keys = st.sampled_from(KEYS)
values = st.binary(max_size=64) | st.binary(min_size=1000, max_size=5000)  # b"": 411


def test_keys_are_storable():
    for key in KEYS:
        assert all(key2path(key).split("/")[1:]), key


class MasterModel(RuleBasedStateMachine):
    master: Master  # set by the test
    runs = 0  # examples run and model lookups, for the figures the test prints
    steps = 0

    def __init__(self) -> None:
        super().__init__()
        self.model: dict[bytes, tuple[bytes, str]] = {}

    @initialize()
    def start_empty(self) -> None:
        for key in KEYS:
            assert self.master.call("DELETE", key).status in (204, 404)
        for what in ("list", "unlinked", "writing"):
            assert self.master.listing(b"/m/", what)["keys"] == []

    def state(self, key: bytes) -> str | None:
        MasterModel.steps += 1
        return self.model[key][1] if key in self.model else None

    @rule(key=keys, value=values)
    def put(self, key: bytes, value: bytes) -> None:
        status = self.master.put(key, value).status
        if not value:
            assert status == 411
        elif self.state(key) == LIVE:
            assert status == 403
        else:
            assert status == 201
            self.model[key] = (value, LIVE)

    @rule(key=keys, value=values)
    def replace(self, key: bytes, value: bytes) -> None:
        status = self.master.put(key, value, method="REPLACE").status
        if not value:
            assert status == 411
        else:
            assert status == 201
            self.model[key] = (value, LIVE)

    @rule(key=keys)
    def get(self, key: bytes) -> None:
        reply = self.master.call("GET", key)
        if self.state(key) != LIVE:
            assert reply.status == 404
            return
        value = self.model[key][0]
        assert reply.status == 302
        assert reply.header("Content-Md5") == md5hex(value)
        assert len(reply.header("Key-Volumes").split(",")) == 2
        assert fetch(reply.header("Location")) == value

    @rule(key=keys)
    def delete(self, key: bytes) -> None:
        status = self.master.call("DELETE", key).status
        if key in self.model:
            assert status == 204
            del self.model[key]
        else:
            assert status == 404

    @rule(key=keys)
    def unlink(self, key: bytes) -> None:
        status = self.master.call("UNLINK", key).status
        if self.state(key) == LIVE:
            assert status == 204
            self.model[key] = (self.model[key][0], UNLINKED)
        else:
            assert status == 404

    @rule(key=keys)
    def relink(self, key: bytes) -> None:
        status = self.master.call("RELINK", key).status
        if self.state(key) == UNLINKED:
            assert status == 204
            self.model[key] = (self.model[key][0], LIVE)
        else:
            assert status == 404

    def expected(self, prefix: bytes, state: str) -> list[str]:
        return sorted(k.decode() for k, (_, s) in self.model.items()
                      if s == state and k.startswith(prefix))

    @rule(prefix=st.sampled_from(PREFIXES), what=st.sampled_from(["list", "unlinked"]))
    def listing(self, prefix: bytes, what: str) -> None:
        got = self.master.listing(prefix, what)
        assert got == {"next": "", "keys": self.expected(prefix, LIVE if what == "list"
                                                         else UNLINKED)}

    @rule(prefix=st.sampled_from(PREFIXES), limit=st.integers(1, 3))
    def paged_listing(self, prefix: bytes, limit: int) -> None:
        seen, start = [], ""
        for _ in range(len(KEYS) + 1):
            page = self.master.listing(prefix, limit=str(limit), start=start)
            assert len(page["keys"]) <= limit
            seen += page["keys"]
            start = page["next"]
            if not start:
                break
        assert seen == self.expected(prefix, LIVE)

    def teardown(self) -> None:
        MasterModel.runs += 1
        if sys.exc_info()[0] is not None:
            return  # a step failed: that is the error to report
        assert self.master.listing(b"/m/")["keys"] == self.expected(b"/m/", LIVE)
        assert self.master.listing(b"/m/", "unlinked")["keys"] == self.expected(b"/m/", UNLINKED)
        assert self.master.listing(b"/m/", "writing")["keys"] == []


def test_master_agrees_with_a_dict(make_master):
    MasterModel.master = make_master("-replicas", "2", "-subvolumes", "3")
    run_state_machine_as_test(MasterModel, settings=settings(
        max_examples=200, stateful_step_count=50, deadline=None, database=None,
        suppress_health_check=[HealthCheck.too_slow]))
    print(f"\n{MasterModel.runs} sequences, {MasterModel.steps} key operations agreed")
