"""What every call's agent shares within one worker: the agents in force, tools, Twilio REST, records.

``reload`` swaps in a freshly validated agents file (``SIGHUP``); calls in progress keep the
profile they started with (profiles are immutable), and a bad file is logged and ignored.
"""
from __future__ import annotations

import logging
from typing import Any

from ..behaviour import CallControl
from ..config import Settings
from ..errors import ConfigError
from ..stats import CallStats
from ..twilio.rest import TwilioRest
from ..twilio.tokens import CallClaims
from .agent_call import AgentCall
from .profiles import Agent, Agents, load
from .session import session_config
from .sinks import Count, RecordSinks
from .tools import ToolClient

log = logging.getLogger("gateway.agents")


class AgentServices:
    def __init__(self, settings: Settings, agents: Agents, count_record: Count) -> None:
        self.settings = settings
        self.agents = agents
        self.tools = ToolClient(settings.tool_secret)
        self.records = RecordSinks(settings.call_records_dir, settings.call_record_webhook, settings.tool_secret,
                                   count_record)
        self._rest: TwilioRest | None = None
        self._sessions: dict[str, tuple[Agent, dict[str, Any]]] = {}

    @property
    def rest(self) -> TwilioRest | None:
        """Twilio's REST API, or None when TWILIO_ACCOUNT_SID (and a credential) are not set."""
        credentials = self.settings.twilio_rest_credentials
        if credentials is None:
            return None
        if self._rest is None:  # made on the loop: the package's HTTP client opens an aiohttp session
            self._rest = TwilioRest(self.settings.twilio_account_sid, *credentials,
                                    base_url=self.settings.twilio_api_base_url)
        return self._rest

    def session(self, name: str, agent: Agent) -> dict[str, Any]:
        """The ``session`` of session.update for the profile ``agent``: built once and shared by all
        its calls, read-only (each call keeps it for reconnects; one copy per call was 1.6 KiB)."""
        cached = self._sessions.get(name)
        if cached is None or cached[0] is not agent:
            cached = self._sessions[name] = (agent, session_config(agent, self.agents.tools, self.settings))
        return cached[1]

    def behaviour(self, call: CallControl, stats: CallStats, claims: CallClaims) -> AgentCall:
        return AgentCall(self, call, stats, claims)

    def reload(self) -> bool:
        """Re-read the agents file; True if the new one is in force."""
        try:
            agents = load(self.settings)
        except ConfigError as exc:
            log.error("agents file not reloaded, the previous one stays in force: %s", exc)
            return False
        self.agents = agents
        self._sessions.clear()
        log.info("agents reloaded from %s: %s", agents.source, ", ".join(agents.agents))
        return True

    async def aclose(self) -> None:
        await self.tools.aclose()
        await self.records.aclose()
        if self._rest is not None:
            await self._rest.aclose()
