"""Token minting for the integration tests.

`cli_token(...)` calls `target/release/phi-guard token` (the way a developer mints one).
`PyMinter` signs JWTs itself with `cryptography`, for attack tokens the CLI refuses to make:
`alg: none`, HS256 keyed with the RSA public key PEM, an embedded `jwk` header, a tampered payload.
Every key here is a test-only key from tests/keys/.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import subprocess
import time
import uuid
from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

REPO = Path(__file__).resolve().parents[2]
KEYS = REPO / "tests" / "keys"
CLI = Path(os.environ.get("PHI_GUARD_CLI") or REPO / "target" / "release" / "phi-guard")
ISSUER = "https://idp.phi-guard.test"
AUDIENCE = "https://fhir.phi-guard.test"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_json(obj) -> str:
    return b64url(json.dumps(obj, separators=(",", ":")).encode())


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def decode_unverified(token: str) -> tuple[dict, dict]:
    header, payload, _ = token.split(".")
    return json.loads(b64url_decode(header)), json.loads(b64url_decode(payload))


def cli_token(*, key: str | None = None, alg: str | None = None, kid: str | None = None,
              iss: str | None = None, aud: str | None = None, sub: str | None = None,
              client_id: str | None = None, scope: str | None = None,
              patient: str | None = None, ttl: int | None = None,
              claims: dict | None = None) -> str:
    """`phi-guard token ...`; options left as None use the CLI's defaults."""
    argv = [str(CLI), "token"]
    for flag, value in (("--key", key), ("--alg", alg), ("--kid", kid), ("--iss", iss),
                        ("--aud", aud), ("--sub", sub), ("--client-id", client_id),
                        ("--scope", scope), ("--patient", patient), ("--ttl", ttl)):
        if value is not None:
            argv += [flag, str(value)]
    if claims:
        argv += ["--claims", json.dumps(claims)]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False, cwd=REPO)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    token = proc.stdout.strip()
    if token.count(".") != 2:
        raise RuntimeError(f"phi-guard token printed something that is not a JWT: {token[:80]!r}")
    return token


def py_token(*, key: str | None = None, alg: str | None = None, kid: str | None = None,
             iss: str | None = None, aud: str | None = None, sub: str | None = None,
             client_id: str | None = None, scope: str | None = None,
             patient: str | None = None, ttl: int | None = None,
             claims: dict | None = None) -> str:
    """What `cli_token` asks the CLI for, signed in Python (PHI_GUARD_MINTER=python)."""
    alg = alg or "RS256"
    minter = PyMinter()
    payload = minter.claims(scope=scope, patient=patient, ttl=3600 if ttl is None else int(ttl))
    for name, value in (("iss", iss), ("aud", aud), ("sub", sub), ("client_id", client_id)):
        if value is not None:
            payload[name] = value
    payload.update(claims or {})
    key_file = Path(key).name if key else None
    return minter.token(payload, alg=alg, key_file=key_file, kid=kid)


def load_private_key(name: str):
    return serialization.load_pem_private_key((KEYS / name).read_bytes(), password=None)


def public_pem(name: str) -> bytes:
    return load_private_key(name).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def public_jwk(name: str, kid: str | None = None) -> dict:
    pub = load_private_key(name).public_key()
    if isinstance(pub, rsa.RSAPublicKey):
        nums = pub.public_numbers()
        n = nums.n.to_bytes((nums.n.bit_length() + 7) // 8, "big")
        jwk = {"kty": "RSA", "n": b64url(n), "e": b64url(nums.e.to_bytes(3, "big").lstrip(b"\0"))}
    elif isinstance(pub, ec.EllipticCurvePublicKey):
        nums = pub.public_numbers()
        jwk = {"kty": "EC", "crv": "P-256", "x": b64url(nums.x.to_bytes(32, "big")),
               "y": b64url(nums.y.to_bytes(32, "big"))}
    else:
        raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        jwk = {"kty": "OKP", "crv": "Ed25519", "x": b64url(raw)}
    if kid:
        jwk["kid"] = kid
    return jwk


def sign(signing_input: bytes, alg: str, key) -> bytes:
    if alg == "none":
        return b""
    if alg == "HS256":
        return hmac.new(key, signing_input, hashlib.sha256).digest()
    if alg == "RS256":
        return key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
    if alg == "ES256":
        r, s = decode_dss_signature(key.sign(signing_input, ec.ECDSA(hashes.SHA256())))
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")
    if alg == "EdDSA":
        assert isinstance(key, ed25519.Ed25519PrivateKey)
        return key.sign(signing_input)
    raise ValueError(f"unsupported alg {alg}")


def encode(header: dict, payload: dict, alg: str, key) -> str:
    signing_input = f"{b64url_json(header)}.{b64url_json(payload)}".encode()
    return f"{signing_input.decode()}.{b64url(sign(signing_input, alg, key))}"


KEY_FILES = {"RS256": ("demo-rs256.key.pem", "demo-rs256"),
             "ES256": ("demo-es256.key.pem", "demo-es256"),
             "EdDSA": ("demo-eddsa.key.pem", "demo-eddsa")}


class PyMinter:
    """Builds the same tokens as the CLI, and the broken ones it won't."""

    def claims(self, *, scope: str | None = "patient/*.rs", patient: str | None = None,
               ttl: int = 3600, now: int | None = None, **extra) -> dict:
        now = int(time.time()) if now is None else now
        out = {"iss": ISSUER, "aud": AUDIENCE, "sub": "demo-user", "client_id": "demo-app",
               "iat": now, "exp": now + ttl, "jti": str(uuid.uuid4())}
        if scope is not None:
            out["scope"] = scope
        if patient is not None:
            out["patient"] = patient
        out.update(extra)
        return out

    def token(self, payload: dict, *, alg: str = "RS256", key_file: str | None = None,
              kid: str | None = None, header: dict | None = None) -> str:
        default_file, default_kid = KEY_FILES.get(alg, KEY_FILES["RS256"])
        hdr = {"alg": alg, "typ": "JWT", "kid": kid or default_kid}
        if header:
            hdr.update(header)
        hdr = {k: v for k, v in hdr.items() if v is not None}
        return encode(hdr, payload, alg, load_private_key(key_file or default_file))

    # ---- attacks (each is the valid baseline with one thing changed)
    def alg_none(self, payload: dict) -> str:
        return encode({"alg": "none", "typ": "JWT", "kid": "demo-rs256"}, payload, "none", None)

    def hs256_with_rsa_public_key(self, payload: dict) -> str:
        """Algorithm confusion: HMAC keyed with the bytes of the RS256 public key PEM."""
        return encode({"alg": "HS256", "typ": "JWT", "kid": "demo-rs256"}, payload, "HS256",
                      public_pem("demo-rs256.key.pem"))

    def embedded_jwk(self, payload: dict) -> str:
        """Signed by the attacker, carrying the attacker's public key in the header."""
        header = {"alg": "RS256", "typ": "JWT", "kid": "demo-rs256",
                  "jwk": public_jwk("attacker-rs256.key.pem", kid="demo-rs256")}
        return encode(header, payload, "RS256", load_private_key("attacker-rs256.key.pem"))

    def attacker_key_known_kid(self, payload: dict) -> str:
        return self.token(payload, key_file="attacker-rs256.key.pem", kid="demo-rs256")

    @staticmethod
    def tamper(token: str, **changes) -> str:
        """Keep header and signature, change payload claims."""
        header, payload, sig = token.split(".")
        claims = json.loads(b64url_decode(payload))
        claims.update(changes)
        return f"{header}.{b64url_json(claims)}.{sig}"


# ---- sender-constrained tokens: DPoP proofs (RFC 9449) and certificate thumbprints (RFC 8705)
DPOP_KEYS = {"ES256": "dpop-client-es256.key.pem", "EdDSA": "dpop-client-eddsa.key.pem"}


def jwk_thumbprint(jwk: dict) -> str:
    """RFC 7638 SHA-256 thumbprint: a token's `cnf.jkt` for this key."""
    required = {"EC": ("crv", "kty", "x", "y"), "RSA": ("e", "kty", "n"), "OKP": ("crv", "kty", "x")}
    canonical = {k: jwk[k] for k in required[jwk["kty"]]}
    text = json.dumps(canonical, separators=(",", ":"), sort_keys=True)
    return b64url(hashlib.sha256(text.encode()).digest())


def dpop_jkt(alg: str = "ES256") -> str:
    return jwk_thumbprint(public_jwk(DPOP_KEYS[alg]))


def dpop_proof(method: str, url: str, token: str | None, *, alg: str = "ES256",
               sign_with: str | None = None, jti: str | None = None, iat: int | None = None,
               header: dict | None = None, claims: dict | None = None) -> str:
    """A DPoP proof for `method` `url` (query and fragment dropped), bound to `token` by `ath`.
    `sign_with` (a key file in tests/keys) signs with another key than the one in the `jwk` header; `header` and
    `claims` patch the proof (a None value removes a member)."""
    hdr = {"typ": "dpop+jwt", "alg": alg, "jwk": public_jwk(DPOP_KEYS[alg])}
    body = {"jti": jti or str(uuid.uuid4()), "htm": method, "htu": url.split("?")[0].split("#")[0],
            "iat": int(time.time()) if iat is None else iat}
    if token is not None:
        body["ath"] = b64url(hashlib.sha256(token.encode()).digest())
    for target, patch in ((hdr, header), (body, claims)):
        for k, v in (patch or {}).items():
            if v is None:
                target.pop(k, None)
            else:
                target[k] = v
    key = load_private_key(sign_with or DPOP_KEYS[alg])
    return encode(hdr, body, alg, key)


def certificate_thumbprint(pem_file: Path) -> str:
    """RFC 8705 `x5t#S256`: the SHA-256 of the certificate's DER, base64url."""
    from cryptography import x509

    cert = x509.load_pem_x509_certificate(Path(pem_file).read_bytes())
    return b64url(hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).digest())
