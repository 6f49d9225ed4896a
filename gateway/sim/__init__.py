"""Protocol simulators of Twilio Media Streams and the OpenAI Realtime API (used by demo, tests, bench)."""
