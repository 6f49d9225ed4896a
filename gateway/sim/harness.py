"""The whole system on loopback: OpenAI simulator (TLS) ⇄ gateway ⇄ Twilio simulator (+ its REST API).

Used by ``gateway demo`` and the end-to-end tests. ``Stack`` runs the real ``Gateway`` (secure
mode: signatures and call tokens on) in this process, and ``judge`` turns what the two simulators
recorded into verdicts that do not trust anything the gateway says about itself:
truncation offset vs what the caller heard, audio lost or duplicated on either leg, late audio of
interrupted responses played, protocol violations on both sides.
"""
from __future__ import annotations

import contextlib
import dataclasses
import ssl
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..config import Settings
from ..server import Gateway
from .openai_sim import OpenAIRealtimeSim, OpenAISimConfig, SimSession
from .openai_tls import make_self_signed_tls
from .truth import ItemIndex, expected_ulaw, heard_bytes_per_item
from .twilio_record import CallRecord
from .twilio_rest import TwilioRestConfig, TwilioRestSim
from .twilio_script import CallScript
from .twilio_sim import TwilioCall, TwilioSim, TwilioSimConfig

PUBLIC_URL = "https://gateway.example.test"
AUTH_TOKEN = "sim-auth-token"  # noqa: S105 - loopback test token shared by the simulator and the gateway
CONTROL_TOKEN = "demo-control-token"  # noqa: S105 - loopback test token of the control API


@dataclass
class StackConfig:
    audio_mode: str = "passthrough"
    tls: bool = True
    latency_ms: float = 40.0
    jitter_ms: float = 10.0
    seed: int = 0
    # Real models take a few hundred ms to the first audio delta; the gateway's latency probes
    # run in that idle time, so a simulator answering instantly would be unrealistically harsh.
    openai: OpenAISimConfig = field(default_factory=lambda: OpenAISimConfig(first_audio_ms=400))
    settings: dict[str, Any] = field(default_factory=dict)  # Settings field overrides
    record: bool = True  # keep audio in the simulators' records (needed by judge)
    twilio_rest: TwilioRestConfig = field(default_factory=TwilioRestConfig)
    # More Settings overrides computed from the running REST simulator (its base_url, account_sid,
    # auth_token, api_key_sid/secret), applied before the gateway starts.
    rest_settings: Callable[[TwilioRestSim], dict[str, Any]] | None = None


@dataclass
class TruncateCheck:
    item_id: str
    audio_end_ms: int
    heard_ms: float
    accepted: bool

    @property
    def error_ms(self) -> float:
        return self.audio_end_ms - self.heard_ms


@dataclass
class CallReport:
    """Verdicts about one call, from the simulators' records only."""

    call_sid: str
    outcome: str
    truncates: list[TruncateCheck] = field(default_factory=list)
    clears: int = 0
    unplayed_at_end_ms: float = 0.0  # audio Twilio held but never played when the call ended (not cleared)
    stop_latency_ms: list[float] = field(default_factory=list)  # caller speech start → audio stopped at Twilio
    problems: list[str] = field(default_factory=list)  # anything wrong; empty = correct call
    cancels: int = 0
    upstream_errors: list[str] = field(default_factory=list)
    heard_ms: float = 0.0
    # An item's audio sent again after a clear (false-interruption resume): where it resumed minus
    # where the caller had stopped hearing it, in ms (> 0: audio skipped, < 0: heard twice).
    resumes: list[float] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


class Stack:
    """Start with ``async with Stack(StackConfig()) as stack`` ; ``await stack.call(script)``."""

    def __init__(self, config: StackConfig | None = None) -> None:
        self.config = config or StackConfig()
        self.openai = OpenAIRealtimeSim(dataclasses.replace(
            self.config.openai, record_audio=self.config.record, record_server_events=self.config.record))
        self.gateway: Gateway | None = None
        self.twilio: TwilioSim | None = None
        self.twilio_rest: TwilioRestSim | None = None  # base_url, account_sid, auth_token, api_key_sid/secret
        self.settings: Settings | None = None
        self._tls_dir: tempfile.TemporaryDirectory[str] | None = None  # CA + server key, removed on exit

    async def __aenter__(self) -> Stack:
        try:
            await self._start()
        except BaseException:
            with contextlib.suppress(Exception):  # best effort: the start failure is what matters
                await self.__aexit__()
            raise
        return self

    async def _start(self) -> None:
        cfg = self.config
        ssl_ctx: ssl.SSLContext | None = None
        ca_file = ""
        if cfg.tls:
            self._tls_dir = tempfile.TemporaryDirectory(prefix="sim-tls-")
            ssl_ctx, ca_file = make_self_signed_tls(self._tls_dir.name)
        upstream_url = await self.openai.start(ssl_context=ssl_ctx)
        self.twilio = TwilioSim(TwilioSimConfig(
            webhook_url=PUBLIC_URL + "/twilio/voice", connect_to=None,  # set once the gateway listens
            auth_token=AUTH_TOKEN, latency_ms=cfg.latency_ms, jitter_ms=cfg.jitter_ms, seed=cfg.seed,
            record_payloads=cfg.record,
        ))
        self.twilio_rest = TwilioRestSim(self.twilio, cfg.twilio_rest)
        await self.twilio_rest.start()
        values: dict[str, Any] = {
            "host": "127.0.0.1", "port": 0, "public_url": PUBLIC_URL, "upstream_url": upstream_url,
            "openai_api_key": self.openai.config.api_key, "upstream_ca_file": ca_file,
            "audio_mode": cfg.audio_mode, "twilio_auth_token": AUTH_TOKEN, "control_token": CONTROL_TOKEN,
            "twilio_latency_ms": cfg.latency_ms,
        }
        values.update(cfg.settings)
        if cfg.rest_settings is not None:
            values.update(cfg.rest_settings(self.twilio_rest))
        self.settings = Settings.from_env({}, **values)
        self.gateway = Gateway(self.settings)
        port = await self.gateway.start()
        self.twilio.config.connect_to = f"http://127.0.0.1:{port}"

    async def __aexit__(self, *exc: object) -> None:
        if self.twilio_rest is not None:
            await self.twilio_rest.stop()
        if self.twilio is not None:
            await self.twilio.close()
        if self.gateway is not None:
            await self.gateway.stop()
        await self.openai.stop()
        if self._tls_dir is not None:
            self._tls_dir.cleanup()
            self._tls_dir = None

    @property
    def base_url(self) -> str:
        assert self.gateway is not None
        return f"http://127.0.0.1:{self.gateway.port}"

    def start_call(self, script: CallScript, call_sid: str | None = None) -> TwilioCall:
        assert self.twilio is not None
        return self.twilio.start_call(script, call_sid)

    async def call(self, script: CallScript, call_sid: str | None = None) -> tuple[CallRecord, CallReport]:
        record = await self.start_call(script, call_sid).wait()
        return record, self.judge(record)

    def session_for(self, call_sid: str) -> SimSession | None:
        """The upstream session the gateway opened for this call (by session.update's event_id)."""
        for session in self.openai.sessions:
            for event in session.client_events:
                if event.type == "session.update" and event.event.get("event_id") == f"{call_sid}:session":
                    return session
        return None

    def judge(self, record: CallRecord) -> CallReport:
        report = CallReport(record.call_sid, str(record.outcome), heard_ms=record.heard_ms)
        problems = report.problems
        cleared = sum(c.bytes_dropped for c in record.clears)
        report.unplayed_at_end_ms = max(0, record.unplayed_bytes - cleared) / 8
        if str(record.outcome) not in ("completed", "rest_completed", "redirected"):
            problems.append(f"call ended as {record.outcome} ({record.close_code} {record.close_reason})")
        problems.extend(f"twilio violation {code}: {detail}" for code, detail in record.violations)
        session = self.session_for(record.call_sid)
        if session is None:
            problems.append("no upstream session for this call")
            return report
        problems.extend(f"upstream violation: {v}" for v in session.violations)
        report.upstream_errors = [f"{e.code}: {e.message}" for e in session.errors]
        problems.extend(f"upstream error provoked: {e}" for e in report.upstream_errors)
        report.cancels = len(session.cancels)
        report.clears = len(record.clears)
        _check_inbound(record, session, self.config.audio_mode, problems)
        lead_ms = _lead_ms(self.config.audio_mode)
        expected = {it.item_id: expected_ulaw(it.audio, it.output_format)
                    for it in session.assistant_items if it.output_format}
        heard = heard_bytes_per_item(expected, [(h.payload, h.played) for h in record.heard])
        received = _check_outbound(record, session, expected, self.config.audio_mode, problems, report.resumes)
        truncated = set()
        for t in session.truncates:
            truncated.add(t.item_id)
            heard_ms = max(0.0, heard.get(t.item_id, 0) / 8.0 - lead_ms)
            report.truncates.append(TruncateCheck(t.item_id, t.audio_end_ms, heard_ms, t.accepted))
            if not t.accepted:
                problems.append(f"truncate rejected: {t.error}")
        # An item the caller did not hear in full must have been truncated, unless the call ended
        # while it played (hang-up: the session is gone with it).
        ended_by_caller = record.closed_by == "twilio" or str(record.outcome) == "dropped"  # or by a REST update
        for item in session.assistant_items:
            exp_len = len(expected.get(item.item_id, b""))
            got = heard.get(item.item_id, 0)
            if (received.get(item.item_id, 0) and got < exp_len - 8 and item.item_id not in truncated
                    and not ended_by_caller):
                problems.append(f"item {item.item_id}: heard {got / 8:.0f} of {exp_len / 8:.0f} ms, never truncated")
        for clear in record.clears:
            turns_before = [t for t in record.turns if t.at <= clear.effect_at]
            if turns_before:
                report.stop_latency_ms.append((clear.effect_at - turns_before[-1].at) * 1000)
        return report


RESUME_TOLERANCE_MS = 20.0


def _lead_ms(audio_mode: str) -> float:
    if audio_mode != "pcm16":
        return 0.0
    from _fastpath._pure.resample import Resampler

    return Resampler(24000, 8000).delay / 8.0


def _check_inbound(record: CallRecord, session: SimSession, mode: str, problems: list[str]) -> None:
    """Every caller frame reaches the model once, in order (passthrough: byte-exact)."""
    sent = record.caller_audio()
    got = session.input_audio
    if mode == "passthrough":
        if got != sent[:len(got)]:
            problems.append("caller audio altered, reordered or duplicated on the way upstream")
        elif len(sent) - len(got) > 8 * 100:
            problems.append(f"caller audio lost: {len(sent) - len(got)} of {len(sent)} bytes never arrived")
    else:
        expected = len(sent) * 6  # 8 kHz μ-law → 24 kHz PCM16
        if abs(len(got) - expected) > 48 * 100:
            problems.append(f"caller audio length upstream {len(got)} B, expected ≈{expected} B")


def _check_outbound(record: CallRecord, session: SimSession, expected: dict[str, bytes], mode: str,
                    problems: list[str], resumes: list[float]) -> dict[str, int]:
    """What Twilio received of each item is a gap-free prefix of it (no loss, dup, reorder); an
    item resumed after a clear (false-interruption resume) must continue from what the caller
    heard of it (within RESUME_TOLERANCE_MS: the playhead is an estimate, as for a truncate).

    Returns the bytes received per item. Transcoded audio is located by windows (an independent
    transcode may differ by one code now and then), passthrough audio is compared byte for byte.
    """
    received: dict[str, bytearray] = {}
    heard: dict[str, int] = {}  # furthest byte of each item played so far
    # Each item's previous chunk, by its place in the stream: a chunk and a clear written together
    # arrive in one read, at the same instant, so arrival times cannot order them.
    last_seq: dict[str, int] = {}
    clears = [c.seq for c in record.clears]
    index = ItemIndex(expected)
    for chunk in record.heard:
        payload = chunk.payload
        hit = index.locate(payload)
        if hit is None:
            if payload:
                problems.append(f"Twilio received {len(payload)} B matching no assistant item")
            continue
        item_id, off = hit
        buf = received.setdefault(item_id, bytearray())
        previous = last_seq.get(item_id)
        cleared = previous is not None and any(previous < c < chunk.seq for c in clears)
        if cleared and off != len(buf):
            at = heard.get(item_id, 0)
            resumes.append((off - at) / 8)
            if abs(off - at) > RESUME_TOLERANCE_MS * 8:
                problems.append(f"item {item_id}: resumed at {off / 8:.0f} ms, the caller had heard {at / 8:.0f} ms")
            del buf[off:]
        if off != len(buf):
            problems.append(f"item {item_id}: chunk at offset {off} after {len(buf)} B (gap, duplicate or reorder)")
            break
        buf += payload
        last_seq[item_id] = chunk.seq
        if chunk.played:
            heard[item_id] = max(heard.get(item_id, 0), off + chunk.played)
    interrupted = {t.item_id for t in session.truncates}
    for item in session.assistant_items:
        got = bytes(received.get(item.item_id, b""))
        exp = expected.get(item.item_id, b"")
        if mode == "passthrough" and exp[:len(got)] != got:
            problems.append(f"item {item.item_id}: audio at Twilio differs from what the model produced")
        if (item.status == "completed" and item.item_id not in interrupted and not record.clears
                and record.closed_by != "twilio" and len(got) < len(exp) - 8 * 5):
            problems.append(f"item {item.item_id}: only {len(got)} of {len(exp)} B reached Twilio")
    return {k: len(v) for k, v in received.items()}
