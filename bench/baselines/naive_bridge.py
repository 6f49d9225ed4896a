"""A straightforward Twilio Media Streams ⇄ OpenAI Realtime bridge: the load bench's naive baseline.

Written the way typical open-source examples do it (one coroutine pair per call): asyncio
``websockets`` on both legs, the stdlib ``json`` and ``base64`` per message, ``audioop`` for
pcm16 transcoding, one Twilio ``mark`` per audio chunk, and a naive barge-in: on
``input_audio_buffer.speech_started``, if marks are still pending, ``clear`` Twilio and truncate
the last assistant item at the wall-clock time elapsed since its first chunk was sent. No
signature or token checks, no admission control, no metrics.

Same protocols and configuration as the gateway, so the same simulators drive it:
``GATEWAY_UPSTREAM_URL``, ``OPENAI_API_KEY``, ``GATEWAY_UPSTREAM_CA_FILE``, ``GATEWAY_PUBLIC_URL``,
``GATEWAY_AUDIO_MODE``, ``GATEWAY_GREETING``, ``GATEWAY_VOICE``, ``GATEWAY_INSTRUCTIONS``,
``GATEWAY_HOST`` (default 127.0.0.1: this bridge checks no signatures, so it listens on other
interfaces only when told), ``GATEWAY_PORT``. ``websockets`` cannot serve a request with a body (the
voice webhook is a form POST), so aiohttp answers the webhook on ``GATEWAY_PORT`` and the media
WebSocket listens on ``NAIVE_MEDIA_PORT`` (default port + 1), announced in the TwiML as
``NAIVE_MEDIA_URL`` (default ``wss://<public host>:<media port>/twilio/media``).
``NAIVE_LOOP=asyncio`` uses the stdlib event loop instead of uvloop (what uvicorn picks when
installed).

    python -m bench.baselines.naive_bridge
"""
from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import ssl
import sys
import time
import warnings
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web
from websockets.asyncio.client import connect
from websockets.asyncio.server import serve
from websockets.exceptions import ConnectionClosed

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

UPSTREAM_URL = os.environ.get("GATEWAY_UPSTREAM_URL", "wss://api.openai.com/v1/realtime?model=gpt-realtime")
API_KEY = os.environ.get("OPENAI_API_KEY", "")
CA_FILE = os.environ.get("GATEWAY_UPSTREAM_CA_FILE", "")
PUBLIC_URL = os.environ.get("GATEWAY_PUBLIC_URL", "")
AUDIO_MODE = os.environ.get("GATEWAY_AUDIO_MODE", "passthrough")
GREETING = os.environ.get("GATEWAY_GREETING", "")
VOICE = os.environ.get("GATEWAY_VOICE", "marin")
MODEL = os.environ.get("GATEWAY_MODEL", "gpt-realtime")
INSTRUCTIONS = os.environ.get("GATEWAY_INSTRUCTIONS", "You are a helpful phone assistant. Keep answers short.")
HOST = os.environ.get("GATEWAY_HOST", "127.0.0.1")
PORT = int(os.environ.get("GATEWAY_PORT", "8080"))
MEDIA_PORT = int(os.environ.get("NAIVE_MEDIA_PORT", str(PORT + 1)))
MEDIA_URL = os.environ.get("NAIVE_MEDIA_URL") or (
    f"wss://{urlsplit(PUBLIC_URL).hostname or 'localhost'}:{MEDIA_PORT}/twilio/media")
PCM16 = AUDIO_MODE == "pcm16"


def session_update(call_sid: str) -> dict[str, Any]:
    fmt = {"type": "audio/pcm", "rate": 24000} if PCM16 else {"type": "audio/pcmu"}
    return {
        "type": "session.update",
        "event_id": f"{call_sid}:session",
        "session": {
            "type": "realtime", "model": MODEL, "instructions": INSTRUCTIONS, "output_modalities": ["audio"],
            "audio": {
                "input": {"format": fmt, "turn_detection": {
                    "type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 300, "silence_duration_ms": 500,
                    "create_response": True, "interrupt_response": True}},
                "output": {"format": fmt, "voice": VOICE},
            },
        },
    }


async def incoming_call(request: web.Request) -> web.Response:
    await request.post()
    twiml = (f'<?xml version="1.0" encoding="UTF-8"?><Response><Connect>'
             f'<Stream url="{MEDIA_URL}" /></Connect></Response>')
    return web.Response(text=twiml, content_type="text/xml")


async def healthz(_request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


def upstream_ssl() -> ssl.SSLContext | None:
    if not UPSTREAM_URL.startswith("wss:"):
        return None
    return ssl.create_default_context(cafile=CA_FILE or None)


async def handle_media_stream(twilio_ws) -> None:
    """One call: Twilio's media WebSocket bridged to one OpenAI Realtime session."""
    async with connect(UPSTREAM_URL, additional_headers={"Authorization": f"Bearer {API_KEY}"},
                       ssl=upstream_ssl(), max_size=None, proxy=None) as openai_ws:
        stream_sid = None
        last_assistant_item = None
        item_started_at = None
        mark_queue: list[str] = []
        up_state = down_state = None

        async def receive_from_twilio() -> None:
            nonlocal stream_sid, up_state
            try:
                async for message in twilio_ws:
                    data = json.loads(message)
                    if data["event"] == "media":
                        payload = data["media"]["payload"]
                        if PCM16:
                            pcm = audioop.ulaw2lin(base64.b64decode(payload), 2)
                            pcm, up_state = audioop.ratecv(pcm, 2, 1, 8000, 24000, up_state)
                            payload = base64.b64encode(pcm).decode("utf-8")
                        await openai_ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": payload}))
                    elif data["event"] == "start":
                        stream_sid = data["start"]["streamSid"]
                        await openai_ws.send(json.dumps(session_update(data["start"]["callSid"])))
                        if GREETING:
                            await openai_ws.send(json.dumps({"type": "response.create",
                                                             "response": {"instructions": GREETING}}))
                    elif data["event"] == "mark":
                        if mark_queue:
                            mark_queue.pop(0)
                    elif data["event"] == "stop":
                        break
            except ConnectionClosed:
                pass
            finally:
                await openai_ws.close()

        async def send_to_twilio() -> None:
            nonlocal last_assistant_item, item_started_at, down_state
            try:
                async for openai_message in openai_ws:
                    response = json.loads(openai_message)
                    kind = response.get("type")
                    if kind == "response.output_audio.delta" and "delta" in response:
                        audio = base64.b64decode(response["delta"])
                        if PCM16:
                            pcm, down_state = audioop.ratecv(audio, 2, 1, 24000, 8000, down_state)
                            audio = audioop.lin2ulaw(pcm, 2)
                        await twilio_ws.send(json.dumps({
                            "event": "media", "streamSid": stream_sid,
                            "media": {"payload": base64.b64encode(audio).decode("utf-8")}}))
                        if response.get("item_id") != last_assistant_item:
                            last_assistant_item = response.get("item_id")
                            item_started_at = time.monotonic()
                        await twilio_ws.send(json.dumps({"event": "mark", "streamSid": stream_sid,
                                                         "mark": {"name": "responsePart"}}))
                        mark_queue.append("responsePart")
                    elif kind == "input_audio_buffer.speech_started":
                        if mark_queue and last_assistant_item and item_started_at is not None:
                            elapsed_ms = int((time.monotonic() - item_started_at) * 1000)
                            await openai_ws.send(json.dumps({
                                "type": "conversation.item.truncate", "item_id": last_assistant_item,
                                "content_index": 0, "audio_end_ms": elapsed_ms}))
                            await twilio_ws.send(json.dumps({"event": "clear", "streamSid": stream_sid}))
                            mark_queue.clear()
                            last_assistant_item = None
                            item_started_at = None
                    elif kind == "error":
                        print(f"openai error: {response.get('error')}", file=sys.stderr, flush=True)
            except ConnectionClosed:
                pass

        await asyncio.gather(receive_from_twilio(), send_to_twilio())


async def main() -> None:
    app = web.Application()
    app.router.add_post("/twilio/voice", incoming_call)
    app.router.add_get("/healthz", healthz)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, HOST, PORT).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with serve(handle_media_stream, HOST, MEDIA_PORT, max_size=None):
        print(f"naive bridge: webhook on {HOST}:{PORT}, media on {HOST}:{MEDIA_PORT} ({MEDIA_URL})",
              file=sys.stderr, flush=True)
        await stop.wait()
    await runner.cleanup()


if __name__ == "__main__":
    if os.environ.get("NAIVE_LOOP", "uvloop") == "uvloop":
        try:
            import uvloop
        except ImportError:
            asyncio.run(main())
        else:
            uvloop.run(main())
    else:
        asyncio.run(main())
