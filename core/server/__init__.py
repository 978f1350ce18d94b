"""allotment over HTTP: the Cycles protocol v0 wire, with API keys bound to tenants.

    from allotment.server import create_app
    app = create_app(al.Guard(), admin_key="...")   # any ASGI server; `allotment serve`

Needs the `server` extra (`pip install 'allotment[server]'`).
"""

from __future__ import annotations

from .app import create_app

__all__ = ["create_app"]
