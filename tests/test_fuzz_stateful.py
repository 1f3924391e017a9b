"""Short Hypothesis stateful runs of every fuzz target (seconds each; long runs are commands).

Each rule draws one step from the target's own structure-aware generators, with Hypothesis
supplying the choices (so a failure shrinks to a short, readable step list), and runs it with
every oracle of ``vmm.fuzz.world``.  The protocol machine feeds generated messages (with real
fds) to a sans-IO ``Connection`` and checks each reply.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, precondition, rule

from protocols import messages as m
from protocols.session import Connection
from vmm.config import DaemonConfig, build_devices
from vmm.fuzz import protocol
from vmm.fuzz.oracles import check_reply
from vmm.fuzz.targets import MODEL_TARGETS, ModelTarget, make_target, unavailable
from vmm.fuzz.world import World
from vmm.guest import GuestSession

SETTINGS = settings(max_examples=15, stateful_step_count=25, deadline=None,
                    suppress_health_check=list(HealthCheck), derandomize=True)


class DrawSource:
    """A ``vmm.fuzz.program.Source`` whose choices Hypothesis makes (and shrinks)."""

    def __init__(self, data: st.DataObject) -> None:
        self.data = data

    def below(self, n: int) -> int:
        return self.data.draw(st.integers(0, n - 1)) if n > 1 else 0

    def bits(self, k: int) -> int:
        return self.data.draw(st.integers(0, (1 << k) - 1)) if k > 0 else 0


def model_machine(name: str) -> type[RuleBasedStateMachine]:
    target: ModelTarget = make_target(name)

    class Machine(RuleBasedStateMachine):
        world: World | None = None

        @initialize(seeded=st.booleans())
        def start(self, seeded: bool) -> None:
            self.world = World(target)
            if seeded:
                for step in target.seeds()[0]:
                    self.world.run(step)

        @precondition(lambda self: self.world is not None)
        @rule(data=st.data())
        def step(self, data: st.DataObject) -> None:
            assert self.world is not None
            self.world.run(target.generate(DrawSource(data)))

        def teardown(self) -> None:
            if self.world is not None:
                target.finish(self.world)
                self.world.close()

    Machine.__name__ = f"{name.replace('-', '_')}_machine"
    return Machine


@pytest.mark.parametrize("name", list(MODEL_TARGETS))
def test_model_target_stateful(name: str) -> None:
    reason = unavailable(name)
    if reason is not None:
        pytest.skip(reason)
    machine = model_machine(name)
    machine.TestCase.settings = SETTINGS
    machine.TestCase().runTest()


class ProtocolMachine(RuleBasedStateMachine):
    """Generated messages and fds into one sans-IO connection: one good reply each."""

    def __init__(self) -> None:
        super().__init__()
        self.session = GuestSession(DaemonConfig(build_devices(protocol.daemon_devices())))
        self.conn = Connection(self.session)
        self.keep: list[int] = []

    @rule(data=st.data())
    def message(self, data: st.DataObject) -> None:
        msg = protocol.generate(DrawSource(data))
        if msg.ends:
            return  # a message that ends the stream belongs to the live-daemon fuzzer
        fds = [protocol.make_fd(kind, self.keep) for kind in msg.fds]
        if msg.late and fds and len(msg.data) > m.HEADER_SIZE:
            out = self.conn.receive(msg.data[: m.HEADER_SIZE])
            out += self.conn.receive(msg.data[m.HEADER_SIZE :], fds)
        else:
            out = self.conn.receive(msg.data, fds)
        code = int.from_bytes(msg.data[:4], "little")
        check_reply(code, out)
        assert not self.conn.closed

    def teardown(self) -> None:
        self.session.close()
        for fd in self.keep:
            os.close(fd)


def test_protocol_stateful() -> None:
    ProtocolMachine.TestCase.settings = SETTINGS
    ProtocolMachine.TestCase().runTest()


def test_protocol_live_daemon_short() -> None:
    """A few hundred mutated messages at a real daemon: it keeps serving, leaks no fd."""
    stats = protocol.fuzz_protocol(runs=600, seconds=None, seed=5, crashes=None,
                                   minimize_seconds=0, log=None)
    assert stats.execs == 600
    assert not stats.failures, stats.failures
