"""Representations shared by several workspace endpoints."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema_serializer
from rest_framework import serializers


@extend_schema_serializer(component_name="WorkspaceDocument")
class DocumentSerializer(serializers.Serializer):
    path = serializers.CharField()
    content = serializers.CharField()
    content_hash = serializers.CharField()
    metadata = serializers.DictField()
    is_runtime = serializers.BooleanField()
    index_state = serializers.CharField()
    size = serializers.IntegerField()
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()


@extend_schema_serializer(component_name="WorkspaceVersion")
class VersionSerializer(serializers.Serializer):
    version = serializers.IntegerField()
    content_hash = serializers.CharField()
    changed_by = serializers.CharField()
    created_at = serializers.DateTimeField()
