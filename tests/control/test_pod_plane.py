"""The pod's hub and its workers' planes over a real Unix socket: exact admission, one socket per
CallSid, single-use tokens, commands routed to the owner, a dead worker's calls dropped."""
from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from gateway.control.hub import Admission, PodHub
from gateway.control.model import CallInfo, ControlError, Route, Verb
from gateway.control.plane import LocalPlane, PodPlane


def test_admission_is_exact():
    a = Admission(max_calls=2, pod="p")
    assert a.reserve("CA1", 0.0) is None and a.reserve("CA2", 0.0) is None
    assert a.reserve("CA3", 0.0) == "capacity"
    assert a.reserve("CA1", 0.0) is None  # a retried webhook keeps its place, without a second one
    assert a.start_call(0, {"call_sid": "CA1"}, "tok1", 9e9, 1.0) is None
    assert a.start_call(1, {"call_sid": "CA1"}, "tok1b", 9e9, 1.0) == "duplicate"
    assert a.start_call(1, {"call_sid": "CA9"}, "tok1", 9e9, 1.0) == "replayed"
    assert a.start_call(1, {"call_sid": "CA9"}, "tok9", 9e9, 1.0) == "capacity"  # CA2 still holds a place
    assert a.reserve("CA4", 31.0) is None  # CA2's reservation expired after 30 s
    a.end_call(0, "CA1")
    assert a.counts == {"live": 0, "reserved": 1, "max": 2}


async def _executor_for(owned: set[str], log: list[tuple[str, str]]) -> Any:
    async def execute(call_sid: str, verb: Verb, args: dict[str, Any]) -> dict[str, Any]:
        if call_sid not in owned:
            raise ControlError(404, "not here")
        log.append((call_sid, str(verb)))
        return {"done": str(verb), "args": args}

    return execute


def test_commands_reach_the_owner_through_the_hub(run, tmp_path: Path, caplog: pytest.LogCaptureFixture):
    async def scenario() -> None:
        hub = PodHub(str(tmp_path / "hub.sock"), max_calls=10, pod="pod-a")
        await hub.start()
        planes = [PodPlane(10, "pod-a", i, hub.path) for i in range(2)]
        ran: list[tuple[str, str]] = []
        for plane in planes:
            await plane.start()
        planes[0].serve_commands(await _executor_for({"CA0"}, ran))
        planes[1].serve_commands(await _executor_for({"CA1"}, ran))
        try:
            assert await planes[0].reserve("CA0") is None
            assert await planes[0].start_call(CallInfo("CA0", agent="support"), "t0", 9e9) is None
            assert await planes[1].start_call(CallInfo("CA1"), "t1", 9e9) is None
            assert await planes[1].start_call(CallInfo("CA0"), "t2", 9e9) == "duplicate"
            assert await planes[0].start_call(CallInfo("CA5"), "t1", 9e9) == "replayed"
            assert await planes[1].command("CA0", Verb.SAY, {"text": "hi"}) == (
                Route.POD, {"done": "say", "args": {"text": "hi"}})
            assert await planes[1].command("CA1", Verb.INTERRUPT, {}) == (Route.LOCAL, {"done": "interrupt",
                                                                                       "args": {}})
            with pytest.raises(ControlError) as missing:
                await planes[0].command("CA404", Verb.GET, {})
            assert missing.value.status == 404
            listed = await planes[1].calls()
            assert {(c["call_sid"], c["worker"], c["pod"]) for c in listed} == {("CA0", 0, "pod-a"),
                                                                                 ("CA1", 1, "pod-a")}
            assert ran == [("CA0", "say"), ("CA1", "interrupt")]
            await planes[1].aclose()  # worker 1 dies with its call
            await asyncio.sleep(0.1)
            assert "hub: worker 1 is gone with 1 calls" in caplog.messages
            assert [c["call_sid"] for c in await planes[0].calls()] == ["CA0"]
            planes[0].end_call("CA0")
            await asyncio.sleep(0.05)
            assert await planes[0].counts() == {"live": 0, "reserved": 0, "max": 10}
        finally:
            for plane in planes:
                await plane.aclose()
            await hub.stop()

    run(scenario())


def test_an_owner_that_does_not_answer_is_a_504(run, tmp_path: Path, monkeypatch):
    import gateway.control.hub as hub_module
    import gateway.control.plane as plane_module

    monkeypatch.setattr(hub_module, "COMMAND_TIMEOUT_S", 0.2)
    monkeypatch.setattr(plane_module, "COMMAND_TIMEOUT_S", 0.2)

    async def scenario() -> None:
        hub = PodHub(str(tmp_path / "hub.sock"), max_calls=10, pod="p")
        await hub.start()
        a, b = PodPlane(10, "p", 0, hub.path), PodPlane(10, "p", 1, hub.path)
        await a.start()
        await b.start()

        async def stuck(call_sid: str, verb: Verb, args: dict[str, Any]) -> dict[str, Any]:
            await asyncio.sleep(5)
            return {}

        b.serve_commands(stuck)
        try:
            assert await b.start_call(CallInfo("CA1"), "", 0) is None
            with pytest.raises(ControlError) as late:
                await a.command("CA1", Verb.GET, {})
            assert late.value.status == 504
        finally:
            await a.aclose()
            await b.aclose()
            await hub.stop()

    run(scenario())


def test_a_lone_process_is_its_own_pod(run):
    async def scenario() -> None:
        plane = LocalPlane(1, "solo", 0)
        ran: list[tuple[str, str]] = []
        plane.serve_commands(await _executor_for({"CA1"}, ran))
        assert await plane.reserve("CA1") is None and await plane.reserve("CA2") == "capacity"
        assert await plane.start_call(CallInfo("CA1"), "t", 9e9) is None
        assert (await plane.command("CA1", Verb.GET, {}))[0] is Route.LOCAL
        with pytest.raises(ControlError):
            await plane.command("CA2", Verb.GET, {})

    run(scenario())
