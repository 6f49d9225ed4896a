"""The one exception type of the fast path.

Defined in a plain Python module so the compiled and the pure implementation raise the very
same class; ``gateway.errors`` re-exports it inside the gateway's hierarchy.
"""


class ProtocolError(ValueError):
    """A peer sent bytes that are not a valid message of its protocol (bad JSON, bad base64...)."""
