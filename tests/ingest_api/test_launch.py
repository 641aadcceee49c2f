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


def _fresh(code: str) -> dict[str, object]:
    # A fresh interpreter: this one has imported everything already.
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    seen: dict[str, object] = json.loads(result.stdout)
    return seen


def test_imports_in_a_paused_block_leave_the_collector_on_and_their_objects_frozen() -> None:
    seen = _fresh(
        "import gc, json\n"
        "from ingest_api.launch import collector_paused\n"
        "before = gc.get_freeze_count()\n"
        "with collector_paused():\n"
        "    paused = not gc.isenabled()\n"
        "    import models.export\n"
        "print(json.dumps({'paused': paused, 'enabled': gc.isenabled(),\n"
        "                  'frozen': gc.get_freeze_count() - before}))\n"
    )
    assert seen["paused"] is True
    assert seen["enabled"] is True
    # SQLAlchemy, pandas and pyarrow alone leave hundreds of thousands of objects.
    assert isinstance(seen["frozen"], int)
    assert seen["frozen"] > 100_000


def test_a_collector_the_caller_paused_stays_paused() -> None:
    seen = _fresh(
        "import gc, json\n"
        "from ingest_api.launch import collector_paused\n"
        "gc.disable()\n"
        "with collector_paused():\n"
        "    pass\n"
        "print(json.dumps({'enabled': gc.isenabled()}))\n"
    )
    assert seen["enabled"] is False


def test_the_server_and_admin_commands_load_no_pandas_or_pyarrow() -> None:
    # The export imports them when it runs; `serve` and the rest never need them.
    seen = _fresh(
        "import json, sys\n"
        "import ingest_api.cli, ingest_api.app\n"
        "print(json.dumps({'loaded': [m for m in ('pandas', 'pyarrow', 'numpy')\n"
        "                             if m in sys.modules]}))\n"
    )
    assert seen["loaded"] == []
