"""Run the real Procrastinate worker in a test, as `manage.py procrastinate worker` would."""

from __future__ import annotations

import asyncio

from procrastinate.contrib.django import app
from procrastinate.contrib.django.django_connector import DjangoConnector


def run_worker_until_empty(queue: str) -> None:
    """Process ``queue`` until it is empty, on the worker's own psycopg connection (the Django
    connector only defers), and close that connection before returning."""

    async def work() -> None:
        async with worker_app.open_async():
            await worker_app.run_worker_async(
                queues=[queue], wait=False, install_signal_handlers=False, listen_notify=False
            )

    connector = app.connector
    assert isinstance(connector, DjangoConnector)
    with app.replace_connector(connector.get_worker_connector()) as worker_app:
        asyncio.run(work())
