"""OpenAI Realtime side: client events the gateway sends."""
