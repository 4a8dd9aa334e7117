"""The review page as a small Starlette app; the service mounts it at ``/ui``.

Everything the page needs is served from here (no CDN, no external fonts or scripts),
and the Content-Security-Policy forbids loading anything from elsewhere. The page holds no
service key:

- **With an identity provider** (``REFRACTURE_OIDC_ISSUER`` and ``REFRACTURE_OIDC_UI_CLIENT_ID``)
  the clinician signs in there (authorization code with PKCE, the page a public client);
  ``auth.json`` tells the page where (from the provider's discovery document), and the page's
  CSP lets its script reach that provider's token endpoint and nothing else.
- **Without one** (the embedded default) the page asks for an API key, for local use.
"""

from __future__ import annotations

import threading
from functools import lru_cache
from pathlib import Path
from urllib.parse import urlsplit

from starlette.applications import Starlette
from starlette.responses import FileResponse, JSONResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from serving.auth.jwks import JwksError, ProviderMetadata, discover
from serving.config import get_settings
from serving.http.headers import PAGE_HEADERS, page_headers
from serving.scoring.examples import example_patients
from serving.ui.form import form_schema

STATIC = Path(__file__).parent / "static"
# One policy for every page of the service (serving.http.headers); static files get nosniff
# from the guard, which applies it to every answer.
SECURITY_HEADERS = PAGE_HEADERS


@lru_cache(maxsize=1)
def _examples() -> list[dict]:
    return example_patients()


class SignInConfig:
    """What the page needs to sign in, from the settings and the provider's discovery
    document (fetched at first use and kept; retried while it fails)."""

    def __init__(self) -> None:
        self._meta: ProviderMetadata | None = None
        self._lock = threading.Lock()

    def _metadata(self) -> ProviderMetadata:
        with self._lock:
            if self._meta is None:
                self._meta = discover(get_settings().oidc.issuer)
            return self._meta

    def enabled(self) -> bool:
        oidc = get_settings().oidc
        return oidc is not None and oidc.ui_client_id is not None

    def body(self) -> tuple[int, dict]:
        if not self.enabled():
            return 200, {"mode": "api-key"}
        oidc = get_settings().oidc
        try:
            meta = self._metadata()
        except JwksError as exc:
            return 503, {"mode": "oidc", "error": f"the identity provider cannot be reached: {exc}"}
        return 200, {"mode": "oidc", "issuer": oidc.issuer, "client_id": oidc.ui_client_id, "scope": oidc.ui_scope,
                     "resource": oidc.audience, "authorization_endpoint": meta.authorization_endpoint,
                     "token_endpoint": meta.token_endpoint, "end_session_endpoint": meta.end_session_endpoint}

    def connect_origins(self) -> tuple[str, ...]:
        """The provider's token endpoint's origin, when the page signs in (for its CSP)."""
        if not self.enabled():
            return ()
        try:
            endpoint = self._metadata().token_endpoint
        except JwksError:
            return ()
        parts = urlsplit(endpoint or "")
        return (f"{parts.scheme}://{parts.netloc}",) if parts.scheme in ("https", "http") and parts.netloc else ()


def build_ui_app() -> Starlette:
    """The ASGI app behind /ui: the page, its sign-in settings, its form description,
    example patients, static assets."""
    sign_in = SignInConfig()

    # Plain functions: Starlette runs them in its thread pool, so a discovery request never
    # holds the event loop.
    def index(request):
        return FileResponse(STATIC / "index.html", headers=page_headers(sign_in.connect_origins()))

    def auth(request):
        status, body = sign_in.body()
        return JSONResponse(body, status_code=status, headers=SECURITY_HEADERS)

    async def form(request):
        return JSONResponse(form_schema(), headers=SECURITY_HEADERS)

    async def examples(request):
        return JSONResponse(_examples(), headers=SECURITY_HEADERS)

    return Starlette(routes=[
        Route("/", index),
        Route("/auth.json", auth),
        Route("/form.json", form),
        Route("/examples.json", examples),
        Mount("/static", app=StaticFiles(directory=STATIC), name="static"),
    ])
