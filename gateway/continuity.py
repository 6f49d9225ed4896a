"""Keeping a call's upstream session alive: reconnect after a failure, roll over before the cap.

A phone call is a promise to a person on the line; an upstream that closes, resets, stops
answering pings or stops reading, or a fatal ``error`` (``session_expired``) mid-call, must not end
it. ``Continuity`` opens a new session with backoff, within ``GATEWAY_UPSTREAM_RECONNECT_ATTEMPTS``
tries and ``GATEWAY_UPSTREAM_RECONNECT_BUDGET_S`` seconds; meanwhile the caller's audio is held
(bounded) and what Twilio still plays keeps playing. The new session gets the same
``session.update`` and the conversation replayed (``CallBehaviour.replay``: caller and assistant
turns as the caller heard them, function calls and their outputs), then the held audio.

Rollover: OpenAI caps a session at 60 minutes (``expires_at`` in ``session.created``). Before that
(``GATEWAY_MAX_SESSION_S``, or 5 minutes before ``expires_at``), the next session is opened and
configured in the background; at a quiet moment (no response active, the caller not speaking,
nothing playing at Twilio; the wait is bounded by two minutes and by the session's expiry, so it
never loses to the cap) the conversation is replayed into it and it takes over between two caller
frames: every frame goes to exactly one session, none is lost or sent twice.
"""
from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from .errors import UpstreamProtocolError
from .openai import server_events as se
from .openai.upstream import UpstreamLink
from .outcomes import Reconnect, UpstreamFailure

if TYPE_CHECKING:
    from .call import Call

log = logging.getLogger("gateway.continuity")
BACKOFF_S = (0.0, 0.5, 1.0, 2.0, 4.0)  # before attempt 1, 2, ...
EXPIRY_MARGIN_S = 300.0  # roll over this long before the server's expires_at (a quarter of a short session)
QUIET_WAIT_S = 120.0  # the longest a rollover waits for a quiet moment before switching anyway
SWITCH_MARGIN_S = 30.0  # ... and it switches anyway this long before the session expires
QUIET_CHECK_S = 0.25


class _Standby:
    """The sink of the session being prepared for a rollover: it only needs to get configured."""

    def __init__(self, keeper: Continuity) -> None:
        self._keeper = keeper
        self.link: UpstreamLink | None = None
        self.configured = False
        self.expires_at = 0

    @property
    def ended(self) -> bool:
        return self._keeper.call.ended

    def on_upstream(self, message: bytes | memoryview) -> None:
        try:
            event = se.parse(message)
        except UpstreamProtocolError as exc:
            self._keeper.standby_failed(str(exc))
            return
        if isinstance(event, se.SessionCreated):
            self.expires_at = event.session.expires_at
        elif isinstance(event, se.SessionUpdated):
            self.configured = True
        elif isinstance(event, se.Error):
            self._keeper.standby_failed(f"error {event.error.code}: {event.error.message[:100]}")

    def on_upstream_binary(self) -> None:
        self._keeper.standby_failed("binary frame")

    def upstream_connected(self, link: UpstreamLink, connect_s: float) -> None:
        self.link = link
        self._keeper.standby_connected(self)

    def upstream_failed(self, exc: BaseException, code: UpstreamFailure | str) -> None:
        self._keeper.standby_failed(f"{code}: {exc}")

    def upstream_closed(self, code: int, reason: str, failure: UpstreamFailure) -> None:
        self._keeper.standby_failed(f"closed {code} {reason}")

    def upstream_paused(self) -> None:
        pass

    def upstream_resumed(self) -> None:
        pass

    def on_upstream_oversized(self, limit: int) -> None:
        self._keeper.standby_failed("oversized message")


class Continuity:
    def __init__(self, call: Call) -> None:
        self.call = call
        settings = call.settings
        self._max_attempts = settings.upstream_reconnect_attempts
        self._budget_s = settings.upstream_reconnect_budget_s
        self._failed_at: float | None = None  # monotonic; a reconnect is under way since
        self._attempt = 0
        self._timer: Any = None
        self._stall_timer: Any = None
        self.reconnect_times: list[float] = []  # seconds from a failure to the new session taking over
        self._session_started = time.monotonic()
        self._rollover_at = self._session_started + settings.max_session_s
        self._rollover_timer: Any = None
        self._standby: _Standby | None = None
        self._quiet_deadline = 0.0
        self._expiry_due: float | None = None  # monotonic: this session's rollover, from expires_at
        self._expires: float | None = None  # monotonic: when the server ends this session

    @property
    def reconnecting(self) -> bool:
        return self._failed_at is not None

    # ------------------------------------------------------------------ reconnect
    def recover(self, code: UpstreamFailure | str, detail: str) -> bool:
        """An upstream failure mid-call: True if a new session is being opened (the call goes on)."""
        call = self.call
        now = time.monotonic()
        if self._failed_at is None:
            if self._max_attempts == 0:
                return False
            self._failed_at, self._attempt = now, 0
            log.warning("upstream lost (%s: %s); reconnecting", code, detail[:200], extra=call.log_extra())
            self._cancel_rollover()
        else:
            count(call, Reconnect.FAILED)
        if self._attempt >= self._max_attempts or now - self._failed_at >= self._budget_s:
            count(call, Reconnect.EXHAUSTED)
            log.error("upstream reconnect budget spent (%d attempts, %.1f s)", self._attempt, now - self._failed_at,
                      extra=call.log_extra())
            return False
        call.take_down_upstream()
        delay = BACKOFF_S[min(self._attempt, len(BACKOFF_S) - 1)]
        delay = min(delay, max(0.0, self._failed_at + self._budget_s - now))
        self._attempt += 1
        self._timer = call.call_later(delay, self._attempt_now)
        return True

    def _attempt_now(self) -> None:
        self._timer = None
        self.call.open_upstream_again(self.call)

    def reconnected(self, link: UpstreamLink) -> None:
        """A reconnect attempt connected: it takes over with the conversation replayed."""
        call = self.call
        assert self._failed_at is not None
        took = time.monotonic() - self._failed_at
        self.reconnect_times.append(took)
        call.stats.reconnect_s.append(took)
        count(call, Reconnect.OK)
        log.info("upstream reconnected after %.2f s (attempt %d)", took, self._attempt, extra=call.log_extra())
        self._failed_at = None
        call.bring_up_upstream(link, replay=True, line=call.settings.reconnect_line)
        self.session_started()

    # ------------------------------------------------------------------ stalls
    def paused(self) -> None:
        """The upstream stopped reading: hold caller audio; replace it if it stays stuck."""
        if self._stall_timer is None:
            self.call.caller.hold()
            self.call.direct_off()
            self._stall_timer = self.call.call_later(self.call.settings.upstream_stall_s, self._stalled)

    def resumed(self) -> None:
        if self._stall_timer is not None:
            self._stall_timer.cancel()
            self._stall_timer = None
            self.call.resume_upstream()

    def _stalled(self) -> None:
        self._stall_timer = None
        self.call.upstream_failed(TimeoutError(f"not reading for {self.call.settings.upstream_stall_s:g} s"),
                                  UpstreamFailure.STALLED)

    # ------------------------------------------------------------------ rollover
    def session_started(self) -> None:
        """A session took over: its rollover is due after GATEWAY_MAX_SESSION_S, or before its
        ``expires_at`` (whose ``session.created`` may have come first)."""
        self._session_started = time.monotonic()
        due = self._session_started + self.call.settings.max_session_s
        self._schedule_rollover(min(due, self._expiry_due) if self._expiry_due is not None else due)

    def expires_at(self, unix: int) -> None:
        """The server said when this session stops working: roll over well before."""
        if unix:
            remaining = unix - time.time()
            self._expires = time.monotonic() + remaining
            self._expiry_due = max(time.monotonic() + 1.0,
                                   time.monotonic() + remaining - min(EXPIRY_MARGIN_S, remaining / 4))
            self._schedule_rollover(min(self._rollover_at, self._expiry_due))

    def session_lost(self) -> None:
        """The session is gone: its expiry no longer matters (the next one will say its own)."""
        self._expiry_due = self._expires = None

    def _schedule_rollover(self, at: float) -> None:
        self._cancel_rollover()
        self._rollover_at = at
        self._rollover_timer = self.call.call_later(max(0.0, at - time.monotonic()), self._prepare)

    def _cancel_rollover(self) -> None:
        if self._rollover_timer is not None:
            self._rollover_timer.cancel()
            self._rollover_timer = None
        if self._standby is not None:
            standby, self._standby = self._standby, None
            if standby.link is not None:
                standby.link.detach()
                standby.link.close(1000, "not needed")

    def _prepare(self) -> None:
        """Open and configure the next session now; switch at the next quiet moment."""
        self._rollover_timer = None
        if self.reconnecting or self._standby is not None:
            return
        log.info("upstream session rollover: preparing the next session", extra=self.call.log_extra())
        self._standby = _Standby(self)
        self.call.open_upstream_again(self._standby)

    def standby_connected(self, standby: _Standby) -> None:
        if standby is not self._standby or standby.link is None:
            return
        self.call.configure(standby.link)
        now = time.monotonic()
        self._quiet_deadline = now + QUIET_WAIT_S
        if self._expires is not None:  # a quiet moment is nice, keeping the call is a must
            left = max(0.0, self._expires - now)
            self._quiet_deadline = min(self._quiet_deadline, self._expires - min(SWITCH_MARGIN_S, left / 4))
        self._rollover_timer = self.call.call_later(QUIET_CHECK_S, self._switch_when_quiet)

    def standby_failed(self, reason: str) -> None:
        log.warning("upstream rollover: the next session failed (%s); retrying in 30 s", reason,
                    extra=self.call.log_extra())
        self._standby = None
        self._schedule_rollover(time.monotonic() + 30.0)

    def _switch_when_quiet(self) -> None:
        self._rollover_timer = None
        standby = self._standby
        if standby is None or standby.link is None:
            return
        if not (standby.configured and self.call.quiet) and time.monotonic() < self._quiet_deadline:
            self._rollover_timer = self.call.call_later(QUIET_CHECK_S, self._switch_when_quiet)
            return
        self._standby = None
        count(self.call, Reconnect.ROLLOVER)
        log.info("upstream session rollover: switching now", extra=self.call.log_extra())
        self.session_lost()
        self.call.switch_upstream(standby.link)
        self.expires_at(standby.expires_at)
        self.session_started()

    def stop(self) -> None:
        for timer in (self._timer, self._stall_timer):
            if timer is not None:
                timer.cancel()
        self._timer = self._stall_timer = None
        self._cancel_rollover()


def count(call: Call, result: Reconnect) -> None:
    reconnects = call.stats.reconnects
    reconnects[result] = reconnects.get(result, 0) + 1
