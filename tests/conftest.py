"""Shared fixtures: stores on every backend, and isolated database URLs for other suites.

PostgreSQL tests each get a fresh schema (dropped afterwards), so they never see each other's rows
and can run against a database that is also used for other things. Without a reachable PostgreSQL
they are skipped with the reason, except in CI (``CI=true``), where that is a failure.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from lumbung.store.memory import MemoryStore
from lumbung.store.protocol import Store
from lumbung.store.sql import SqlStore

DEFAULT_POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def _postgres_base_url() -> str:
    return os.environ.get("LUMBUNG_TEST_POSTGRES_URL", DEFAULT_POSTGRES_URL)


@pytest.fixture(scope="session")
def _postgres_admin() -> Iterator[sa.Engine]:
    """One engine to create and drop test schemas; skips (or fails in CI) if unreachable."""
    url = _postgres_base_url()
    engine = sa.create_engine(url, poolclass=NullPool, connect_args={"connect_timeout": 5})
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except sa.exc.OperationalError as exc:
        engine.dispose()
        reason = f"PostgreSQL unreachable at {url} (set LUMBUNG_TEST_POSTGRES_URL): {exc}"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    yield engine
    engine.dispose()


@pytest.fixture
def postgres_url(_postgres_admin: sa.Engine) -> Iterator[str]:
    """A URL whose connections see only a fresh, empty schema of their own."""
    schema = f"lumbung_test_{secrets.token_hex(6)}"
    with _postgres_admin.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    url = make_url(_postgres_base_url()).update_query_dict({"options": f"-csearch_path={schema}"})
    yield url.render_as_string(hide_password=False)
    with _postgres_admin.begin() as conn:
        conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/hub.sqlite3"


@pytest.fixture(
    params=["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)],
)
def store(request: Any) -> Iterator[Store]:
    """The same behaviour tests run against every Store implementation."""
    opened: Store
    if request.param == "memory":
        opened = MemoryStore()
    elif request.param == "sqlite":
        opened = SqlStore.open(request.getfixturevalue("sqlite_url"))
    else:
        opened = SqlStore.open(request.getfixturevalue("postgres_url"))
    yield opened
    opened.close()


@pytest.fixture(scope="session")
def sandbox_runner(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The bubblewrap runner nodes use; skips (or fails in CI) where bubblewrap cannot run."""
    from lumbung.node.bwrap import SandboxPolicy, find_bwrap

    runner, why_not = find_bwrap(SandboxPolicy(slots=4), tmp_path_factory.mktemp("probe-node"))
    if runner is None:
        reason = f"no bubblewrap sandbox on this machine ({why_not}); make test installs it"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return runner
