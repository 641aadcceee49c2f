"""Schema management through Alembic, callable from the CLI, the API and tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Engine
from sqlmodel import SQLModel

from models.tables import ONLY_ON

MIGRATIONS_DIR = Path(__file__).with_name("migrations")


def _alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


def head_revision() -> str:
    """The newest schema revision this code knows."""
    head = ScriptDirectory.from_config(_alembic_config()).get_current_head()
    assert head is not None
    return head


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at, or None for an empty database."""
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def upgrade_database(engine: Engine) -> tuple[str | None, str]:
    """Create or upgrade the schema to the newest revision; a no-op when already there.

    Returns the revisions before and after.
    """
    before = current_revision(engine)
    config = _alembic_config()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
    return before, head_revision()


def include_object_for(dialect_name: str) -> Callable[..., bool]:
    """Alembic's `include_object` hook: leave out the objects this database does not have.

    Schema objects marked `info={ONLY_ON: "postgresql"}` (an index kind SQLite lacks), or
    `"sqlite"`, are compared on that database only.
    """

    def include_object(
        obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any
    ) -> bool:
        model = compare_to if reflected else obj
        info = getattr(model, "info", None) or {}
        only_on = info.get(ONLY_ON)
        return only_on is None or only_on == dialect_name

    return include_object


def schema_drift(engine: Engine) -> list[Any]:
    """Differences between the migrated database and the models (empty when in sync)."""
    with engine.connect() as connection:
        context = MigrationContext.configure(
            connection,
            opts={
                "compare_type": True,
                "compare_server_default": True,
                "include_object": include_object_for(connection.dialect.name),
            },
        )
        return list(compare_metadata(context, SQLModel.metadata))
