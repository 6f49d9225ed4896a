"""OpenAI simulator: a ``session.update`` setting the SDK types allow to be null must not break the session.

A null ``audio.*.format`` used to raise inside the listener (the session dropped with 1011); a null
``output_modalities`` was stored and the next response raised. Both are now ignored like an omitted key.
"""
from __future__ import annotations

import asyncio
import json

import pytest
import websockets

from gateway.sim.openai_schema import validate_client_event, validate_server_event
from gateway.sim.openai_sim import OpenAIRealtimeSim, OpenAISimConfig


@pytest.mark.parametrize("setting", [
    {"audio": {"input": {"format": None}}},
    {"audio": {"output": {"format": None}}},
    {"output_modalities": None},
])
def test_null_setting_is_ignored_like_an_omitted_key(run, setting):
    update = {"type": "session.update", "session": {"type": "realtime", **setting}}
    assert validate_client_event(update)[1] == []  # valid for the SDK schema, so the simulator must cope

    async def scenario():
        sim = OpenAIRealtimeSim(OpenAISimConfig(response_ms=(200,), pace=20))
        await sim.start()
        try:
            async with websockets.connect(sim.url, additional_headers={"Authorization": "Bearer sk-sim"}) as ws:
                created = json.loads(await ws.recv())
                assert json.loads(await ws.recv())["type"] == "conversation.created"
                await ws.send(json.dumps(update))
                await ws.send(json.dumps({"type": "response.create"}))
                events: list[dict] = []
                while not events or events[-1]["type"] != "response.done":
                    events.append(json.loads(await asyncio.wait_for(ws.recv(), 5)))
        finally:
            await sim.stop()
        updated = events[0]
        assert updated["type"] == "session.updated"
        assert updated["session"]["audio"] == created["session"]["audio"]
        assert updated["session"]["output_modalities"] == ["audio"]
        assert [e for e in events if validate_server_event(e)] == []
        assert events[-1]["response"]["status"] == "completed"
        assert sim.violations() == []
    run(scenario())
