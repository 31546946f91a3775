"""Routines and their firings, with keys that start with the tenant (Citus)."""

import uuid

import django.db.models.deletion
from django.db import migrations, models

# Keys that start with the tenant, so Citus can distribute both tables by user_id. Django still
# sees `id` as the primary key (unique by itself); deleting a routine cascades here.
TENANT_KEYS_SQL = """
ALTER TABLE routines_routine DROP CONSTRAINT routines_routine_pkey,
    ADD CONSTRAINT routines_routine_pkey PRIMARY KEY (user_id, id);
ALTER TABLE routines_routinefiring DROP CONSTRAINT routines_routinefiring_pkey,
    ADD CONSTRAINT routines_routinefiring_pkey PRIMARY KEY (user_id, id),
    ADD CONSTRAINT routines_firing_routine_fk FOREIGN KEY (user_id, routine_id)
        REFERENCES routines_routine (user_id, id) ON DELETE CASCADE;
"""
TENANT_KEYS_REVERSE_SQL = """
ALTER TABLE routines_routinefiring DROP CONSTRAINT routines_firing_routine_fk,
    DROP CONSTRAINT routines_routinefiring_pkey,
    ADD CONSTRAINT routines_routinefiring_pkey PRIMARY KEY (id);
ALTER TABLE routines_routine DROP CONSTRAINT routines_routine_pkey,
    ADD CONSTRAINT routines_routine_pkey PRIMARY KEY (id);
"""


class Migration(migrations.Migration):
    initial = True

    dependencies = [
        # The scheduler emits routine.fired through webhooks_event_emit.
        ("webhooks", "0001_initial"),
    ]

    operations = [
        migrations.CreateModel(
            name="Routine",
            fields=[
                (
                    "id",
                    models.UUIDField(
                        default=uuid.uuid4, editable=False, primary_key=True, serialize=False
                    ),
                ),
                ("user_id", models.CharField(max_length=255)),
                ("name", models.CharField(max_length=100)),
                ("cron", models.CharField(max_length=255)),
                ("timezone", models.CharField(default="UTC", max_length=64)),
                ("channel", models.CharField(blank=True, default="", max_length=255)),
                ("scope", models.CharField(blank=True, default="", max_length=255)),
                ("message", models.TextField()),
                ("enabled", models.BooleanField(default=True)),
                ("next_fire_at", models.DateTimeField(blank=True, null=True)),
                ("last_fire_at", models.DateTimeField(blank=True, null=True)),
                ("created_at", models.DateTimeField(auto_now_add=True)),
                ("updated_at", models.DateTimeField(auto_now=True)),
            ],
            options={
                "indexes": [
                    models.Index(
                        condition=models.Q(("enabled", True)),
                        fields=["next_fire_at"],
                        name="routine_due_idx",
                    )
                ],
                "constraints": [
                    models.UniqueConstraint(fields=("user_id", "name"), name="routine_unique_name"),
                    models.CheckConstraint(
                        condition=models.Q(
                            ("enabled", False), ("next_fire_at__isnull", False), _connector="OR"
                        ),
                        name="routine_enabled_has_next_fire",
                    ),
                ],
            },
        ),
        migrations.CreateModel(
            name="RoutineFiring",
            fields=[
                ("id", models.BigAutoField(primary_key=True, serialize=False)),
                ("user_id", models.CharField(max_length=255)),
                ("slot", models.DateTimeField()),
                (
                    "state",
                    models.CharField(
                        choices=[
                            ("fired", "Fired"),
                            ("skipped", "Skipped"),
                            ("rejected", "Rejected"),
                        ],
                        max_length=16,
                    ),
                ),
                ("fired_at", models.DateTimeField()),
                ("action", models.CharField(blank=True, default="", max_length=16)),
                ("conversation_id", models.UUIDField(blank=True, null=True)),
                ("thread_id", models.UUIDField(blank=True, null=True)),
                ("detail", models.TextField(blank=True, default="")),
                (
                    "routine",
                    models.ForeignKey(
                        db_constraint=False,
                        on_delete=django.db.models.deletion.DO_NOTHING,
                        related_name="firings",
                        to="routines.routine",
                    ),
                ),
            ],
            options={
                "indexes": [models.Index(fields=["fired_at"], name="routine_firing_recent_idx")],
                "constraints": [
                    models.UniqueConstraint(
                        fields=("user_id", "routine", "slot"), name="routine_firing_once_per_slot"
                    ),
                    models.CheckConstraint(
                        condition=models.Q(("state__in", ["fired", "skipped", "rejected"])),
                        name="routine_firing_state_valid",
                    ),
                ],
            },
        ),
        migrations.RunSQL(TENANT_KEYS_SQL, TENANT_KEYS_REVERSE_SQL),
    ]
