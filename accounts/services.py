from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from django.utils import timezone

from accounts.models import ApiKey
from accounts.tenancy import user_id_problem
from ironclaw_site.errors import InvalidInput, NotFound

KEY_PREFIX = "ick_"


def hash_api_key(raw_key: str) -> str:
    return hashlib.sha256(raw_key.encode()).hexdigest()


@dataclass(frozen=True)
class CreatedApiKey:
    api_key: ApiKey
    raw_key: str


def api_key_create(
    *, name: str, user_id: str | None = None, is_service: bool = False
) -> CreatedApiKey:
    """Create a key and return it with its only plain-text copy (the database keeps the hash)."""
    name = name.strip()
    if not name:
        raise InvalidInput("A key needs a name.", details={"name": ["must not be empty"]})
    if is_service:
        if user_id:
            raise InvalidInput(
                "A service key acts for any tenant named in X-User-Id; it takes no user_id.",
                details={"user_id": ["must be empty for a service key"]},
            )
        user_id = ""
    else:
        problem = user_id_problem(user_id or "")
        if problem:
            raise InvalidInput(f"user_id {problem}.", details={"user_id": [problem]})
    raw_key = KEY_PREFIX + secrets.token_urlsafe(32)
    api_key = ApiKey.objects.create(
        name=name,
        user_id=user_id or "",
        is_service=is_service,
        prefix=raw_key[: len(KEY_PREFIX) + 6],
        key_hash=hash_api_key(raw_key),
    )
    return CreatedApiKey(api_key=api_key, raw_key=raw_key)


def api_key_revoke(*, api_key_id: int) -> ApiKey:
    """Revoke a key: requests with it get 401 from then on. Revoking twice keeps the first time."""
    ApiKey.objects.filter(pk=api_key_id, revoked_at__isnull=True).update(revoked_at=timezone.now())
    try:
        return ApiKey.objects.get(pk=api_key_id)
    except ApiKey.DoesNotExist:
        raise NotFound(f"No API key with id {api_key_id}.") from None
