"""The SQL of the triggers that record a thread's events and announce entries and events to the
streams (``conversations.streams``), kept apart from the models that install them.

A thread's events are numbered per thread (``seq`` = the thread's ``event_seq`` after the
change), under the thread's row lock: the numbers of one thread are gap-free and appear in commit
order, which is what lets a stream resume from a number. Notifications carry the row as JSON
when it fits in a NOTIFY payload (8,000 bytes), so a stream usually delivers without reading;
one that does not fit carries only the keys and ``"partial": true``, and the stream reads it.
"""

from __future__ import annotations

# NOTIFY refuses payloads of 8,000 bytes and more; the keys in front take under 80.
PAYLOAD_JSON_MAX_BYTES = 7800

# What a thread event says about its thread: its state and its usage so far.
_THREAD_STATE_JSON = """jsonb_build_object(
    'state', NEW.state, 'claim_count', NEW.claim_count, 'step_count', NEW.step_count,
    'input_tokens', NEW.input_tokens, 'output_tokens', NEW.output_tokens,
    'tokens_used', NEW.tokens_used, 'cost_usd', NEW.cost_usd,
    'model_time_ms', NEW.model_time_ms)"""

# A change of state or a new claim is an event; heartbeats and usage reports are not.
THREAD_EVENT_CONDITION = (
    "OLD.state IS DISTINCT FROM NEW.state OR OLD.claim_count IS DISTINCT FROM NEW.claim_count"
)

# BEFORE UPDATE: the event's number, in the row itself, so it is taken under the row's lock.
THREAD_EVENT_NUMBER = "NEW.event_seq := OLD.event_seq + 1; RETURN NEW;"

THREAD_EVENT_SPAWNED = f"""
INSERT INTO conversations_threadevent
    (user_id, thread_id, conversation_id, seq, kind, data, created_at)
VALUES (NEW.user_id, NEW.id, NEW.conversation_id, NEW.event_seq, 'spawned',
        {_THREAD_STATE_JSON}, clock_timestamp());
RETURN NULL;
"""

THREAD_EVENT_CHANGED = f"""
INSERT INTO conversations_threadevent
    (user_id, thread_id, conversation_id, seq, kind, data, created_at)
VALUES (NEW.user_id, NEW.id, NEW.conversation_id, NEW.event_seq,
        CASE WHEN OLD.claim_count IS DISTINCT FROM NEW.claim_count THEN 'claimed'
             WHEN NEW.state = 'running' THEN 'resumed'
             WHEN NEW.state = 'created' THEN 'requeued'
             ELSE NEW.state END,
        {_THREAD_STATE_JSON}
        || CASE WHEN NEW.state IN ('completed', 'failed', 'stopped')
                THEN jsonb_build_object('outcome', NEW.outcome) ELSE '{{}}'::jsonb END,
        clock_timestamp());
RETURN NULL;
"""

# The variables the notifying functions declare (pgtrigger's ``declare``).
NOTIFY_DECLARE = [("body", "text")]

# Set (to 'on', for its own transaction) by a turn worker's step checkpoint when nobody follows
# the tenant live (core.delta_watch): the event is recorded, and wakes nobody. A stream that
# opens meanwhile reads it: in its replay, in its read 2 s after it opens
# (conversations.stream_requests.LATE_READ_S), or on the gap at the thread's next event.
UNFOLLOWED_SETTING = "ironclaw.unfollowed"

# Payload: "<conversation id or -> <thread id> <json>".
THREAD_EVENT_NOTIFY = f"""
IF current_setting('{UNFOLLOWED_SETTING}', true) = 'on' THEN
    RETURN NULL;
END IF;
body := jsonb_build_object(
    'thread_id', NEW.thread_id, 'seq', NEW.seq, 'type', NEW.kind, 'data', NEW.data,
    'at', NEW.created_at)::text;
IF octet_length(body) > {PAYLOAD_JSON_MAX_BYTES} THEN
    body := jsonb_build_object(
        'thread_id', NEW.thread_id, 'seq', NEW.seq, 'type', NEW.kind, 'partial', true)::text;
END IF;
PERFORM pg_notify('ironclaw_events',
    coalesce(NEW.conversation_id::text, '-') || ' ' || NEW.thread_id::text || ' ' || body);
RETURN NULL;
"""

# Payload: "<conversation id> <json>". Long-polls wake on the key alone; streams deliver the JSON.
# starts_thread: this is the entry that started a thread (streams resume that thread's events
# after it).
ENTRY_NOTIFY = f"""
body := jsonb_build_object(
    'id', NEW.id, 'seq', NEW.seq, 'sender', NEW.sender, 'content', NEW.content,
    'thread_id', NEW.thread_id, 'created_at', NEW.created_at, 'delivered_at', NEW.delivered_at,
    'starts_thread', NEW.sender = 'system' AND NEW.thread_id IS NOT NULL AND EXISTS (
        SELECT 1 FROM conversations_thread WHERE id = NEW.thread_id AND start_seq = NEW.seq)
)::text;
IF octet_length(body) > {PAYLOAD_JSON_MAX_BYTES} THEN
    body := jsonb_build_object('seq', NEW.seq, 'partial', true)::text;
END IF;
PERFORM pg_notify('ironclaw_entries', NEW.conversation_id::text || ' ' || body);
RETURN NULL;
"""
