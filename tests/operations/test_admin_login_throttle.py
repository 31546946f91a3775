"""The admin login refuses a (username, address) pair after repeated wrong passwords."""

from __future__ import annotations

from datetime import timedelta

import pytest
from axes.models import AccessAttempt
from django.conf import settings
from django.contrib.auth.models import User
from django.test import Client, override_settings

pytestmark = pytest.mark.django_db

LOGIN = "/admin/login/"
PASSWORD = "correct horse battery staple"


@pytest.fixture
def operator() -> User:
    return User.objects.create_superuser("operator", "op@example.com", PASSWORD)


def _log_in(password: str, *, username: str = "operator", address: str = "203.0.113.7") -> int:
    """Post the real admin login form from ``address``; the status code of the answer."""
    client = Client(REMOTE_ADDR=address)
    response = client.post(LOGIN, {"username": username, "password": password, "next": "/admin/"})
    if response.status_code == 302:
        assert client.get("/admin/").status_code == 200  # the session really is signed in
    return response.status_code


def test_wrong_passwords_lock_the_admin_login_out_even_for_the_right_password(
    operator: User,
) -> None:
    assert settings.ADMIN_LOGIN_FAILURE_LIMIT == 5
    failures = [_log_in("wrong") for _ in range(4)]

    fifth = _log_in("wrong")
    right_password = _log_in(PASSWORD)

    assert failures == [200] * 4  # the form again, with its error
    assert fifth == 429
    assert right_password == 429


@override_settings(AXES_FAILURE_LIMIT=3)
def test_a_lockout_holds_only_for_the_username_and_address_that_failed(operator: User) -> None:
    for _ in range(3):
        _log_in("wrong", address="203.0.113.7")

    from_elsewhere = _log_in(PASSWORD, address="198.51.100.1")
    other_user_here = _log_in("wrong", username="someone", address="203.0.113.7")

    assert from_elsewhere == 302
    assert other_user_here == 200


@override_settings(AXES_FAILURE_LIMIT=3)
def test_a_successful_login_clears_the_failures(operator: User) -> None:
    _log_in("wrong")
    _log_in("wrong")
    assert _log_in(PASSWORD) == 302

    after = [_log_in("wrong"), _log_in("wrong")]

    assert after == [200, 200]


def test_the_lockout_ends_after_the_cool_off(operator: User) -> None:
    for _ in range(5):
        _log_in("wrong")
    assert _log_in(PASSWORD) == 429
    # The cool-off runs from the last failure: move it back past ADMIN_LOGIN_COOLOFF_MINUTES.
    for attempt in AccessAttempt.objects.all():
        attempt.attempt_time -= settings.AXES_COOLOFF_TIME + timedelta(seconds=1)
        attempt.save()

    assert _log_in(PASSWORD) == 302
