"""CDS Hooks test helpers: a CDS client (its key pair, the clients file naming it, signed
JWTs), hook calls whose prefetch holds a FHIR Bundle's resources, and a minimal FHIR server
(a real HTTP server on loopback, serving reads and searches of a set of resources)."""

from __future__ import annotations

import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from joserfc import jwt
from joserfc.jwk import ECKey, RSAKey

PUBLIC_URL = "https://risk.test.example"
ISSUER = "https://ehr.test.example"
SERVICE_PATH = "/cds-services/refracture-risk"
PREFETCH_TYPES = {"procedures": "Procedure", "observations": "Observation", "conditions": "Condition",
                  "medications": "MedicationStatement"}


class CdsClientKeys:
    """A CDS client's signing key (ES384 by default, as CDS Hooks recommends) and its tokens."""

    def __init__(self, alg: str = "ES384", kid: str = "test-key-1", issuer: str = ISSUER):
        self.alg, self.kid, self.issuer = alg, kid, issuer
        params = {"kid": kid, "alg": alg, "use": "sig"}
        self.key = ECKey.generate_key("P-384", parameters=params) if alg.startswith("ES") else \
            RSAKey.generate_key(2048, parameters=params)

    def jwks(self) -> dict[str, Any]:
        return {"keys": [self.key.as_dict(private=False)]}

    def token(self, path: str = SERVICE_PATH, public_url: str = PUBLIC_URL, header: dict | None = None,
              **claims: Any) -> str:
        """A signed JWT for ``public_url + path``, valid 5 minutes; ``claims`` override or add
        (a value None removes the claim)."""
        now = int(time.time())
        body = {"iss": self.issuer, "aud": public_url + path, "exp": now + 300, "iat": now, "jti": str(uuid.uuid4())}
        body.update(claims)
        body = {k: v for k, v in body.items() if v is not None}
        head = {"alg": self.alg, "typ": "JWT", "kid": self.kid, **(header or {})}
        return jwt.encode(head, body, self.key, algorithms=[head["alg"]])

    def auth(self, path: str = SERVICE_PATH, **claims: Any) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(path, **claims)}"}


def clients_file(folder: Path, *clients: dict[str, Any]) -> Path:
    """The REFRACTURE_CDS_CLIENTS file for ``clients`` (name, issuer, jwks or jwks_url, ...)."""
    path = folder / "cds-clients.json"
    path.write_text(json.dumps({"clients": list(clients)}))
    return path


def resources_of(bundle: dict[str, Any]) -> list[dict[str, Any]]:
    return [e["resource"] for e in bundle["entry"]]


def prefetch_of(resources: list[dict[str, Any]]) -> dict[str, Any]:
    """The service's prefetch keys filled from ``resources`` (one patient's), as a CDS client
    that ran the templates would send them (searchset Bundles; null for an empty search is
    also allowed, but a search with no match is an empty Bundle here)."""
    patient = next(r for r in resources if r["resourceType"] == "Patient")
    out: dict[str, Any] = {"patient": patient}
    for key, rtype in PREFETCH_TYPES.items():
        out[key] = {"resourceType": "Bundle", "type": "searchset",
                    "entry": [{"resource": r, "search": {"mode": "match"}} for r in resources if r["resourceType"] == rtype]}
    return out


def hook_call(resources: list[dict[str, Any]], hook: str = "patient-view", prefetch: bool = True,
              **extra: Any) -> dict[str, Any]:
    """A hook call about the patient of ``resources`` (with its prefetch unless ``prefetch`` is False)."""
    patient = next(r for r in resources if r["resourceType"] == "Patient")
    context = {"userId": "Practitioner/test", "patientId": patient["id"]}
    if hook == "encounter-discharge":
        context["encounterId"] = "enc-1"
    call: dict[str, Any] = {"hook": hook, "hookInstance": str(uuid.uuid4()), "context": context}
    if prefetch:
        call["prefetch"] = prefetch_of(resources)
    call.update(extra)
    return call


class MiniFhirServer:
    """A FHIR R4 server of a fixed set of resources, on 127.0.0.1 (a real HTTP server the
    service's client talks to): ``GET [base]/<Type>/<id>`` and ``GET [base]/<Type>?patient=<id>
    [&code=system|code,...]``, searchset Bundles paged ``page_size`` at a time with ``next``
    links, a bearer token required (401 otherwise). ``requests`` records (path, query, token)."""

    def __init__(self, resources: list[dict[str, Any]], token: str, page_size: int = 5, base_path: str = "/fhir"):
        self.resources, self.token, self.page_size, self.base_path = resources, token, page_size, base_path
        self.requests: list[tuple[str, str, str | None]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):  # noqa: N802 - http.server's name
                parts = urlsplit(self.path)
                auth = self.headers.get("Authorization")
                server.requests.append((parts.path, parts.query, auth))
                if auth != f"Bearer {server.token}":
                    return self._send(401, {"resourceType": "OperationOutcome", "issue": [
                        {"severity": "error", "code": "login", "diagnostics": "bearer token required"}]})
                status, body = server.answer(parts.path, parse_qs(parts.query))
                self._send(status, body)

            def _send(self, status, body):
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/fhir+json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}{base_path}"

    def __enter__(self) -> "MiniFhirServer":
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def answer(self, path: str, query: dict[str, list[str]]) -> tuple[int, dict[str, Any]]:
        rest = path[len(self.base_path):].strip("/").split("/")
        if len(rest) == 2:
            found = [r for r in self.resources if r["resourceType"] == rest[0] and r.get("id") == rest[1]]
            return (200, found[0]) if found else (404, {"resourceType": "OperationOutcome", "issue": [
                {"severity": "error", "code": "not-found", "diagnostics": "no such resource"}]})
        rtype = rest[0]
        patient = (query.get("patient") or [""])[0].removeprefix("Patient/")
        codes = {c for value in query.get("code", []) for c in value.split(",")}
        matches = [r for r in self.resources if r["resourceType"] == rtype
                   and (r.get("subject") or {}).get("reference") in (f"Patient/{patient}", patient)
                   and (not codes or any(f"{c.get('system')}|{c.get('code')}" in codes
                                         for c in (r.get("code") or {}).get("coding", [])))]
        offset = int((query.get("_offset") or ["0"])[0])
        page = matches[offset:offset + self.page_size]
        bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset", "total": len(matches),
                                  "entry": [{"resource": r, "search": {"mode": "match"}} for r in page]}
        if offset + self.page_size < len(matches):
            q = "&".join(f"{k}={v[0]}" for k, v in query.items() if k != "_offset")
            bundle["link"] = [{"relation": "next", "url": f"{self.url}/{rtype}?{q}&_offset={offset + self.page_size}"}]
        return 200, bundle
