"""Webhooks, their deliveries and attempts; keys that start with the tenant (Citus); and the
database side of events: ``webhooks_event_emit`` and the triggers that call it."""

import uuid

import django.contrib.postgres.fields
import django.db.models.deletion
from django.db import migrations, models

# Keys that start with the tenant, so Citus can distribute every table by user_id. Django still
# sees `id` as the primary key (a UUID or identity, unique by itself); the deletes cascade here.
TENANT_KEYS_SQL = """
ALTER TABLE webhooks_webhook DROP CONSTRAINT webhooks_webhook_pkey,
    ADD CONSTRAINT webhooks_webhook_pkey PRIMARY KEY (user_id, id);
ALTER TABLE webhooks_webhookdelivery DROP CONSTRAINT webhooks_webhookdelivery_pkey,
    ADD CONSTRAINT webhooks_webhookdelivery_pkey PRIMARY KEY (user_id, id),
    ADD CONSTRAINT webhooks_delivery_webhook_fk FOREIGN KEY (user_id, webhook_id)
        REFERENCES webhooks_webhook (user_id, id) ON DELETE CASCADE;
ALTER TABLE webhooks_webhookattempt DROP CONSTRAINT webhooks_webhookattempt_pkey,
    ADD CONSTRAINT webhooks_webhookattempt_pkey PRIMARY KEY (user_id, id),
    ADD CONSTRAINT webhooks_attempt_delivery_fk FOREIGN KEY (user_id, delivery_id)
        REFERENCES webhooks_webhookdelivery (user_id, id) ON DELETE CASCADE;
"""
TENANT_KEYS_REVERSE_SQL = """
ALTER TABLE webhooks_webhookattempt DROP CONSTRAINT webhooks_attempt_delivery_fk,
    DROP CONSTRAINT webhooks_webhookattempt_pkey,
    ADD CONSTRAINT webhooks_webhookattempt_pkey PRIMARY KEY (id);
ALTER TABLE webhooks_webhookdelivery DROP CONSTRAINT webhooks_delivery_webhook_fk,
    DROP CONSTRAINT webhooks_webhookdelivery_pkey,
    ADD CONSTRAINT webhooks_webhookdelivery_pkey PRIMARY KEY (id);
ALTER TABLE webhooks_webhook DROP CONSTRAINT webhooks_webhook_pkey,
    ADD CONSTRAINT webhooks_webhook_pkey PRIMARY KEY (id);
"""

# webhooks_event_emit(tenant, type, data): one delivery per enabled webhook of the tenant that
# wants the event, each with its job ("webhooks.deliver", queue "webhooks"), in the caller's
# transaction. The job's lock keeps a delivery's attempts (retries, a redelivery) one at a time.
# With no webhook it is one probe of the primary key's (user_id, ...) prefix.
EVENT_SQL = """
CREATE FUNCTION webhooks_event_emit(_user_id text, _type text, _data jsonb) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    _delivery_id uuid;
    _count integer := 0;
BEGIN
    FOR _delivery_id IN
        INSERT INTO webhooks_webhookdelivery
            (id, user_id, webhook_id, event_type, payload, state, attempts, last_error, created_at)
        SELECT gen_random_uuid(), hook.user_id, hook.id, _type,
               jsonb_build_object(
                   'type', _type,
                   'timestamp', to_char(
                       statement_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'
                   ),
                   'data', _data
               ),
               'pending', 0, '', statement_timestamp()
        FROM webhooks_webhook hook
        WHERE hook.user_id = _user_id AND hook.enabled AND _type = ANY (hook.events)
        RETURNING id
    LOOP
        PERFORM procrastinate_defer_jobs_v1(ARRAY[ROW(
            'webhooks', 'webhooks.deliver', 0, 'webhook-delivery-' || _delivery_id, NULL,
            jsonb_build_object('delivery_id', _delivery_id), NULL
        )::procrastinate_job_to_defer_v1]);
        _count := _count + 1;
    END LOOP;
    RETURN _count;
END
$$;

-- thread.completed, thread.failed, thread.stopped: whichever code path ended the thread.
CREATE FUNCTION webhooks_thread_ended() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM webhooks_event_emit(NEW.user_id, 'thread.' || NEW.state, jsonb_build_object(
        'thread_id', NEW.id,
        'conversation_id', NEW.conversation_id,
        'kind', NEW.kind,
        'state', NEW.state,
        'outcome', NEW.outcome,
        'routine_id', NEW.metadata -> 'routine_id',
        'created_at', NEW.created_at,
        'finished_at', NEW.finished_at,
        'usage', jsonb_build_object(
            'steps', NEW.step_count,
            'tokens', NEW.tokens_used,
            'input_tokens', NEW.input_tokens,
            'output_tokens', NEW.output_tokens,
            'cost_usd', NEW.cost_usd,
            'model_time_ms', NEW.model_time_ms
        )
    ));
    RETURN NULL;
END
$$;
CREATE TRIGGER webhooks_thread_ended AFTER UPDATE ON conversations_thread
    FOR EACH ROW
    WHEN (NEW.state IN ('completed', 'failed', 'stopped') AND OLD.state IS DISTINCT FROM NEW.state)
    EXECUTE FUNCTION webhooks_thread_ended();

-- entry.created, for what agents write.
CREATE FUNCTION webhooks_agent_entry() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM webhooks_event_emit(NEW.user_id, 'entry.created', jsonb_build_object(
        'entry_id', NEW.id,
        'conversation_id', NEW.conversation_id,
        'thread_id', NEW.thread_id,
        'seq', NEW.seq,
        'sender', NEW.sender,
        'content', NEW.content,
        'created_at', NEW.created_at
    ));
    RETURN NULL;
END
$$;
CREATE TRIGGER webhooks_agent_entry AFTER INSERT ON conversations_conversationentry
    FOR EACH ROW WHEN (NEW.sender = 'agent')
    EXECUTE FUNCTION webhooks_agent_entry();
"""
EVENT_REVERSE_SQL = """
DROP TRIGGER webhooks_agent_entry ON conversations_conversationentry;
DROP FUNCTION webhooks_agent_entry();
DROP TRIGGER webhooks_thread_ended ON conversations_thread;
DROP FUNCTION webhooks_thread_ended();
DROP FUNCTION webhooks_event_emit(text, text, jsonb);
"""


class Migration(migrations.Migration):
    initial = True

    dependencies = [
        ("conversations", "0007_thread_finished_index"),
        # procrastinate_defer_jobs_v1 and its row type.
        ("procrastinate", "0041_post_retry_failed_job"),
    ]

    operations = [
        migrations.CreateModel(
            name="Webhook",
            fields=[
                (
                    "id",
                    models.UUIDField(
                        default=uuid.uuid4, editable=False, primary_key=True, serialize=False
                    ),
                ),
                ("user_id", models.CharField(max_length=255)),
                ("url", models.URLField(max_length=2048)),
                (
                    "events",
                    django.contrib.postgres.fields.ArrayField(
                        base_field=models.CharField(
                            choices=[
                                ("thread.completed", "Thread Completed"),
                                ("thread.failed", "Thread Failed"),
                                ("thread.stopped", "Thread Stopped"),
                                ("entry.created", "Entry Created"),
                                ("routine.fired", "Routine Fired"),
                            ],
                            max_length=32,
                        ),
                        size=None,
                    ),
                ),
                ("description", models.CharField(blank=True, default="", max_length=255)),
                ("secret", models.CharField(editable=False, max_length=100)),
                ("enabled", models.BooleanField(default=True)),
                ("disabled_reason", models.TextField(blank=True, default="")),
                ("consecutive_failures", models.PositiveIntegerField(default=0)),
                ("created_at", models.DateTimeField(auto_now_add=True)),
                ("updated_at", models.DateTimeField(auto_now=True)),
            ],
            options={
                "constraints": [
                    models.CheckConstraint(
                        condition=models.Q(
                            (
                                "events__contained_by",
                                [
                                    "thread.completed",
                                    "thread.failed",
                                    "thread.stopped",
                                    "entry.created",
                                    "routine.fired",
                                ],
                            ),
                            models.Q(("events", []), _negated=True),
                        ),
                        name="webhook_events_known",
                    )
                ],
            },
        ),
        migrations.CreateModel(
            name="WebhookDelivery",
            fields=[
                (
                    "id",
                    models.UUIDField(
                        default=uuid.uuid4, editable=False, primary_key=True, serialize=False
                    ),
                ),
                ("user_id", models.CharField(max_length=255)),
                (
                    "event_type",
                    models.CharField(
                        choices=[
                            ("thread.completed", "Thread Completed"),
                            ("thread.failed", "Thread Failed"),
                            ("thread.stopped", "Thread Stopped"),
                            ("entry.created", "Entry Created"),
                            ("routine.fired", "Routine Fired"),
                        ],
                        max_length=32,
                    ),
                ),
                ("payload", models.JSONField()),
                (
                    "state",
                    models.CharField(
                        choices=[
                            ("pending", "Pending"),
                            ("delivered", "Delivered"),
                            ("failed", "Failed"),
                        ],
                        default="pending",
                        max_length=16,
                    ),
                ),
                ("attempts", models.PositiveIntegerField(default=0)),
                ("last_status_code", models.PositiveIntegerField(blank=True, null=True)),
                ("last_error", models.TextField(blank=True, default="")),
                ("next_attempt_at", models.DateTimeField(blank=True, null=True)),
                ("created_at", models.DateTimeField()),
                ("delivered_at", models.DateTimeField(blank=True, null=True)),
                ("finished_at", models.DateTimeField(blank=True, null=True)),
                (
                    "webhook",
                    models.ForeignKey(
                        db_constraint=False,
                        on_delete=django.db.models.deletion.DO_NOTHING,
                        related_name="deliveries",
                        to="webhooks.webhook",
                    ),
                ),
            ],
            options={
                "verbose_name_plural": "webhook deliveries",
            },
        ),
        migrations.CreateModel(
            name="WebhookAttempt",
            fields=[
                ("id", models.BigAutoField(primary_key=True, serialize=False)),
                ("user_id", models.CharField(max_length=255)),
                ("number", models.PositiveIntegerField()),
                ("started_at", models.DateTimeField()),
                ("duration_ms", models.PositiveIntegerField(default=0)),
                (
                    "result",
                    models.CharField(
                        choices=[
                            ("success", "Success"),
                            ("http_error", "Http Error"),
                            ("timeout", "Timeout"),
                            ("connection_error", "Connection Error"),
                            ("refused", "Refused"),
                        ],
                        max_length=16,
                    ),
                ),
                ("status_code", models.PositiveIntegerField(blank=True, null=True)),
                ("error", models.TextField(blank=True, default="")),
                ("response_excerpt", models.TextField(blank=True, default="")),
                (
                    "delivery",
                    models.ForeignKey(
                        db_constraint=False,
                        on_delete=django.db.models.deletion.DO_NOTHING,
                        related_name="tries",
                        to="webhooks.webhookdelivery",
                    ),
                ),
            ],
        ),
        migrations.AddIndex(
            model_name="webhookdelivery",
            index=models.Index(
                fields=["user_id", "webhook", "-created_at"], name="delivery_webhook_newest_idx"
            ),
        ),
        migrations.AddIndex(
            model_name="webhookdelivery",
            index=models.Index(fields=["-created_at"], name="delivery_newest_idx"),
        ),
        migrations.AddConstraint(
            model_name="webhookdelivery",
            constraint=models.CheckConstraint(
                condition=models.Q(("state__in", ["pending", "delivered", "failed"])),
                name="delivery_state_valid",
            ),
        ),
        migrations.AddIndex(
            model_name="webhookattempt",
            index=models.Index(
                fields=["user_id", "delivery", "number"], name="attempt_delivery_idx"
            ),
        ),
        migrations.AddConstraint(
            model_name="webhookattempt",
            constraint=models.CheckConstraint(
                condition=models.Q(
                    (
                        "result__in",
                        ["success", "http_error", "timeout", "connection_error", "refused"],
                    )
                ),
                name="attempt_result_valid",
            ),
        ),
        migrations.RunSQL(TENANT_KEYS_SQL, TENANT_KEYS_REVERSE_SQL),
        migrations.RunSQL(EVENT_SQL, EVENT_REVERSE_SQL),
    ]
