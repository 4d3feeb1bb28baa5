#!/usr/bin/env python3
"""A local test CA and a server certificate for Envoy's HTTPS listener, made with `openssl`.

    tls_certs.py [DIR]          (default .run/tls; `make certs`)

Writes DIR/ca.crt, DIR/ca.key, DIR/server.crt (chain: server then CA) and DIR/server.key, ECDSA
P-256, SHA-256. The server certificate names localhost, 127.0.0.1, ::1, `envoy` (the compose
service) and fhir.phi-guard.test. Files are reused while they are complete, made by this version
of the script and valid for at least another week; otherwise all four are made anew.

TEST-ONLY material: it lives under .run/ (git-ignored) and is never committed. server.key is
world-readable on purpose so that Envoy can read it inside a container as its own non-root user
(uid 101); ca.key stays private to its owner.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEFAULT_DIR = REPO / ".run" / "tls"
# Bump when the names or the profile below change, so old files are replaced.
PROFILE = "phi-guard-test-pki v2"
# Client certificates for the mutual-TLS tests (certificate-bound tokens, RFC 8705).
CLIENTS = ("client", "client2")
SERVER_NAMES = ("DNS:localhost", "DNS:envoy", "DNS:fhir.phi-guard.test", "IP:127.0.0.1", "IP:::1")
CA_DAYS, SERVER_DAYS = 3650, 397
MIN_REMAINING_SECONDS = 7 * 24 * 3600


@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    cert: Path
    key: Path


def files(directory: Path = DEFAULT_DIR) -> TlsFiles:
    d = Path(directory)
    return TlsFiles(ca=d / "ca.crt", cert=d / "server.crt", key=d / "server.key")


def client_files(name: str, directory: Path = DEFAULT_DIR) -> tuple[Path, Path]:
    """(certificate, key) of a test client (`client` or `client2`), signed by the test CA."""
    d = Path(directory)
    return d / f"{name}.crt", d / f"{name}.key"


def _openssl(*args: str, cwd: Path) -> None:
    try:
        subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, text=True)
    except FileNotFoundError as err:
        raise RuntimeError("`openssl` is not installed (Debian: apt-get install openssl)") from err
    except subprocess.CalledProcessError as err:
        raise RuntimeError(f"openssl {args[0]} failed: {err.stderr.strip()}") from err


def _usable(directory: Path) -> bool:
    d = Path(directory)
    names = ("ca.crt", "ca.key", "server.crt", "server.key", "PROFILE",
             *(f"{c}.{ext}" for c in CLIENTS for ext in ("crt", "key")))
    if not all((d / n).is_file() for n in names):
        return False
    if (d / "PROFILE").read_text().strip() != PROFILE:
        return False
    check = subprocess.run(["openssl", "x509", "-checkend", str(MIN_REMAINING_SECONDS), "-noout",
                            "-in", str(d / "server.crt")], capture_output=True)
    return check.returncode == 0


def ensure(directory: Path = DEFAULT_DIR) -> TlsFiles:
    """The test CA and server certificate in `directory`, made if missing or stale."""
    directory = Path(directory)
    if _usable(directory):
        return files(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".tls-", dir=directory.parent))
    try:
        _openssl("req", "-x509", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                 "-nodes", "-sha256", "-days", str(CA_DAYS), "-keyout", "ca.key", "-out", "ca.crt",
                 "-subj", "/O=phi-guard/CN=phi-guard local test CA (do not trust outside tests)",
                 "-addext", "basicConstraints=critical,CA:TRUE,pathlen:0",
                 "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=work)
        _openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                 "-keyout", "server.key", "-out", "server.csr",
                 "-subj", "/O=phi-guard/CN=localhost", cwd=work)
        (work / "server.ext").write_text(
            "basicConstraints=critical,CA:FALSE\n"
            "keyUsage=critical,digitalSignature\n"
            "extendedKeyUsage=serverAuth\n"
            "subjectKeyIdentifier=hash\n"
            "authorityKeyIdentifier=keyid,issuer\n"
            f"subjectAltName={','.join(SERVER_NAMES)}\n")
        _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                 "-CAcreateserial", "-sha256", "-days", str(SERVER_DAYS),
                 "-extfile", "server.ext", "-out", "server.only.crt", cwd=work)
        (work / "client.ext").write_text(
            "basicConstraints=critical,CA:FALSE\n"
            "keyUsage=critical,digitalSignature\n"
            "extendedKeyUsage=clientAuth\n")
        for client in CLIENTS:
            _openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                     "-keyout", f"{client}.key", "-out", f"{client}.csr",
                     "-subj", f"/O=phi-guard/CN=phi-guard test {client}", cwd=work)
            _openssl("x509", "-req", "-in", f"{client}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                     "-CAcreateserial", "-sha256", "-days", str(SERVER_DAYS),
                     "-extfile", "client.ext", "-out", f"{client}.crt", cwd=work)
            os.chmod(work / f"{client}.key", 0o600)
            os.chmod(work / f"{client}.crt", 0o644)
        # Envoy sends the whole chain; clients trust ca.crt.
        (work / "server.crt").write_bytes((work / "server.only.crt").read_bytes()
                                          + (work / "ca.crt").read_bytes())
        os.chmod(work / "ca.key", 0o600)
        os.chmod(work / "server.key", 0o644)  # read by Envoy as uid 101 in the compose container
        for name in ("ca.crt", "server.crt"):
            os.chmod(work / name, 0o644)
        (work / "PROFILE").write_text(PROFILE + "\n")
        directory.mkdir(parents=True, exist_ok=True)
        os.chmod(directory, 0o755)
        for name in ("ca.key", "ca.crt", "server.key", "server.crt", "PROFILE",
                     *(f"{c}.{ext}" for c in CLIENTS for ext in ("crt", "key"))):
            os.replace(work / name, directory / name)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return files(directory)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    directory = Path(args[0]) if args else DEFAULT_DIR
    made = not _usable(directory)
    tls = ensure(directory)
    rel = tls.ca.parent.relative_to(REPO) if tls.ca.parent.is_relative_to(REPO) else tls.ca.parent
    print(f"{'made' if made else 'kept'} test CA and server certificate in {rel}/ "
          f"(trust {rel}/ca.crt, e.g. curl --cacert {rel}/ca.crt)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
