"""Strict serializer fields shared by every API package.

DRF's own fields coerce: ``CharField`` turns ``5`` into "5" and ``BooleanField`` reads "yes" and
"false" as booleans. An API that stores what a client sent must refuse a value of the wrong JSON
type instead of guessing, with a 400 naming the field.
"""

from __future__ import annotations

from typing import Any

from rest_framework import serializers


class TextField(serializers.CharField):
    """A JSON string. DRF's CharField turns numbers and booleans into text, so ``"content": 5``
    would be stored as the message "5" and ``"worker_id": true`` would take a lease as "True"."""

    def to_internal_value(self, data: Any) -> str:
        if not isinstance(data, str):
            self.fail("invalid")
        return str(super().to_internal_value(data))


class StrictBooleanField(serializers.BooleanField):
    """A JSON ``true`` or ``false``; DRF's BooleanField also takes "yes", "0" and 1."""

    default_error_messages = {"invalid": "Must be a JSON boolean (true or false)."}

    def to_internal_value(self, data: Any) -> bool:
        if not isinstance(data, bool):
            self.fail("invalid")
        return data
