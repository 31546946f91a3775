"""The error shape every API answers with, as an OpenAPI component."""

from __future__ import annotations

from rest_framework import serializers


class ErrorSerializer(serializers.Serializer):
    class ErrorBodySerializer(serializers.Serializer):
        code = serializers.CharField()
        message = serializers.CharField()
        details = serializers.DictField()

    error = ErrorBodySerializer()
