"""A profile's ``session`` is built once per worker and shared, read-only, by all its calls."""
from __future__ import annotations

from gateway.agents.profiles import load
from gateway.agents.services import AgentServices
from gateway.config import Settings


def test_one_session_per_profile_rebuilt_for_a_reloaded_profile():
    settings = Settings.from_env({}, insecure_dev=True)
    services = AgentServices(settings, load(settings), lambda *_: None)
    name, agent = services.agents.get(services.agents.default)
    first = services.session(name, agent)
    assert services.session(name, agent) is first  # shared by every call of the profile
    assert first["type"] == "realtime" and first["instructions"] == agent.instructions

    assert services.reload()
    new_name, new_agent = services.agents.get(services.agents.default)
    assert new_name == name and new_agent is not agent
    renewed = services.session(new_name, new_agent)
    assert renewed is not first and renewed == first  # same file, the reloaded profile's own object
    # A call still holding the previous profile gets a session of that profile, never another's.
    assert services.session(name, agent) is not renewed
