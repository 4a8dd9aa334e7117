"""The API docs page at ``/``: Swagger UI on ``/docs.json``, every asset from this origin.

BentoML's own index page loads Google Tag Manager, a third-party script running on the
origin of the API and of the clinician page (which keeps the key in ``sessionStorage``).
This page replaces it: the HTML and its initialiser are ours (``docs_static/``), the
Swagger UI bundle is the copy BentoML ships, served from here, and the page's
Content-Security-Policy (``serving.http.headers.PAGE_CSP``) lets the browser load nothing from
anywhere else. ``/docs``, the address older notes gave, redirects here.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from starlette.applications import Starlette
from starlette.responses import FileResponse, RedirectResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from serving.http.headers import PAGE_HEADERS

STATIC = Path(__file__).parent / "docs_static"
#: The Swagger UI files BentoML ships (swagger-ui-bundle.js, ...), found by package.
SWAGGER_PACKAGE = ("bentoml._internal.server", "static_content")
#: Swagger UI adds one fixed inline style element; allowing exactly that one, by its
#: hash, keeps ``style-src`` closed to any other (a new bundle with another style shows
#: as a CSP violation in the browser test).
SWAGGER_STYLE_HASH = "'sha256-RL3ie0nH+Lzz2YNqQN83mnU0J1ot4QL7b99vMdIX99w='"
DOCS_HEADERS = {**PAGE_HEADERS,
                "Content-Security-Policy": PAGE_HEADERS["Content-Security-Policy"].replace(
                    "style-src 'self'", f"style-src 'self' {SWAGGER_STYLE_HASH}")}
PATHS = frozenset({"/", "/docs"})
PREFIX = "/docs-static/"


def handles(path: str) -> bool:
    return path in PATHS or path.startswith(PREFIX)


async def _index(request):
    return FileResponse(STATIC / "index.html", headers=DOCS_HEADERS)


async def _docs(request):
    return RedirectResponse("./", status_code=308)  # relative: also right behind a path prefix


@lru_cache(maxsize=1)
def docs_app() -> Starlette:
    """The ASGI app behind ``/``, ``/docs`` and ``/docs-static/*`` (built on first use)."""
    return Starlette(routes=[
        Route("/", _index),
        Route("/docs", _docs),
        Mount("/docs-static", app=StaticFiles(directory=STATIC, packages=[SWAGGER_PACKAGE]), name="docs-static"),
    ])
