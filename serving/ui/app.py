"""The review page as a small Starlette app; the service mounts it at ``/ui``.

Everything the page needs is served from here (no CDN, no external fonts or scripts),
and the Content-Security-Policy forbids loading anything from elsewhere. The page holds no
API key: the clinician (or the hospital's login proxy, see docs/clinician-page.md)
supplies it, and the page's script sends it as a Bearer header to /predict and /explain.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from starlette.applications import Starlette
from starlette.responses import FileResponse, JSONResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from serving.http.headers import PAGE_HEADERS
from serving.scoring.examples import example_patients
from serving.ui.form import form_schema

STATIC = Path(__file__).parent / "static"
# One policy for every page of the service (serving.http.headers); static files get nosniff
# from the guard, which applies it to every answer.
SECURITY_HEADERS = PAGE_HEADERS


@lru_cache(maxsize=1)
def _examples() -> list[dict]:
    return example_patients()


async def index(request):
    return FileResponse(STATIC / "index.html", headers=SECURITY_HEADERS)


async def form(request):
    return JSONResponse(form_schema(), headers=SECURITY_HEADERS)


async def examples(request):
    return JSONResponse(_examples(), headers=SECURITY_HEADERS)


def build_ui_app() -> Starlette:
    """The ASGI app behind /ui: the page, its form description, example patients, static assets."""
    return Starlette(routes=[
        Route("/", index),
        Route("/form.json", form),
        Route("/examples.json", examples),
        Mount("/static", app=StaticFiles(directory=STATIC), name="static"),
    ])
