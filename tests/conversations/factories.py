from __future__ import annotations

import factory
from factory.django import DjangoModelFactory

from conversations.models import (
    ChannelUserIndex,
    Conversation,
    ConversationEntry,
    EntrySender,
    Thread,
    ThreadKind,
    ThreadState,
)


class ConversationFactory(DjangoModelFactory[Conversation]):
    class Meta:
        model = Conversation
        skip_postgeneration_save = True

    user_id = "alice"
    channel = factory.Sequence(lambda n: f"channel-{n}")

    @factory.post_generation
    def indexed(obj: Conversation, create: bool, extracted: bool | None, **kwargs: object) -> None:
        # By default the conversation is its (channel, user) pair's current one, as in production.
        if create and extracted is not False:
            ChannelUserIndex.objects.create(
                user_id=obj.user_id, channel=obj.channel, conversation=obj
            )


class ThreadFactory(DjangoModelFactory[Thread]):
    class Meta:
        model = Thread

    conversation = factory.SubFactory(ConversationFactory)
    user_id = factory.SelfAttribute("conversation.user_id")
    kind = ThreadKind.FOREGROUND
    state = ThreadState.CREATED
    goal = "do something"
    tracked = True


class EntryFactory(DjangoModelFactory[ConversationEntry]):
    class Meta:
        model = ConversationEntry

    conversation = factory.SubFactory(ConversationFactory)
    user_id = factory.SelfAttribute("conversation.user_id")
    seq = factory.Sequence(lambda n: n + 1)
    sender = EntrySender.USER
    content = factory.Sequence(lambda n: f"message {n}")
