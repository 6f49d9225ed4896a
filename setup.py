"""Build the Cython fast path.

Environment switches:
  GATEWAY_CYTHON_DEBUG=1     keep bounds/wraparound checks, -O0 -g, line tracing off
  GATEWAY_CYTHON_ANNOTATE=1  write the HTML annotation next to each .pyx
  GATEWAY_BUILD_ONLY=a,b     build only these modules of _fastpath/_compiled (development)
"""
import os

from Cython.Build import cythonize
from setuptools import Extension, setup

MODULES = ["g711", "b64", "resample", "framing", "ledger"]

debug = os.environ.get("GATEWAY_CYTHON_DEBUG") == "1"
annotate = os.environ.get("GATEWAY_CYTHON_ANNOTATE") == "1"
only = [m for m in os.environ.get("GATEWAY_BUILD_ONLY", "").split(",") if m]

# -ffp-contract=off: no fused multiply-add, so compiled and pure results match on every CPU.
compile_args = ["-O0", "-g"] if debug else ["-O3", "-fno-strict-aliasing", "-ffp-contract=off"]
directives = {
    "language_level": 3,
    "boundscheck": debug,
    "wraparound": debug,
    "initializedcheck": debug,
    "cdivision": True,
    "embedsignature": True,
    # Cython functions (not builtins) so inspect.signature sees names, kinds and defaults
    # (tests/fastpath/test_stubs.py compares them with the stubs and the pure twin).
    "binding": True,
}

extensions = [
    Extension(
        f"_fastpath._compiled.{name}",
        [f"_fastpath/_compiled/{name}.pyx"],
        extra_compile_args=compile_args,
    )
    for name in MODULES
    if not only or name in only
]

setup(
    ext_modules=cythonize(
        extensions,
        compiler_directives=directives,
        annotate=annotate,
        include_path=["_fastpath/_compiled"],
    ),
)
