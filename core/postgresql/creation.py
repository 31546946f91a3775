"""Test databases behind a transaction pooler."""

from __future__ import annotations

from django.db.backends.postgresql.creation import DatabaseCreation as PostgresDatabaseCreation


class DatabaseCreation(PostgresDatabaseCreation):
    def _destroy_test_db(self, test_database_name: str, verbosity: int) -> None:
        """Drop the test database; through a pooler, with the pooler's idle server connections to
        it, which the app cannot close (``WITH (FORCE)`` ends them; the pooler opens new ones)."""
        if "DIRECT" not in self.connection.settings_dict:
            super()._destroy_test_db(test_database_name, verbosity)  # type: ignore[misc]
            return
        name = self.connection.ops.quote_name(test_database_name)
        with self._nodb_cursor() as cursor:  # type: ignore[attr-defined]
            cursor.execute(f"DROP DATABASE {name} WITH (FORCE)")
