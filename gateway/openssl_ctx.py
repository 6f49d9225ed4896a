"""The one module that reaches inside CPython's ``ssl``: OpenSSL's read-ahead on a client context.

With TLS on the socket itself (``picows_adapter.socket_bio_tls``) OpenSSL reads the socket in its
own way: without read-ahead, one read(2) for a record's 5-byte header and one for its body, where
a memory BIO took everything waiting in one. Read-ahead lets OpenSSL take everything waiting in
one read (``SSL_CTX_set_read_ahead``): measured at 200 calls, 219 → 184 system calls per
call-second. Python's ``ssl`` does not expose the setting, so this module calls OpenSSL through
ctypes on the ``SSL_CTX`` the context wraps: the pointer right after the object header, the
layout aiofastnet itself relies on to build its connections. Before writing anything it proves
the pointer right: OpenSSL's options for that ``SSL_CTX`` must equal the context's ``options``,
and read-ahead must read back as set. Anything unexpected leaves the context as it was and says
why (the gateway then makes the extra reads, nothing else changes); a test fails loudly
(``tests/gateway/test_openssl_ctx.py``).
"""
from __future__ import annotations

import ctypes
import ssl
from functools import cache

from aiofastnet.openssl_compat import OPENSSL_DYN_LIBS

SSL_CTRL_GET_READ_AHEAD = 40  # openssl/ssl.h, unchanged since OpenSSL 0.9
SSL_CTRL_SET_READ_AHEAD = 41


@cache
def _libssl() -> ctypes.CDLL | None:
    """The libssl Python's ``_ssl`` is linked against (as aiofastnet finds it), or None."""
    if OPENSSL_DYN_LIBS is None:  # a statically linked Python: no shared libssl to call
        return None
    lib = ctypes.CDLL(OPENSSL_DYN_LIBS.libssl)
    lib.SSL_CTX_ctrl.restype = ctypes.c_long
    lib.SSL_CTX_ctrl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_void_p]
    lib.SSL_CTX_get_options.restype = ctypes.c_uint64
    lib.SSL_CTX_get_options.argtypes = [ctypes.c_void_p]
    return lib


def _ssl_ctx(context: ssl.SSLContext) -> int | None:
    """The ``SSL_CTX *`` that ``context`` wraps (CPython's ``PySSLContext``: header, then the pointer)."""
    return ctypes.c_void_p.from_address(id(context) + object.__basicsize__).value


def enable_read_ahead(context: ssl.SSLContext) -> str | None:
    """Turn on OpenSSL's read-ahead for connections made from ``context``; None when done, else
    why not (``context`` unchanged)."""
    lib = _libssl()
    if lib is None:
        return "Python's ssl is linked statically: no libssl to call"
    ptr = _ssl_ctx(context)
    if not ptr:
        return "no SSL_CTX where CPython keeps it"
    if lib.SSL_CTX_get_options(ptr) != int(context.options):
        return "the pointer found is not this context's SSL_CTX (CPython's layout changed?)"
    lib.SSL_CTX_ctrl(ptr, SSL_CTRL_SET_READ_AHEAD, 1, None)
    if lib.SSL_CTX_ctrl(ptr, SSL_CTRL_GET_READ_AHEAD, 0, None) != 1:
        return "OpenSSL did not keep the setting"
    return None


def read_ahead(context: ssl.SSLContext) -> bool | None:
    """Whether connections from ``context`` read ahead (None: cannot be told)."""
    lib = _libssl()
    ptr = _ssl_ctx(context)
    if lib is None or not ptr or lib.SSL_CTX_get_options(ptr) != int(context.options):
        return None
    return bool(lib.SSL_CTX_ctrl(ptr, SSL_CTRL_GET_READ_AHEAD, 0, None) == 1)
