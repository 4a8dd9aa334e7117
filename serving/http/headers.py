"""Response headers every answer of the service gets, whichever app produced it.

The service is several ASGI apps (BentoML's routes, the model-info app, the clinician page
and its static files); setting these headers in each one is how some answers ended up
without them. ``secure_start`` is applied by ``serving.http.guard`` to every response start:

- ``X-Content-Type-Options: nosniff`` on everything, so a browser never runs a file as a
  type it was not served as.
- On HTML: a strict Content-Security-Policy (only this origin; no inline script, no
  framing by other sites), ``Referrer-Policy: no-referrer``. A page that sets its own
  CSP keeps it.
- Redirects are relative: an absolute ``Location`` (Starlette builds one from the
  ``Host`` header, which the client chooses) becomes a relative one, so
  ``Host: evil.example`` cannot send a user elsewhere.
"""

from __future__ import annotations

from urllib.parse import urlsplit


def page_csp(connect_origins: tuple[str, ...] = ()) -> str:
    """The policy of the service's HTML pages. ``connect_origins``: other origins the page's
    script may call (the identity provider's token endpoint, for the clinician page that
    signs in; nothing else). Sign-in and sign-out are top-level navigations, not fetches."""
    connect = " ".join(("'self'", *connect_origins))
    return ("default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
            f"connect-src {connect}; font-src 'self'; object-src 'none'; frame-ancestors 'self'; "
            "base-uri 'none'; form-action 'self'")


def page_headers(connect_origins: tuple[str, ...] = ()) -> dict[str, str]:
    return {
        "Content-Security-Policy": page_csp(connect_origins),
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-store",
    }


#: The policy of every HTML page served here (the clinician page, the API docs): this origin only.
PAGE_CSP = page_csp()
PAGE_HEADERS = page_headers()

_NOSNIFF = (b"x-content-type-options", b"nosniff")


def relative_location(location: str, request_path: str = "") -> str:
    """A redirect target that names no host, relative to the request where it can be.

    ``http://host:port/ui/?a=1`` -> ``/ui/?a=1``; and when the target only adds a slash
    to the request's path (``/ui`` -> ``/ui/``), the last segment plus a slash (``ui/``),
    which also resolves correctly behind a proxy that serves the service under a prefix.
    """
    parts = urlsplit(location)
    path = parts.path or "/"
    if request_path and path == request_path + "/":
        path = request_path.rsplit("/", 1)[-1] + "/"
    elif not parts.scheme and not parts.netloc:
        return location
    return f"{path}?{parts.query}" if parts.query else path


def secure_start(message: dict, request_path: str = "") -> dict:
    """An ``http.response.start`` message with the headers above added or fixed
    (``request_path``: the path of the request it answers, for relative redirects)."""
    headers: list[tuple[bytes, bytes]] = list(message.get("headers", []))
    names = {k.lower() for k, _ in headers}
    out = []
    for key, value in headers:
        if key.lower() == b"location":
            value = relative_location(value.decode("latin-1"), request_path).encode("latin-1")
        out.append((key, value))
    if b"x-content-type-options" not in names:
        out.append(_NOSNIFF)
    content_type = next((v for k, v in headers if k.lower() == b"content-type"), b"")
    if content_type.lower().startswith(b"text/html"):
        for name, value in PAGE_HEADERS.items():
            if name.lower().encode() not in names and name != "X-Content-Type-Options":
                out.append((name.lower().encode(), value.encode()))
    return {**message, "headers": out}
