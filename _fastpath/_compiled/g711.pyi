# Stub of the compiled module g711.pyx; the pure twin _fastpath/_pure/g711.py has the same API
# (tests/fastpath/test_stubs.py compares the three).
from typing_extensions import Buffer

__all__ = ["ulaw_decode", "ulaw_encode"]

def ulaw_decode(data: Buffer) -> bytes: ...
def ulaw_encode(pcm: Buffer) -> bytes: ...
