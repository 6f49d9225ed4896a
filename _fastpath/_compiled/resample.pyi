# Stub of the compiled module resample.pyx; the pure twin _fastpath/_pure/resample.py has the same
# API (tests/fastpath/test_stubs.py compares the three).
from typing import Self

from typing_extensions import Buffer, disjoint_base

from .._pure.resample import design_filter as design_filter
from .._pure.resample import rate_ratio as rate_ratio

__all__ = ["Resampler", "design_filter", "rate_ratio"]

@disjoint_base  # an extension type with its own C layout
class Resampler:
    # __cinit__ takes the arguments, so at runtime they go to __new__, not __init__
    def __new__(cls, src_rate: int, dst_rate: int) -> Self: ...
    @property
    def src_rate(self) -> int: ...
    @property
    def dst_rate(self) -> int: ...
    @property
    def delay(self) -> int: ...
    def reset(self) -> None: ...
    def process(self, pcm: Buffer) -> bytes: ...
    def flush(self) -> bytes: ...
