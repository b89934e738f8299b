"""The web console: static pages served by the API itself, talking to it with the caller's key.

Everything it needs ships in ``static/`` (no CDN, no build step), so it works air-gapped. The
pages and assets need no key; every API call they make sends one as a Bearer header.
"""

from ftaas_api.console.routes import router

__all__ = ["router"]
