"""Twilio Media Streams <-> OpenAI Realtime gateway."""
