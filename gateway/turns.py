"""False-interruption resume: caller speech pauses the assistant; only real turns interrupt it.

Why: with server VAD a cough, an "uh-huh" or line noise during the assistant's answer cancels it,
and the caller hears the answer cut off for nothing. With ``min_interruption_ms`` set (paced
playout only), the session's VAD neither cancels (``interrupt_response: false``) nor answers
(``create_response: false``) by itself, and this class decides both:

* ``input_audio_buffer.speech_started`` while audio is on its way to the caller or a response is
  active: **pause**. Twilio is cleared (the caller stops hearing the assistant at once, as in a
  barge-in), what was sent but not heard goes back into the gateway's held audio, and the
  response keeps generating into it.
* the speech lasts ``min_interruption_ms`` (the prefix padding and the silence window the server
  adds around a turn are not speech; no ``speech_stopped`` by ``min_interruption_ms`` plus the
  silence window after the pause means it did): **interrupt** as usual — ``response.cancel`` (the
  server will not), truncate every item at what the caller heard, drop the held audio.
* ``input_audio_buffer.committed`` of a shorter turn while paused: a **false interruption**. The
  user item is deleted from the conversation (``conversation.item.delete``: the model never
  answers noise) and playback resumes from exactly where the caller stopped hearing.
* every committed turn that is not a false interruption gets its ``response.create``, once no
  response is active (the cancelled one's ``response.done`` may still be on its way).
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from .openai import events as oa
from .outcomes import Trigger

if TYPE_CHECKING:
    from .behaviour import SessionPlan
    from .call import Call
    from .openai import server_events as se

log = logging.getLogger("gateway.turns")


class Turns:
    """Turn-taking of one call with false-interruption resume (see the module docstring)."""

    def __init__(self, call: Call, plan: SessionPlan) -> None:
        self._call = call
        self._min_ms = plan.min_interruption_ms
        self._respond_to_turns = plan.respond_to_turns
        td = plan.session["audio"]["input"]["turn_detection"]
        # A server_vad turn starts prefix_padding_ms (default 300) before the speech it detected
        # and ends after silence_duration_ms (default 500) of silence: neither is speech.
        server_vad = td.get("type") == "server_vad"
        self._silence_ms = td.get("silence_duration_ms", 500) if server_vad else 0
        self._not_speech_ms = (td.get("prefix_padding_ms", 300) if server_vad else 0) + self._silence_ms
        self.paused = False
        self._speaking = False
        self._start_ms = 0  # audio_start_ms of the speech in progress
        self._spoken_ms = 0.0  # how long the last speech lasted (without the prefix padding)
        self._timer: Any = None
        self._respond_when_idle = False

    def speech_started(self, event: se.SpeechStarted) -> None:
        call = self._call
        self._speaking = True
        self._start_ms = event.audio_start_ms
        if self.paused or not (call.response_active or call.playout.busy):
            return  # the caller speaks into silence: a plain turn
        call.playout.pause(call.now())
        self.paused = True
        # speech_stopped comes silence_ms after the speech ends: none by then, it was long enough
        self._timer = call.call_later((self._min_ms + self._silence_ms) / 1000.0, self._long_enough)
        log.info("caller speech: assistant paused", extra=call.log_extra())

    def speech_stopped(self, event: se.SpeechStopped) -> None:
        self._speaking = False
        self._spoken_ms = max(0.0, event.audio_end_ms - self._start_ms - self._not_speech_ms)

    def _long_enough(self) -> None:
        self._timer = None
        if self.paused and self._speaking:
            self._interrupt()

    def committed(self, event: se.InputCommitted) -> None:
        if self.paused:
            if self._spoken_ms < self._min_ms:
                self._resume(event.item_id)
                return
            self._interrupt()
        self._respond()

    def response_done(self) -> None:
        if self._respond_when_idle and not self._call.response_active:
            self._respond_when_idle = False
            self._call.send_upstream(oa.response_create())

    def _resume(self, item_id: str) -> None:
        call = self._call
        self._unpause()
        call.send_upstream(oa.item_delete(item_id))
        call.stats.false_interruptions += 1
        log.info("caller speech of %.0f ms was not an interruption: assistant resumed", self._spoken_ms,
                 extra=call.log_extra())
        call.playout.resume()
        call.behaviour.on_false_interruption(item_id)

    def _interrupt(self) -> None:
        self._unpause()
        self._call.interrupt(Trigger.SPEECH_STARTED)

    def _respond(self) -> None:
        if not self._respond_to_turns:
            return
        if self._call.response_active:
            self._respond_when_idle = True
        else:
            self._call.send_upstream(oa.response_create())

    def _unpause(self) -> None:
        self.paused = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def stop(self) -> None:
        self._unpause()
