from django.db import migrations


class Migration(migrations.Migration):
    """pgvector, used by workspace chunk embeddings. Needs a role allowed to create extensions."""

    initial = True
    dependencies: list[tuple[str, str]] = []

    operations = [
        migrations.RunSQL(
            "CREATE EXTENSION IF NOT EXISTS vector",
            reverse_sql="DROP EXTENSION IF EXISTS vector",
        ),
    ]
