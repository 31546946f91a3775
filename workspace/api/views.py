"""Workspace REST API: one view per operation; each validates, calls one service or selector,
and serialises. Every query is scoped to the request's tenant, so another tenant's path is a 404.
"""

from __future__ import annotations

from typing import Any, ClassVar

from django.conf import settings
from django.http import HttpRequest, HttpResponseBase
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    extend_schema_serializer,
    inline_serializer,
)
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.authentication import request_changed_by, request_user_id
from accounts.idempotency import idempotent
from core.api.fields import StrictBooleanField, TextField
from core.api.pagination import StrictLimitOffsetPagination
from core.api.schema import ErrorSerializer
from core.api.views import MethodRoutedView
from workspace import selectors, services
from workspace.api import examples
from workspace.api.serializers import DocumentSerializer, VersionSerializer
from workspace.errors import DocumentTooLarge
from workspace.search import MODES, workspace_search

PATH_PARAMETER = OpenApiParameter(
    "path",
    OpenApiTypes.STR,
    OpenApiParameter.PATH,
    description="Document path; may contain slashes (e.g. notes/2026/plan.md).",
)
VERSION_PARAMETER = OpenApiParameter("version", OpenApiTypes.INT, OpenApiParameter.PATH)
TAGS = ["workspace"]
ERROR_DESCRIPTIONS = {
    400: "Invalid path, body or parameter; `details` names the field.",
    404: "No such document (or version) in the caller's workspace.",
    405: "The version is not a number: the URL then names a document, which takes no POST.",
    409: "Another write held the document longer than WORKSPACE_LOCK_TIMEOUT_MS.",
    413: "The document (or request) is larger than WORKSPACE_MAX_DOCUMENT_BYTES allows.",
}


def _errors(*statuses: int) -> dict[int, OpenApiResponse]:
    return {
        status: OpenApiResponse(ErrorSerializer, description=ERROR_DESCRIPTIONS[status])
        for status in statuses
    }


def _content_field() -> TextField:
    # Content is stored byte for byte: no trimming, empty allowed.
    return TextField(trim_whitespace=False, allow_blank=True)


class WorkspaceView(APIView):
    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        # DRF reads JSON bodies straight from the stream, bypassing Django's
        # DATA_UPLOAD_MAX_MEMORY_SIZE check: refuse oversized bodies from Content-Length first.
        try:
            length = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        limit = settings.WORKSPACE_MAX_REQUEST_BYTES
        if length > limit:
            raise DocumentTooLarge(
                f"The request body is {length} bytes; the limit is {limit}.",
                details={"size": length, "limit": limit},
            )
        super().initial(request, *args, **kwargs)


class DocumentDetailView(WorkspaceView):
    @extend_schema(
        tags=TAGS,
        operation_id="workspace_document_read",
        examples=[examples.DOCUMENT_RESPONSE],
        summary="Read a document",
        parameters=[PATH_PARAMETER],
        responses={200: DocumentSerializer, **_errors(400, 404)},
    )
    def get(self, request: Request, path: str) -> Response:
        document = selectors.document_get(user_id=request_user_id(request), path=path)
        return Response(DocumentSerializer(document).data)


class DocumentWriteView(WorkspaceView):
    @extend_schema_serializer(component_name="WorkspaceDocumentWrite")
    class InputSerializer(serializers.Serializer):
        content = _content_field()
        metadata = serializers.DictField(required=False)

    @extend_schema(
        tags=TAGS,
        operation_id="workspace_document_write",
        examples=[examples.DOCUMENT_WRITE_REQUEST, examples.DOCUMENT_RESPONSE],
        summary="Create or replace a document",
        parameters=[PATH_PARAMETER],
        request=InputSerializer,
        responses={200: DocumentSerializer, **_errors(400, 409, 413)},
        description="Create or replace a document. Runtime paths cost one SQL statement; other "
        "paths version the old content and are indexed (in the background by default).",
    )
    def put(self, request: Request, path: str) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        user_id = request_user_id(request)
        document = services.document_write(
            user_id=user_id,
            path=path,
            content=data.validated_data["content"],
            metadata=data.validated_data.get("metadata"),
            changed_by=request_changed_by(request),
        )
        return Response(DocumentSerializer(document).data)


class DocumentDeleteView(WorkspaceView):
    @extend_schema(
        tags=TAGS,
        operation_id="workspace_document_delete",
        summary="Delete a document",
        parameters=[PATH_PARAMETER],
        responses={204: None, **_errors(400, 404)},
    )
    def delete(self, request: Request, path: str) -> Response:
        services.document_delete(user_id=request_user_id(request), path=path)
        return Response(status=204)


class DocumentView(MethodRoutedView, WorkspaceView):
    operations: ClassVar[dict[str, type[APIView]]] = {
        "get": DocumentDetailView,
        "put": DocumentWriteView,
        "delete": DocumentDeleteView,
    }
    get = DocumentDetailView.get
    put = DocumentWriteView.put
    delete = DocumentDeleteView.delete


class DocumentActionView(WorkspaceView):
    """A sub-resource of a document (``.../append``, ``.../versions``).

    A method the action does not serve is the document's own: ``GET documents/notes/append`` reads
    the document ``notes/append``. Only the action's methods on its exact suffix are ambiguous.
    """

    def dispatch(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        method = (request.method or "").lower()
        if method in DocumentView.operations and not hasattr(self, method):
            # The document path is the URL after documents/ as sent: rebuilding it from the
            # route's converted kwargs would turn versions/007 into versions/7.
            full_path = request.path_info.split("/documents/", 1)[1]
            return DocumentView.as_view()(request, path=full_path)
        return super().dispatch(request, *args, **kwargs)


class DocumentAppendView(DocumentActionView):
    @extend_schema_serializer(component_name="WorkspaceAppend")
    class InputSerializer(serializers.Serializer):
        content = _content_field()

    @extend_schema(
        tags=TAGS,
        operation_id="workspace_document_append",
        summary="Append to a document",
        parameters=[PATH_PARAMETER],
        request=InputSerializer,
        responses={200: DocumentSerializer, **_errors(400, 409, 413)},
        description="Append content on a new line, creating the document if needed.",
    )
    @idempotent
    def post(self, request: Request, path: str) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        user_id = request_user_id(request)
        document = services.document_append(
            user_id=user_id,
            path=path,
            content=data.validated_data["content"],
            changed_by=request_changed_by(request),
        )
        return Response(DocumentSerializer(document).data)


class DocumentPatchView(DocumentActionView):
    @extend_schema_serializer(component_name="WorkspacePatch")
    class InputSerializer(serializers.Serializer):
        old = TextField(trim_whitespace=False)
        new = _content_field()
        replace_all = StrictBooleanField(required=False, default=False)

    @extend_schema_serializer(component_name="WorkspacePatchResult")
    class OutputSerializer(DocumentSerializer):
        replacements = serializers.IntegerField()

        def to_representation(self, instance: services.PatchResult) -> dict[str, Any]:
            # One flat object: the patched document's fields beside the replacement count.
            document = DocumentSerializer(instance.document).data
            return {**document, "replacements": instance.replacements}

    @extend_schema(
        tags=TAGS,
        operation_id="workspace_document_patch",
        summary="Replace text in a document",
        parameters=[PATH_PARAMETER],
        request=InputSerializer,
        responses={200: OutputSerializer, **_errors(400, 404, 409, 413)},
        description="Replace the first occurrence of `old` (or all with `replace_all`).",
    )
    @idempotent
    def post(self, request: Request, path: str) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        user_id = request_user_id(request)
        result = services.document_patch(
            user_id=user_id,
            path=path,
            changed_by=request_changed_by(request),
            **data.validated_data,
        )
        return Response(self.OutputSerializer(result).data)


class DocumentVersionListView(DocumentActionView):
    # Also what the OpenAPI schema reads to document the paginated shape and its parameters.
    pagination_class = StrictLimitOffsetPagination

    @extend_schema(
        tags=TAGS,
        operation_id="workspace_document_versions",
        summary="List a document's versions",
        parameters=[PATH_PARAMETER],
        responses={200: VersionSerializer(many=True), **_errors(400, 404)},
        description="Versions of a document (the contents it had before each change), newest "
        "first.",
    )
    def get(self, request: Request, path: str) -> Response:
        versions = selectors.document_versions(user_id=request_user_id(request), path=path)
        paginator = self.pagination_class()
        page = paginator.paginate_queryset(versions, request, view=self)
        return paginator.get_paginated_response(VersionSerializer(page, many=True).data)


class DocumentVersionDetailView(DocumentActionView):
    @extend_schema_serializer(component_name="WorkspaceVersionDetail")
    class OutputSerializer(VersionSerializer):
        content = serializers.CharField()

    @extend_schema(
        tags=TAGS,
        operation_id="workspace_document_version",
        summary="Read one version of a document",
        parameters=[PATH_PARAMETER, VERSION_PARAMETER],
        responses={200: OutputSerializer, **_errors(400, 404)},
    )
    def get(self, request: Request, path: str, version: int) -> Response:
        found = selectors.document_version(
            user_id=request_user_id(request), path=path, version=version
        )
        return Response(self.OutputSerializer(found).data)


class DocumentRestoreView(DocumentActionView):
    @extend_schema(
        tags=TAGS,
        operation_id="workspace_document_restore",
        summary="Restore a version of a document",
        parameters=[PATH_PARAMETER, VERSION_PARAMETER],
        request=None,
        responses={200: DocumentSerializer, **_errors(400, 404, 405, 409, 413)},
        description="Write version n back as the current content (the current content becomes "
        "a new version).",
    )
    @idempotent
    def post(self, request: Request, path: str, version: int) -> Response:
        user_id = request_user_id(request)
        document = services.document_restore(
            user_id=user_id, path=path, version=version, changed_by=request_changed_by(request)
        )
        return Response(DocumentSerializer(document).data)


class FolderListView(WorkspaceView):
    pagination_class = StrictLimitOffsetPagination

    @extend_schema_serializer(component_name="WorkspaceListEntry")
    class OutputSerializer(serializers.Serializer):
        path = serializers.CharField()
        name = serializers.CharField()
        is_directory = serializers.BooleanField()
        updated_at = serializers.DateTimeField()
        content_preview = serializers.CharField(allow_null=True)

    @extend_schema(
        tags=TAGS,
        operation_id="workspace_list",
        summary="List a folder",
        parameters=[
            OpenApiParameter(
                "path",
                OpenApiTypes.STR,
                OpenApiParameter.QUERY,
                description="Folder; root if empty",
            )
        ],
        responses={200: OutputSerializer(many=True), **_errors(400)},
        description="Immediate children of a folder; folders are virtual (derived from paths).",
    )
    def get(self, request: Request) -> Response:
        entries = selectors.document_list(
            user_id=request_user_id(request), directory=request.query_params.get("path", "")
        )
        paginator = self.pagination_class()
        page: Any = paginator.paginate_queryset(entries, request, view=self)  # type: ignore[arg-type]
        return paginator.get_paginated_response(self.OutputSerializer(page, many=True).data)


class DocumentTreeView(WorkspaceView):
    pagination_class = StrictLimitOffsetPagination

    @extend_schema_serializer(component_name="WorkspaceTreeEntry")
    class OutputSerializer(serializers.Serializer):
        path = serializers.CharField()
        size = serializers.IntegerField(source="size_bytes")
        is_runtime = serializers.BooleanField()
        index_state = serializers.CharField()
        updated_at = serializers.DateTimeField()

    @extend_schema(
        tags=TAGS,
        operation_id="workspace_tree",
        summary="List every document under a folder",
        parameters=[
            OpenApiParameter(
                "path", OpenApiTypes.STR, OpenApiParameter.QUERY, description="Prefix; all if empty"
            )
        ],
        responses={200: OutputSerializer(many=True), **_errors(400)},
        description="Every document at or below a folder, in path order.",
    )
    def get(self, request: Request) -> Response:
        documents = selectors.document_tree(
            user_id=request_user_id(request), prefix=request.query_params.get("path", "")
        )
        paginator = self.pagination_class()
        page = paginator.paginate_queryset(documents, request, view=self)
        return paginator.get_paginated_response(self.OutputSerializer(page, many=True).data)


class WorkspaceSearchView(WorkspaceView):
    @extend_schema_serializer(component_name="WorkspaceSearchQuery")
    class InputSerializer(serializers.Serializer):
        query = TextField(max_length=10_000)
        limit = serializers.IntegerField(required=False, default=10, min_value=1)
        mode = serializers.ChoiceField(choices=MODES, required=False, default="hybrid")
        min_score = serializers.FloatField(
            required=False, default=0.0, min_value=0.0, max_value=1.0
        )

        def validate_limit(self, value: int) -> int:
            if value > settings.SEARCH_MAX_LIMIT:
                raise serializers.ValidationError(
                    f"Ensure this value is less than or equal to {settings.SEARCH_MAX_LIMIT}."
                )
            return value

    @extend_schema_serializer(component_name="WorkspaceSearchResponse")
    class OutputSerializer(serializers.Serializer):
        results = inline_serializer(
            "WorkspaceSearchResult",
            {
                "path": serializers.CharField(),
                "chunk_id": serializers.IntegerField(),
                "content": serializers.CharField(),
                "score": serializers.FloatField(),
                "fts_rank": serializers.IntegerField(allow_null=True),
                "vector_rank": serializers.IntegerField(allow_null=True),
            },
            many=True,
        )
        degraded = serializers.BooleanField()

    @extend_schema(
        tags=TAGS,
        operation_id="workspace_search",
        examples=[examples.SEARCH_REQUEST, examples.SEARCH_RESPONSE],
        summary="Search the workspace",
        request=InputSerializer,
        responses={200: OutputSerializer, **_errors(400)},
        description="Hybrid search (full text + vectors, reciprocal rank fusion). `degraded` is "
        "true when the query could not be embedded and full text answered alone.",
    )
    def post(self, request: Request) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        response = workspace_search(user_id=request_user_id(request), **data.validated_data)
        return Response(self.OutputSerializer(response).data)
