"""The console in a real browser: login, a deep link, a failed migration's details, XSS.

Drives Debian's /usr/bin/chromium through Playwright's own driver (never `playwright
install`) against a real `streamlit run` of console/app.py. Only what a browser alone can
show is checked here: the page as rendered, row selection in the grid, links followed,
and attack strings drawn as text rather than turned into elements. Screenshots of each
step go to the test's temporary directory.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from console.passwords import hash_password
from models.database import create_db_engine
from models.schema import upgrade_database
from tests.console.conftest import HTML_ATTACK, LINK_ATTACK, REPO, seed_hostile_host
from tests.factories import seed_fixture_fleet

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
PASSWORD = "correct horse battery staple"
TIMEOUT_MS = 30_000


def _browser_or_skip() -> Any:
    """Playwright's sync API; skips without Chromium outside CI, fails in CI."""
    reason = None
    if not CHROMIUM.exists():
        reason = f"{CHROMIUM} is not installed (apt-get install chromium)"
    else:
        try:
            from playwright import sync_api
        except ImportError:
            reason = "the playwright package is not installed (pip install -e '.[dev]')"
    if reason is None:
        return sync_api
    if os.environ.get("CI"):
        pytest.fail(f"the browser test must run in CI: {reason}")
    pytest.skip(reason)


@dataclass(frozen=True)
class Console:
    url: str
    ids: dict[str, Any]
    log: Path


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait_healthy(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the console exited early:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    pytest.fail(f"the console did not become healthy:\n{log.read_text()}")


@pytest.fixture(scope="module")
def console_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    """`streamlit run console/app.py` with password login on a seeded SQLite fleet."""
    _browser_or_skip()
    directory = tmp_path_factory.mktemp("browser")
    db_url = f"sqlite:///{directory}/redflag.db"
    engine = create_db_engine(db_url)
    upgrade_database(engine)
    now = datetime.now(UTC).replace(microsecond=0)
    ids = seed_fixture_fleet(engine, now=now)
    ids["hostile"], _ = seed_hostile_host(engine, now=now)
    engine.dispose()

    port = _free_port()
    log = directory / "console.log"
    environment = {
        **os.environ,
        "REDFLAG_DATABASE_URL": db_url,
        "REDFLAG_CONSOLE_AUTH": "password",
        "REDFLAG_CONSOLE_ADMIN_USER": "admin",
        "REDFLAG_CONSOLE_ADMIN_PASSWORD_HASH": hash_password(PASSWORD),
    }
    command = [
        sys.executable, "-m", "streamlit", "run", str(REPO / "console" / "app.py"),
        f"--server.port={port}", "--server.address=127.0.0.1", "--server.headless=true",
        "--browser.gatherUsageStats=false",
    ]  # fmt: skip
    with log.open("wb") as output:
        process = subprocess.Popen(
            command, cwd=REPO, env=environment, stdout=output, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, process, log)
        yield Console(url=url, ids=ids, log=log)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def browser(console_server: Console) -> Iterator[Any]:
    sync_api = _browser_or_skip()
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A fresh browser tab (a fresh Streamlit session); any JavaScript dialog fails the test."""
    context = browser.new_context(viewport={"width": 1440, "height": 1800}, accept_downloads=True)
    tab = context.new_page()
    tab.set_default_timeout(TIMEOUT_MS)
    dialogs: list[str] = []
    tab.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    yield tab
    context.close()
    assert dialogs == [], f"a script ran in the page: {dialogs}"


def _settled(page: Any) -> None:
    """Wait until the script run is over: no running indicator, no skeletons."""
    page.wait_for_selector("h1")
    deadline = time.monotonic() + TIMEOUT_MS / 1000
    while time.monotonic() < deadline:
        busy = page.locator("[data-testid='stStatusWidget'], [data-testid='stSkeleton']")
        if busy.count() == 0:
            break
        time.sleep(0.2)
    time.sleep(0.5)


def _shoot(page: Any, directory: Path, name: str) -> None:
    _settled(page)
    page.screenshot(path=str(directory / f"{name}.png"))


def _log_in(page: Any) -> None:
    page.get_by_label("User", exact=True).fill("admin")
    page.get_by_label("Password", exact=True).fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.get_by_text("Signed in as").wait_for()
    _settled(page)


def _grid_texts(page: Any, index: int = 0) -> list[str]:
    """The cells of a table (its accessible copy of the canvas), once it has drawn them."""
    grid = page.locator("[data-testid='stDataFrame']").nth(index)
    grid.locator("[role='gridcell']").first.wait_for(state="attached")
    return [cell.inner_text() for cell in grid.locator("[role='gridcell']").all()]


def _wait_for_query(page: Any, text: str) -> None:
    page.wait_for_function("text => location.search.includes(text)", arg=text)


def _select_row(page: Any, row: int) -> None:
    """Tick a row's selection box in the events table and wait for the event to open.

    The grid draws on a canvas: the box is in its first column, one 35 px row below the
    header per row. The selection lands in the URL (`event=`) once the app has run.
    """
    grid = page.locator("[data-testid='stDataFrame']").first
    grid.locator("[role='gridcell']").first.wait_for(state="attached")
    _settled(page)
    box = grid.bounding_box()
    page.mouse.click(box["x"] + 15, box["y"] + 35 + 35 * row + 17)
    _wait_for_query(page, "event=")
    _settled(page)


def _assert_no_fleet_data(page: Any, console_server: Console) -> None:
    body = page.inner_text("body")
    for hostname in console_server.ids:
        assert hostname not in body
    assert "Permission denied" not in body
    assert page.locator("[data-testid='stDataFrame'], [data-testid='stMetric']").count() == 0


def test_a_visitor_who_is_not_logged_in_sees_no_fleet_data(
    console_server: Console, page: Any, tmp_path: Path
) -> None:
    history = f"/agent_history?agent={console_server.ids['fail-exec-05']}"
    for path in ("/", history):
        page.goto(console_server.url + path)
        page.get_by_role("button", name="Log in").wait_for()
        _settled(page)
        assert "RedFlag fleet migration console" in page.inner_text("body")
        _assert_no_fleet_data(page, console_server)

    page.get_by_label("User", exact=True).fill("admin")
    page.get_by_label("Password", exact=True).fill("guessing")
    page.get_by_role("button", name="Log in").click()
    page.get_by_text("Wrong user or password.").wait_for()
    _assert_no_fleet_data(page, console_server)
    _shoot(page, tmp_path, "01-login-refused")


def test_an_admin_follows_a_deep_link_reads_a_failed_migration_and_sees_literal_text(
    console_server: Console, page: Any, tmp_path: Path
) -> None:
    # A link someone shared: it asks for the login first and shows no fleet data...
    page.goto(f"{console_server.url}/events_explorer?category=migration&statuses=failed")
    page.get_by_role("button", name="Log in").wait_for()
    _assert_no_fleet_data(page, console_server)
    _shoot(page, tmp_path, "02-login")

    # ...then exactly the view it names: failed migrations only, filters in the widgets.
    _log_in(page)
    assert "/events_explorer?" in page.evaluate("location.href")
    cells = _grid_texts(page)
    assert {"fail-exec-05", "fail-exec-06", "fail-detect-07", "mig-retry-02"} <= set(cells)
    assert "updates-only-09" not in cells  # its failures are update failures
    assert set(cells) >= {"◆ migration", "✖ failed"}
    _shoot(page, tmp_path, "03-explorer-deep-link")

    # The download holds the whole filtered set, made when the button is pressed.
    page.get_by_role("button", name="Download all matching").click()
    with page.expect_download() as download:
        page.get_by_role("button", name="Download 6 events as CSV").click()
    exported = Path(download.value.path()).read_bytes()
    assert exported.startswith(b"event_pk,event_id,agent_id,hostname,")
    assert exported.count(b"\r\n") == 1 + 6  # the header and every matching event
    page.keyboard.press("Escape")

    # Select the newest failed migration of a real host: its error and steps show.
    page.get_by_label("Host contains").fill("fail-exec")
    page.get_by_label("Host contains").press("Enter")
    _wait_for_query(page, "host=fail-exec")
    assert _grid_texts(page)[4] == "fail-exec-05"  # first row: time, kind, type, status, host
    _select_row(page, 0)
    page.locator("[data-testid='stCode']").filter(
        has_text="copy /var/lib/aggregator/last_scan.json: [Errno 13] Permission denied"
    ).wait_for()
    assert _grid_texts(page, 1)[:2] == ["copy_state", "failed"]  # the steps
    assert "fail-exec-05" in _grid_texts(page, 2)  # the event's fields
    assert page.get_by_role("link", name="This host's history").count() == 1
    _shoot(page, tmp_path, "04-failed-migration-details")

    # The hostile host's failure: every attack string is drawn as text.
    page.get_by_label("Host contains").fill("img")
    page.get_by_label("Host contains").press("Enter")
    _wait_for_query(page, "host=img")
    _select_row(page, 0)
    message = page.locator("[data-testid='stCode']").filter(has_text="onerror").first
    message.wait_for()
    text = message.inner_text()
    assert HTML_ATTACK in text
    assert LINK_ATTACK in text
    assert "**bold**" in text
    assert page.locator("img[src='x']").count() == 0
    assert page.locator("a[href^='javascript']").count() == 0
    assert page.locator("[data-testid='stMarkdown'] strong", has_text="bold").count() == 0
    _shoot(page, tmp_path, "05-hostile-event")

    # The overview, in the same session.
    page.get_by_role("link", name="Fleet overview").click()
    agents = page.locator("[data-testid='stMetric']").filter(
        has=page.get_by_text("Agents", exact=True)
    )
    assert agents.get_by_test_id("stMetricValue").inner_text() == "12"
    page.locator(".js-plotly-plot").nth(4).wait_for()
    assert page.locator("img[src='x']").count() == 0
    _shoot(page, tmp_path, "06-overview")
