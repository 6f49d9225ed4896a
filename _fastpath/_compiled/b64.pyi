# Stub of the compiled module b64.pyx (no pure twin: the pure framing uses binascii).
from typing_extensions import Buffer

__all__ = ["decode", "encode"]

def encode(data: Buffer) -> bytes: ...
def decode(data: Buffer) -> bytes: ...
