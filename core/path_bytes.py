"""The URL path's bytes, which Django's request no longer has.

Django decodes the path with each byte that is not UTF-8 escaped again and replaces PATH_INFO with
the result: ``a%FFb`` arrives as the text ``a%FFb``, which is also what ``a%25FFb`` means, so the
two URLs would name one document. Only the bytes the server decoded tell them apart, so they are
checked in the WSGI application, before Django sees the request; ``PathNotUtf8Middleware``
answers. Imports nothing from Django: the WSGI module wraps its application before setup.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

# Set in the WSGI environ of a request whose URL path is not UTF-8.
PATH_NOT_UTF8 = "ironclaw.path_not_utf8"
PATH_NOT_UTF8_PROBLEM = "must be UTF-8 text; percent-escape the path's UTF-8 bytes"

WsgiApplication = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def path_bytes_checked(application: WsgiApplication) -> WsgiApplication:
    """``application``, noting ``PATH_NOT_UTF8`` in the environ of each request whose URL path,
    decoded from its percent-escapes, is not UTF-8."""

    def checked(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        try:
            # PEP 3333: PATH_INFO carries the decoded bytes as Latin-1 text, one byte each.
            environ.get("PATH_INFO", "").encode("latin-1").decode("utf-8")
        except (UnicodeEncodeError, UnicodeDecodeError):
            environ[PATH_NOT_UTF8] = True
        return application(environ, start_response)

    return checked
