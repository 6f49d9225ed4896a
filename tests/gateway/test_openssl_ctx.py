"""The one module that reaches inside CPython's ``ssl`` (``gateway.openssl_ctx``): fails loudly.

If CPython moved the ``SSL_CTX`` pointer or OpenSSL dropped the control codes, these fail here
instead of the gateway making quietly more system calls (or worse) in production.
"""
from __future__ import annotations

import ssl

from gateway import openssl_ctx


def test_read_ahead_is_set_and_reads_back():
    context = ssl.create_default_context()
    assert openssl_ctx.read_ahead(context) is False  # OpenSSL's default
    assert openssl_ctx.enable_read_ahead(context) is None
    assert openssl_ctx.read_ahead(context) is True
    assert openssl_ctx.read_ahead(ssl.create_default_context()) is False  # per context, not global


def test_a_pointer_that_is_not_this_context_is_refused(monkeypatch):
    """The guard: OpenSSL's options behind the pointer must be the context's own."""
    context = ssl.create_default_context()
    context.options |= ssl.OP_NO_TICKET
    other = ssl.create_default_context()
    other_ptr = openssl_ctx._ssl_ctx(other)
    monkeypatch.setattr(openssl_ctx, "_ssl_ctx", lambda _context: other_ptr)
    assert openssl_ctx.enable_read_ahead(context) == (
        "the pointer found is not this context's SSL_CTX (CPython's layout changed?)")
    monkeypatch.undo()
    assert openssl_ctx.read_ahead(other) is False  # nothing was written through the wrong pointer
    assert openssl_ctx.read_ahead(context) is False


def test_without_a_shared_libssl_nothing_is_touched(monkeypatch):
    monkeypatch.setattr(openssl_ctx, "_libssl", lambda: None)
    context = ssl.create_default_context()
    assert openssl_ctx.enable_read_ahead(context) == "Python's ssl is linked statically: no libssl to call"
    assert openssl_ctx.read_ahead(context) is None
