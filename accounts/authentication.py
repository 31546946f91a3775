"""``Authorization: Bearer <key>`` authentication and the tenant each request acts for."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication, get_authorization_header
from rest_framework.request import Request

from accounts.models import ApiKey
from accounts.services import api_key_mark_used, hash_api_key
from accounts.tenancy import user_id_problem
from core.db import FixedSelect
from core.log_context import tenant_set

USER_ID_HEADER = "X-User-Id"


# The principal of a service key without X-User-Id on a view that serves every tenant.
ANY_TENANT = ""


class MissingTenant(exceptions.APIException):
    status_code = 400
    default_code = "missing_user_id"
    default_detail = (
        f"A service key must name the tenant it acts for in the {USER_ID_HEADER} header."
    )


class InvalidTenant(exceptions.APIException):
    status_code = 400
    default_code = "invalid_user_id"


class TenantMismatch(exceptions.APIException):
    status_code = 403
    default_code = "tenant_mismatch"
    default_detail = (
        f"A tenant key acts only as its own user; drop the {USER_ID_HEADER} header or use a "
        "service key."
    )


@dataclass(frozen=True)
class ApiPrincipal:
    """The caller of an API request: which key, and which tenant it acts for."""

    user_id: str
    key_name: str
    is_service: bool
    api_key_id: int

    is_authenticated = True
    is_anonymous = False


# Every API request runs it: written once rather than built by the ORM each time.
_ACTIVE_KEY = FixedSelect(ApiKey, "key_hash = %s AND revoked_at IS NULL")


class BearerKeyAuthentication(BaseAuthentication):
    keyword = "Bearer"

    def authenticate(self, request: Request) -> tuple[ApiPrincipal, ApiKey] | None:
        header = get_authorization_header(request).split()
        if not header:
            return None
        if header[0].lower() != self.keyword.lower().encode():
            raise exceptions.AuthenticationFailed(
                "Unsupported authorization scheme; send 'Authorization: Bearer <key>'."
            )
        if len(header) != 2:
            raise exceptions.AuthenticationFailed(
                "Malformed authorization header; send 'Authorization: Bearer <key>'."
            )
        try:
            raw_key = header[1].decode("ascii")
        except UnicodeDecodeError:
            raise exceptions.AuthenticationFailed("Invalid API key.") from None

        api_key = _ACTIVE_KEY.first([hash_api_key(raw_key)])
        if api_key is None:
            raise exceptions.AuthenticationFailed("Invalid or revoked API key.")
        principal = ApiPrincipal(
            user_id=self._tenant_for(request, api_key),
            key_name=api_key.name,
            is_service=api_key.is_service,
            api_key_id=api_key.pk,
        )
        # The request's log lines (its access line included) name the tenant from here on.
        tenant_set(principal.user_id)
        api_key_mark_used(api_key=api_key)
        return principal, api_key

    def _tenant_for(self, request: Request, api_key: ApiKey) -> str:
        requested = user_id_from_header(request)
        if not api_key.is_service:
            if requested is not None and requested != api_key.user_id:
                raise TenantMismatch()
            return api_key.user_id
        if requested is None or requested == "":
            # A view serving every tenant at once (threads/next) takes a service key alone.
            view = (request.parser_context or {}).get("view")
            if getattr(view, "serves_any_tenant", False):
                return ANY_TENANT
            raise MissingTenant()
        problem = user_id_problem(requested)
        if problem:
            raise InvalidTenant(f"{USER_ID_HEADER} {problem}.")
        return requested

    def authenticate_header(self, request: Request) -> str:
        return f'{self.keyword} realm="api"'


def user_id_from_header(request: Request) -> str | None:
    """The X-User-Id header as the UTF-8 text the client sent, or None without one. Untrusted:
    only a service key may act for it (``request_user_id`` is the tenant authentication settled).

    WSGI hands header values over as Latin-1 text (one character per byte), so a UTF-8 ``josé``
    arrives as ``josÃ©``: taken as it is, it would name another tenant. The bytes are decoded as
    UTF-8 here, and anything that is not UTF-8 is refused rather than guessed at. The web server
    joins a repeated header into one value with ", ", so a comma (which no user id contains) is
    refused for either key, before a tenant key's comparison could call it another tenant.
    """
    raw = request.headers.get(USER_ID_HEADER)
    if raw is None:
        return None
    if "," in raw:
        raise InvalidTenant(
            f"{USER_ID_HEADER} must name one tenant: send the header once (a user id contains "
            "no comma)."
        )
    try:
        return raw.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        raise InvalidTenant(
            f"{USER_ID_HEADER} must be UTF-8 text; send the user id's UTF-8 bytes as they are."
        ) from None


def request_user_id(request: Any) -> str:
    """The tenant an authenticated API request acts for."""
    principal: ApiPrincipal = request.user
    if principal.user_id == ANY_TENANT:
        # Only views that declare serves_any_tenant get here, and they use request_tenant_or_any.
        raise MissingTenant()
    return principal.user_id


def request_tenant_or_any(request: Any) -> str | None:
    """The request's tenant, or None for a service key acting for every tenant."""
    principal: ApiPrincipal = request.user
    return None if principal.user_id == ANY_TENANT else principal.user_id


def request_changed_by(request: Any) -> str:
    """Who made a change, for version history: the tenant, or the service key acting for it."""
    principal: ApiPrincipal = request.user
    if principal.is_service:
        return f"service key {principal.key_name} (#{principal.api_key_id})"
    return principal.user_id
