"""Twilio side: TwiML, per-call media tokens, request signatures."""
