"""CORS for browser-based CDS clients, on ``/cds-services`` only.

CDS Hooks 2.0 ("Cross-Origin Resource Sharing"): "CDS Services and browser-based CDS Clients
will require CORS support", referring to the OWASP HTML5 Security Cheat Sheet. Following it:
only the origins the operator lists (``REFRACTURE_CDS_CORS_ORIGINS``; ``*`` only if asked for),
no credentials mode (the JWT travels in the ``Authorization`` header, never in a cookie), only
the methods and headers the CDS Hooks calls use, and preflights cached ``MAX_AGE_S``.

This middleware sits *outside* the guard, so a preflight (``OPTIONS``, which a browser sends
without the ``Authorization`` header) is answered here without authentication, and every
answer, the guard's 401s included, carries the CORS headers a browser needs to show it.
Other paths are untouched.

It also serves discovery at ``/cds-services`` itself, the URL the specification names
("The Discovery endpoint SHALL always be available at {baseUrl}/cds-services"): the app is
mounted at that prefix and would otherwise answer a redirect to ``/cds-services/``, which a CDS
client's one-use token cannot follow.
"""

from __future__ import annotations

from typing import Any

from starlette.middleware.cors import CORSMiddleware

from serving.cds_hooks.settings import get_cds_settings

PREFIX = "/cds-services"
MAX_AGE_S = 600


class CdsCorsMiddleware:
    """ASGI middleware: Starlette's CORS handling for ``/cds-services`` paths, with the
    configured origins; nothing at all when none is configured."""

    def __init__(self, app: Any, origins: tuple[str, ...] | None = None):
        self.app = app
        origins = get_cds_settings().cors_origins if origins is None else origins
        self.cors = CORSMiddleware(app, allow_origins=list(origins), allow_methods=["GET", "POST", "OPTIONS"],
                                   allow_headers=["Authorization", "Content-Type"], allow_credentials=False,
                                   max_age=MAX_AGE_S) if origins else None

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not (path == PREFIX or path.startswith(PREFIX + "/")):
            await self.app(scope, receive, send)
            return
        if path == PREFIX:
            scope = {**scope, "path": PREFIX + "/", "raw_path": (PREFIX + "/").encode()}
        await (self.cors or self.app)(scope, receive, send)
