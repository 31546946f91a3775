"""Workspace errors; the API's exception handler maps each to its status and JSON shape."""

from __future__ import annotations

from core.errors import Busy, Conflict, InvalidInput, NotFound, PayloadTooLarge


class InvalidPath(InvalidInput):
    code = "invalid_path"
    default_message = "The path is not a valid workspace path."


class DocumentNotFound(NotFound):
    code = "document_not_found"
    default_message = "No document at this path."

    @classmethod
    def for_path(cls, path: str) -> DocumentNotFound:
        return cls(f"No document at {path!r}.", details={"path": path})


class VersionNotFound(NotFound):
    code = "version_not_found"
    default_message = "The document has no such version."

    @classmethod
    def for_version(cls, path: str, *, version: int) -> VersionNotFound:
        return cls(f"{path!r} has no version {version}.", details={"version": version})


class PatchFailed(InvalidInput):
    code = "patch_failed"
    default_message = "The patch could not be applied."


class DocumentTooLarge(PayloadTooLarge):
    code = "document_too_large"
    default_message = "The document is larger than the workspace allows."


class InvalidContent(InvalidInput):
    code = "invalid_content"
    default_message = "The content cannot be stored."


class DocumentBusy(Busy):
    code = "document_busy"
    default_message = "The document is being changed by another request; retry shortly."


class WriteFenced(Conflict):
    """A fenced write whose fence found no row: the writer lost the right to write (say, the
    lease of the thread whose state it checkpoints)."""

    code = "write_fenced"
    default_message = "The write was refused: its writer no longer holds what it writes under."
