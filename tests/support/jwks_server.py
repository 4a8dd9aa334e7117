"""A real HTTP server on 127.0.0.1 serving an OpenID discovery document and a JWKS that a
test can change, count and take down: the provider side of the JWKS cache's tests, without
a full identity provider (that one, oidc-provider on Node, is in tests/support/oidc_provider.py)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from joserfc.jwk import ECKey, RSAKey


def rsa_key(kid: str) -> RSAKey:
    """A fresh 2048-bit RSA signing key with this key id."""
    return RSAKey.generate_key(2048, parameters={"kid": kid, "use": "sig", "alg": "RS256"})


def ec_key(kid: str) -> ECKey:
    return ECKey.generate_key("P-256", parameters={"kid": kid, "use": "sig", "alg": "ES256"})


class JwksServer:
    """``with JwksServer() as s``: ``s.issuer``, ``s.jwks_uri``; ``s.keys`` (private keys,
    published as public ones), ``s.extra`` (raw JWK dicts added as they are), ``s.up``
    (False: every request answers 503), ``s.hits`` (JWKS requests served)."""

    def __init__(self) -> None:
        self.keys: list = []
        self.extra: list[dict] = []
        self.up = True
        self.hits = 0
        self.issuer_override: str | None = None
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):  # noqa: N802
                if not owner.up:
                    self.send_response(503)
                    self.end_headers()
                    return
                if self.path == "/.well-known/openid-configuration":
                    body = {"issuer": owner.issuer_override or owner.issuer, "jwks_uri": owner.jwks_uri,
                            "authorization_endpoint": owner.issuer + "/auth", "token_endpoint": owner.issuer + "/token"}
                elif self.path == "/jwks":
                    owner.hits += 1
                    body = {"keys": [k.as_dict(private=False) for k in owner.keys] + owner.extra}
                else:
                    self.send_response(404)
                    self.end_headers()
                    return
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.issuer = f"http://127.0.0.1:{self._server.server_address[1]}"
        self.jwks_uri = self.issuer + "/jwks"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self) -> "JwksServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
