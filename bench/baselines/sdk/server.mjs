// The load bench's "sdk" baseline: the bridge users would write with the OpenAI Agents SDK for
// JavaScript instead of the gateway. It follows the SDK's Twilio example (openai-agents-js
// examples/realtime-twilio): one HTTP port serves the Twilio voice webhook (TwiML
// <Connect><Stream>) and the media WebSocket, and every media WebSocket gets a
// TwilioRealtimeTransportLayer and a RealtimeSession connected to the Realtime API. Differences from
// the example, all configuration: node:http + ws instead of Fastify (the per-frame path is the same
// `ws` socket either way), g711_ulaw in both directions and the gateway's server_vad settings set
// explicitly, the upstream URL and API key from the environment (the OpenAI simulator), and the
// assistant speaks first (GATEWAY_GREETING), as in the gateway's runs.
//
// Environment (the gateway's names, so the bench configures every target alike):
//   GATEWAY_HOST, GATEWAY_PORT          where to listen (default 127.0.0.1:8080)
//   GATEWAY_PUBLIC_URL                  public https origin Twilio uses (TwiML stream URL, signatures)
//   GATEWAY_UPSTREAM_URL, OPENAI_API_KEY    the Realtime API (wss:// needs NODE_EXTRA_CA_CERTS for
//                                       the simulator's throw-away CA)
//   TWILIO_AUTH_TOKEN                   X-Twilio-Signature is checked on the webhook and the upgrade
//   GATEWAY_GREETING, GATEWAY_INSTRUCTIONS, GATEWAY_VOICE, GATEWAY_MODEL
//
// Bench-only addition: once Twilio's `start` names the call, one extra
// `session.update {type: "realtime"}` with event_id "<CallSid>:session" is sent upstream, the way the
// gateway and the naive bridge tag their sessions, so the simulators' records can be joined per call.
//
//   node bench/baselines/sdk/server.mjs      (after `npm ci` in bench/baselines/sdk)
import crypto from 'node:crypto';
import http from 'node:http';
import process from 'node:process';
import { WebSocketServer } from 'ws';
import { RealtimeAgent, RealtimeSession } from '@openai/agents/realtime';
import { TwilioRealtimeTransportLayer } from '@openai/agents-extensions';

const env = process.env;
const HOST = env.GATEWAY_HOST || '127.0.0.1';
const PORT = Number(env.GATEWAY_PORT || 8080);
const PUBLIC_URL = (env.GATEWAY_PUBLIC_URL || `http://${HOST}:${PORT}`).replace(/\/+$/, '');
const UPSTREAM_URL = env.GATEWAY_UPSTREAM_URL || 'wss://api.openai.com/v1/realtime?model=gpt-realtime';
const API_KEY = env.OPENAI_API_KEY || '';
const AUTH_TOKEN = env.TWILIO_AUTH_TOKEN || '';
const GREETING = env.GATEWAY_GREETING || '';
const MODEL = env.GATEWAY_MODEL || 'gpt-realtime';
const VOICE = env.GATEWAY_VOICE || 'marin';
const INSTRUCTIONS = env.GATEWAY_INSTRUCTIONS || 'You are a helpful phone assistant. Keep answers short.';
const WEBHOOK_PATH = '/twilio/voice';
const MEDIA_PATH = '/twilio/media';
const STREAM_URL = PUBLIC_URL.replace(/^http/, 'ws') + MEDIA_PATH;

const agent = new RealtimeAgent({ name: 'Phone assistant', instructions: INSTRUCTIONS });

// X-Twilio-Signature: base64(HMAC-SHA1(auth token, url + name1 + value1 + ...)), names sorted.
function signature(url, params) {
  let data = url;
  for (const name of Object.keys(params).sort()) {
    data += name + params[name];
  }
  return crypto.createHmac('sha1', AUTH_TOKEN).update(data, 'utf8').digest('base64');
}

function signedBy(req, url, params) {
  if (!AUTH_TOKEN) {
    return true;
  }
  const given = req.headers['x-twilio-signature'];
  if (typeof given !== 'string') {
    return false;
  }
  return [url, url + '/'].some((candidate) => {
    const expected = Buffer.from(signature(candidate, params));
    const got = Buffer.from(given);
    return expected.length === got.length && crypto.timingSafeEqual(expected, got);
  });
}

function reply(res, status, type, body) {
  res.writeHead(status, { 'Content-Type': type, 'Content-Length': Buffer.byteLength(body) });
  res.end(body);
}

const server = http.createServer((req, res) => {
  const path = (req.url || '/').split('?')[0];
  if (req.method === 'GET' && path === '/healthz') {
    reply(res, 200, 'text/plain', 'ok\n');
    return;
  }
  if (req.method !== 'POST' || path !== WEBHOOK_PATH) {
    reply(res, 404, 'text/plain', 'not found\n');
    return;
  }
  const chunks = [];
  req.on('data', (chunk) => chunks.push(chunk));
  req.on('end', () => {
    const params = Object.fromEntries(new URLSearchParams(Buffer.concat(chunks).toString('utf8')));
    if (!signedBy(req, PUBLIC_URL + req.url, params)) {
      reply(res, 403, 'text/plain', 'invalid Twilio signature\n');
      return;
    }
    reply(res, 200, 'text/xml', '<?xml version="1.0" encoding="UTF-8"?><Response><Connect>'
      + `<Stream url="${STREAM_URL}" /></Connect></Response>`);
  });
});

const wss = new WebSocketServer({ noServer: true });
server.on('upgrade', (req, socket, head) => {
  const path = (req.url || '/').split('?')[0];
  if (path !== MEDIA_PATH || !signedBy(req, STREAM_URL, {})) {
    socket.end('HTTP/1.1 403 Forbidden\r\nConnection: close\r\n\r\n');
    return;
  }
  wss.handleUpgrade(req, socket, head, (ws) => bridge(ws));
});

// One phone call: the Twilio media socket bridged to one Realtime session by the SDK.
function bridge(twilioWebSocket) {
  const transport = new TwilioRealtimeTransportLayer({ twilioWebSocket });
  const session = new RealtimeSession(agent, {
    transport,
    model: MODEL,
    config: {
      inputAudioFormat: 'g711_ulaw',
      outputAudioFormat: 'g711_ulaw',
      voice: VOICE,
      turnDetection: {
        type: 'server_vad', threshold: 0.5, prefixPaddingMs: 300, silenceDurationMs: 500,
        createResponse: true, interruptResponse: true,
      },
    },
  });
  session.on('error', (event) => {
    console.error('realtime session error:', event?.error?.message ?? event?.error ?? event);
  });
  let callSid = null;
  let connected = false;
  const started = () => {
    // both the upstream session and Twilio's `start` are needed: tag the session, then greet
    if (!connected || callSid === null) {
      return;
    }
    transport.sendEvent({ type: 'session.update', event_id: `${callSid}:session`, session: { type: 'realtime' } });
    if (GREETING) {
      transport.sendEvent({ type: 'response.create', response: { instructions: GREETING } });
    }
  };
  transport.on('*', (event) => {
    if (event.type === 'twilio_message' && event.message?.event === 'start' && callSid === null) {
      callSid = event.message.start?.callSid ?? '';
      started();
    }
  });
  session.connect({ apiKey: API_KEY, url: UPSTREAM_URL }).then(() => {
    connected = true;
    started();
  }, (error) => {
    console.error('upstream connect failed:', error?.message ?? error);
    twilioWebSocket.close(1011, 'upstream failed');
  });
}

for (const sig of ['SIGTERM', 'SIGINT']) {
  process.on(sig, () => {
    wss.clients.forEach((ws) => ws.terminate());
    server.close();
    process.exit(0);
  });
}

server.listen(PORT, HOST, () => {
  console.error(`sdk bridge: webhook and media on ${HOST}:${PORT} (${STREAM_URL}); upstream ${UPSTREAM_URL}`);
});
