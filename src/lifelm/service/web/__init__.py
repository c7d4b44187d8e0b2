"""The web page of ``lifelm serve``: sign in, upload, launch, watch and look at results.

Server-rendered HTML (Jinja2 templates shipped in this package), a stylesheet and one small
hand-written script; every page is an ordinary URL under ``/web`` that survives a reload.
Every read and write goes through the service's own API (:mod:`lifelm.service.web.bridge`)
with the signed-in user's session token, so the web page can do exactly what that user's
token could, no more: viewers are refused writes (403) and other projects' users get the
API's 404. See ``docs/web.md``.
"""

from __future__ import annotations

from lifelm.service.web.routes import mount

__all__ = ["mount"]
