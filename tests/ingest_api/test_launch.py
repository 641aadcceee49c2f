"""The `redflag-server` program imports its command line with the collector paused."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path


def test_the_installed_program_is_the_launcher_and_runs_a_command(empty_db_url: str) -> None:
    (script,) = entry_points(group="console_scripts", name="redflag-server")
    assert script.value == "ingest_api.launch:main"

    program = Path(sys.executable).with_name("redflag-server")
    result = subprocess.run(
        [str(program), "--database-url", empty_db_url, "db", "upgrade"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "upgraded from empty to revision" in result.stdout


def test_import_paused_leaves_the_collector_on_and_the_imported_objects_frozen() -> None:
    # A fresh interpreter: this one has imported everything already.
    code = (
        "import gc, json\n"
        "from ingest_api.launch import import_paused\n"
        "before = gc.get_freeze_count()\n"
        "module = import_paused('models.export')\n"
        "print(json.dumps({'name': module.__name__, 'enabled': gc.isenabled(),\n"
        "                  'frozen': gc.get_freeze_count() - before}))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    seen = json.loads(result.stdout)
    assert seen["name"] == "models.export"
    assert seen["enabled"] is True
    # SQLAlchemy, pandas and pyarrow alone leave hundreds of thousands of objects.
    assert seen["frozen"] > 100_000
