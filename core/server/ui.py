"""`GET /ui`: the operator's dashboard, a static page (`assets/`) over the server's own JSON
routes. It holds no data and no key: the operator signs in with a key in the browser, and
every read or change is the API's, with that key's rights (the admin key: every tenant; a
tenant key: its own tenant only). Served with a policy that lets the page run only its own
script and talk only to this server."""

from __future__ import annotations

from importlib import resources

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .runtime import Endpoint

POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
          "img-src 'self' data:; form-action 'none'; base-uri 'none'; frame-ancestors 'none'")
"""The page's Content-Security-Policy: its own script and style from this server, requests
to this server only, never framed (no inline script, so injected markup could not run)."""
_HEADERS = {"Content-Security-Policy": POLICY, "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer", "Cache-Control": "no-cache"}


def _file(name: str, media: str) -> Endpoint:
    content = (resources.files(__package__) / "assets" / name).read_bytes()

    async def serve(request: Request) -> Response:
        return Response(content, media_type=media, headers=_HEADERS)

    return serve


def routes() -> list[Route]:
    """The page (at `/ui` and `/ui/`) and its script and style, each read once."""
    page = _file("ui.html", "text/html; charset=utf-8")
    return [Route("/ui", page, methods=["GET"]), Route("/ui/", page, methods=["GET"]),
            Route("/ui/ui.js", _file("ui.js", "text/javascript; charset=utf-8"),
                  methods=["GET"]),
            Route("/ui/ui.css", _file("ui.css", "text/css; charset=utf-8"), methods=["GET"])]
