from django.db import migrations

# Django emulates ON DELETE CASCADE in Python; here the database does it, so deleting a document
# with one statement (the runtime budget) removes its chunks and versions too, including rows an
# indexer committed while the delete waited for the document's row lock.
CASCADE_SQL = """
DO $$
DECLARE
    fk record;
BEGIN
    FOR fk IN
        SELECT conrelid::regclass AS tbl, conname
        FROM pg_constraint
        WHERE contype = 'f'
          AND confrelid = 'workspace_document'::regclass
          AND conrelid IN ('workspace_chunk'::regclass, 'workspace_documentversion'::regclass)
    LOOP
        EXECUTE format('ALTER TABLE %s DROP CONSTRAINT %I', fk.tbl, fk.conname);
    END LOOP;
END $$;
ALTER TABLE workspace_chunk ADD CONSTRAINT workspace_chunk_document_fk
    FOREIGN KEY (document_id) REFERENCES workspace_document (id) ON DELETE CASCADE;
ALTER TABLE workspace_documentversion ADD CONSTRAINT workspace_version_document_fk
    FOREIGN KEY (document_id) REFERENCES workspace_document (id) ON DELETE CASCADE;
"""

RESTRICT_SQL = """
ALTER TABLE workspace_chunk DROP CONSTRAINT workspace_chunk_document_fk;
ALTER TABLE workspace_documentversion DROP CONSTRAINT workspace_version_document_fk;
ALTER TABLE workspace_chunk ADD CONSTRAINT workspace_chunk_document_fk
    FOREIGN KEY (document_id) REFERENCES workspace_document (id) DEFERRABLE INITIALLY DEFERRED;
ALTER TABLE workspace_documentversion ADD CONSTRAINT workspace_version_document_fk
    FOREIGN KEY (document_id) REFERENCES workspace_document (id) DEFERRABLE INITIALLY DEFERRED;
"""


class Migration(migrations.Migration):
    dependencies = [("workspace", "0001_initial")]

    operations = [migrations.RunSQL(CASCADE_SQL, reverse_sql=RESTRICT_SQL)]
