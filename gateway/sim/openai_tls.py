"""Throw-away TLS for loopback tests: a private CA and a server certificate for 127.0.0.1/localhost.

Uses the ``cryptography`` package when it is installed, else the ``openssl`` command line tool.
A CA plus a separate leaf (rather than one self-signed leaf) keeps strict X.509 verification
(Python 3.13's default ``VERIFY_X509_STRICT``) happy.
"""
from __future__ import annotations

import ipaddress
import os
import ssl
import subprocess
import tempfile

__all__ = ["make_self_signed_tls"]

_DAYS = 7


def make_self_signed_tls(directory: str | None = None) -> tuple[ssl.SSLContext, str]:
    """Create CA + server cert/key in ``directory`` (a new temp dir by default).

    Returns ``(server_context, ca_file)``; a client verifies with
    ``ssl.create_default_context(cafile=ca_file)`` and host ``127.0.0.1`` or ``localhost``.
    """
    directory = directory or tempfile.mkdtemp(prefix="sim-tls-")
    ca_file, cert_file, key_file = (os.path.join(directory, n) for n in ("ca.pem", "server.pem", "server.key"))
    try:
        import cryptography  # type: ignore[import-not-found, unused-ignore]  # noqa: F401 - optional dependency
    except ImportError:
        _write_with_openssl(directory, ca_file, cert_file, key_file)
    else:
        _write_with_cryptography(ca_file, cert_file, key_file)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    return context, ca_file


def _write_with_openssl(directory: str, ca_file: str, cert_file: str, key_file: str) -> None:
    ca_key, csr, ext = (os.path.join(directory, n) for n in ("ca.key", "server.csr", "server.ext"))
    with open(ext, "w") as f:
        f.write("subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\n"
                "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n"
                "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    for cmd in (
        ["req", "-x509", *ec, "-keyout", ca_key, "-out", ca_file, "-days", str(_DAYS),
         "-subj", "/CN=openai-sim test CA", "-addext", "basicConstraints=critical,CA:TRUE",
         "-addext", "keyUsage=critical,keyCertSign,cRLSign"],
        ["req", *ec, "-keyout", key_file, "-out", csr, "-subj", "/CN=localhost"],
        ["x509", "-req", "-in", csr, "-CA", ca_file, "-CAkey", ca_key,
         "-set_serial", str(int.from_bytes(os.urandom(8), "big")), "-out", cert_file, "-days", str(_DAYS),
         "-extfile", ext],
    ):
        subprocess.run(["openssl", *cmd], check=True, capture_output=True)  # noqa: S603, S607 - fixed argv, openssl from PATH


def _write_with_cryptography(ca_file: str, cert_file: str, key_file: str) -> None:
    import datetime as dt

    # Only reached when cryptography is installed (it ships its own types then).
    from cryptography import x509  # type: ignore[import-not-found, unused-ignore]
    from cryptography.hazmat.primitives import hashes, serialization  # type: ignore[import-not-found, unused-ignore]
    from cryptography.hazmat.primitives.asymmetric import ec  # type: ignore[import-not-found, unused-ignore]
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID  # type: ignore[import-not-found, unused-ignore]

    now = dt.datetime.now(dt.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "openai-sim test CA")])
    no_usage = dict.fromkeys(("digital_signature", "content_commitment", "key_encipherment", "data_encipherment",
                              "key_agreement", "key_cert_sign", "crl_sign", "encipher_only", "decipher_only"), False)

    def builder(subject: x509.Name, public_key: ec.EllipticCurvePublicKey) -> x509.CertificateBuilder:
        return (x509.CertificateBuilder().subject_name(subject).issuer_name(ca_name).public_key(public_key)
                .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
                .not_valid_after(now + dt.timedelta(days=_DAYS))
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False))

    ca_cert = (builder(ca_name, ca_key.public_key())
               .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
               .add_extension(x509.KeyUsage(**{**no_usage, "key_cert_sign": True, "crl_sign": True}), critical=True)
               .sign(ca_key, hashes.SHA256()))
    cert = (builder(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]), key.public_key())
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(**{**no_usage, "digital_signature": True}), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    with open(ca_file, "wb") as f:
        f.write(ca_cert.public_bytes(pem))
    with open(cert_file, "wb") as f:
        f.write(cert.public_bytes(pem))
    with open(key_file, "wb") as f:
        f.write(key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
