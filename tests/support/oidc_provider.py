"""A real OpenID Provider on 127.0.0.1 for the identity tests and benchmarks.

``OidcProvider`` installs the certified ``oidc-provider`` npm package (the versions in
tests/support/oidc/package-lock.json, with ``npm ci`` from the npm registry) into a cache
folder (``$REFRACTURE_NPM_CACHE`` or ``~/.cache/refracture-risk/oidc-provider/<lock hash>``;
nothing vendored in the repository), starts ``node provider.mjs`` on a free port in a temp
folder and stops it afterwards. The test owns the provider's signing key
(``provider.signing_key``), so attack tests can also sign tokens with the very key the
provider uses (expired, wrong audience, ...).

Clients registered (see ``CLIENTS``): ``ehr-system`` (a hospital system: client credentials
with ``private_key_jwt``, SMART Backend Services style; its private key is
``provider.system_key``) and ``refracture-ui`` (the clinician page: a public client,
authorization code with PKCE, redirect to the service's ``/ui/``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import httpx
from joserfc import jwt
from joserfc.jwk import RSAKey

HERE = Path(__file__).resolve().parent / "oidc"
AUDIENCE = "https://refracture-risk.test/api"
SYSTEM_CLIENT = "ehr-system"
UI_CLIENT = "refracture-ui"
SYSTEM_SCOPES = "predict explain model:read"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def node_available() -> bool:
    return shutil.which("node") is not None and shutil.which("npm") is not None


def install_provider() -> Path:
    """The folder holding provider.mjs and its node_modules (``npm ci`` once per lock)."""
    lock = (HERE / "package-lock.json").read_bytes()
    digest = hashlib.sha256(lock + (HERE / "package.json").read_bytes()).hexdigest()[:16]
    root = Path(os.environ.get("REFRACTURE_NPM_CACHE", Path.home() / ".cache" / "refracture-risk" / "oidc-provider"))
    folder = root / digest
    if not (folder / "node_modules" / "oidc-provider" / "package.json").exists():
        folder.mkdir(parents=True, exist_ok=True)
        for name in ("package.json", "package-lock.json"):
            shutil.copy(HERE / name, folder / name)
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=folder, check=True,
                       timeout=600, stdout=subprocess.DEVNULL)
    shutil.copy(HERE / "provider.mjs", folder / "provider.mjs")
    return folder


class OidcProvider:
    """``with OidcProvider(ui_redirect="http://127.0.0.1:3000/ui/") as idp``: ``idp.issuer``,
    ``idp.system_token(scope)``, ``idp.sign(claims)`` (with the provider's key)."""

    def __init__(self, ui_redirects: list[str] = (), access_token_ttl_s: int = 300):
        self.port = _free_port()
        self.issuer = f"http://127.0.0.1:{self.port}"
        self.audience = AUDIENCE
        self.signing_key = RSAKey.generate_key(2048, parameters={"kid": "idp-" + uuid.uuid4().hex[:8],
                                                                 "use": "sig", "alg": "RS256"})
        self.system_key = RSAKey.generate_key(2048, parameters={"kid": "ehr-1", "use": "sig", "alg": "RS256"})
        self.ui_redirects = list(ui_redirects)
        self.access_token_ttl_s = access_token_ttl_s
        self._proc: subprocess.Popen | None = None
        self._tmp: tempfile.TemporaryDirectory | None = None

    def clients(self) -> list[dict]:
        return [
            {"client_id": SYSTEM_CLIENT, "token_endpoint_auth_method": "private_key_jwt",
             "token_endpoint_auth_signing_alg": "RS256",
             "jwks": {"keys": [self.system_key.as_dict(private=False)]},
             "grant_types": ["client_credentials"], "response_types": [], "redirect_uris": [],
             "scope": SYSTEM_SCOPES},
            {"client_id": UI_CLIENT, "token_endpoint_auth_method": "none", "application_type": "web",
             "grant_types": ["authorization_code", "refresh_token"], "response_types": ["code"],
             "redirect_uris": self.ui_redirects or ["http://127.0.0.1/ui/"],
             "post_logout_redirect_uris": self.ui_redirects or ["http://127.0.0.1/ui/"],
             "scope": "openid profile offline_access predict explain model:read"},
        ]

    def __enter__(self) -> "OidcProvider":
        folder = install_provider()
        self._tmp = tempfile.TemporaryDirectory(prefix="refracture-oidc-")
        config = Path(self._tmp.name) / "config.json"
        config.write_text(json.dumps({
            "port": self.port, "issuer": self.issuer, "audience": self.audience,
            "jwks": {"keys": [self.signing_key.as_dict(private=True)]}, "clients": self.clients(),
            "access_token_ttl_s": self.access_token_ttl_s}))
        self._log = open(Path(self._tmp.name) / "provider.log", "w")
        self._proc = subprocess.Popen(["node", str(folder / "provider.mjs"), str(config)], cwd=folder,
                                      stdout=subprocess.PIPE, stderr=self._log, text=True)
        line = self._proc.stdout.readline()
        if not line.startswith("READY"):
            self.__exit__(None, None, None)
            raise RuntimeError(f"the OpenID Provider did not start: {line!r}; see its log")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.issuer + "/.well-known/openid-configuration", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError("the OpenID Provider does not answer discovery")

    def __exit__(self, *exc) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
        if self._proc is not None and self._proc.stdout:
            self._proc.stdout.close()
        if self._tmp is not None:
            self._log.close()
            self._tmp.cleanup()

    def log(self) -> str:
        return (Path(self._tmp.name) / "provider.log").read_text() if self._tmp else ""

    # ------------------------------------------------------------------ tokens
    def discovery(self) -> dict:
        return httpx.get(self.issuer + "/.well-known/openid-configuration", timeout=10).json()

    def system_token(self, scope: str = SYSTEM_SCOPES) -> dict:
        """A client-credentials token for ``ehr-system``, authenticated with
        ``private_key_jwt`` (a client assertion signed with its own key)."""
        token_endpoint = self.discovery()["token_endpoint"]
        now = int(time.time())
        assertion = jwt.encode({"alg": "RS256", "kid": self.system_key.kid},
                               {"iss": SYSTEM_CLIENT, "sub": SYSTEM_CLIENT, "aud": token_endpoint,
                                "jti": uuid.uuid4().hex, "iat": now, "exp": now + 60}, self.system_key)
        resp = httpx.post(token_endpoint, data={
            "grant_type": "client_credentials", "scope": scope, "resource": self.audience,
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "client_assertion": assertion}, timeout=10)
        resp.raise_for_status()
        return resp.json()

    def sign(self, claims: dict, header: dict | None = None, key=None) -> str:
        """A JWT signed with the provider's own key (or ``key``), for attack tests."""
        key = key or self.signing_key
        return jwt.encode({"alg": "RS256", "typ": "at+jwt", "kid": key.kid, **(header or {})}, claims, key)

    def claims(self, **overrides) -> dict:
        """Claims of a valid access token for the system client, changed by ``overrides``."""
        now = int(time.time())
        base = {"iss": self.issuer, "sub": SYSTEM_CLIENT, "client_id": SYSTEM_CLIENT, "aud": self.audience,
                "iat": now, "exp": now + 300, "jti": uuid.uuid4().hex, "scope": SYSTEM_SCOPES}
        base.update(overrides)
        return {k: v for k, v in base.items() if v is not None}
