"""A throwaway certificate authority for the local services, made with ``openssl`` at run time.

Nothing here is kept in the repository: each test session (or ``kafka-local up --secure``)
makes a fresh CA and certificates valid for two days. Server certificates name
``127.0.0.1`` and ``localhost`` so clients can verify the host name (``sslmode=verify-full``,
librdkafka's default ``ssl.endpoint.identification.algorithm=https``).
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

_DAYS = "2"
_SERVER_NAMES = "subjectAltName=IP:127.0.0.1,DNS:localhost"


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


@dataclass(frozen=True)
class Certificate:
    """A PEM certificate and its unencrypted PKCS#8 private key."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class CertificateAuthority:
    """A self-signed CA that issues server and client certificates into ``directory``."""

    directory: Path
    name: str = "labconnect-test-ca"

    @property
    def cert(self) -> Path:
        return self.directory / f"{self.name}.pem"

    @property
    def key(self) -> Path:
        return self.directory / f"{self.name}.key"

    @classmethod
    def create(cls, directory: Path, name: str = "labconnect-test-ca") -> CertificateAuthority:
        directory.mkdir(parents=True, exist_ok=True)
        ca = cls(directory, name)
        _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                 "-keyout", str(ca.key), "-out", str(ca.cert), "-days", _DAYS, "-subj", f"/CN={name}",
                 "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
        return ca

    def issue(self, name: str, *, server: bool) -> Certificate:
        """A certificate for ``name`` (its common name); a server's also names 127.0.0.1 and localhost."""
        issued = Certificate(self.directory / f"{name}.pem", self.directory / f"{name}.key")
        csr = self.directory / f"{name}.csr"
        extensions = self.directory / f"{name}.ext"
        usage = "serverAuth" if server else "clientAuth"
        extensions.write_text(f"extendedKeyUsage={usage}\n" + (f"{_SERVER_NAMES}\n" if server else ""))
        _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                 "-keyout", str(issued.key), "-out", str(csr), "-subj", f"/CN={name}")
        _openssl("x509", "-req", "-in", str(csr), "-CA", str(self.cert), "-CAkey", str(self.key),
                 "-CAcreateserial", "-out", str(issued.cert), "-days", _DAYS, "-extfile", str(extensions))
        csr.unlink()
        extensions.unlink()
        return issued

    def pkcs12(self, issued: Certificate, password: str) -> Path:
        """``issued`` with its key and this CA's certificate as a PKCS#12 keystore (for Java)."""
        path = issued.cert.with_suffix(".p12")
        _openssl("pkcs12", "-export", "-in", str(issued.cert), "-inkey", str(issued.key), "-certfile", str(self.cert),
                 "-name", issued.cert.stem, "-out", str(path), "-passout", f"pass:{password}")
        return path
