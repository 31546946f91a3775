from __future__ import annotations

import factory

from workspace.models import Chunk, Document, DocumentVersion, IndexState
from workspace.services import content_hash


class DocumentFactory(factory.django.DjangoModelFactory[Document]):
    class Meta:
        model = Document

    user_id = "alice"
    path = factory.Sequence(lambda n: f"notes/note-{n}.md")
    content = factory.Faker("paragraph")
    content_hash = factory.LazyAttribute(lambda document: content_hash(document.content))
    index_state = IndexState.PENDING


class DocumentVersionFactory(factory.django.DjangoModelFactory[DocumentVersion]):
    class Meta:
        model = DocumentVersion

    document = factory.SubFactory(DocumentFactory)
    user_id = factory.SelfAttribute("document.user_id")
    version = factory.Sequence(lambda n: n + 1)
    content = factory.Faker("sentence")
    content_hash = factory.LazyAttribute(lambda version: content_hash(version.content))


class ChunkFactory(factory.django.DjangoModelFactory[Chunk]):
    class Meta:
        model = Chunk

    document = factory.SubFactory(DocumentFactory)
    user_id = factory.SelfAttribute("document.user_id")
    chunk_index = factory.Sequence(lambda n: n)
    content = factory.Faker("sentence")
    source_hash = factory.SelfAttribute("document.content_hash")
