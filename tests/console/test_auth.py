"""The admin gate: no fleet data before login, built-in password login, OIDC, local no-login."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import pytest
from google.protobuf.json_format import MessageToDict
from streamlit import config
from streamlit.testing.v1 import AppTest

from console import links
from console.passwords import hash_password
from tests.console.conftest import APP, HTML_ATTACK, SeededFleet

PASSWORD = "correct horse battery staple"
PAGES = (None, links.EVENTS_PAGE, links.HISTORY_PAGE, links.GROUPS_PAGE)


def everything_sent(at: AppTest) -> str:
    """Every element the script produced, as JSON: what a browser would have received."""

    def walk(node: object) -> Iterator[object]:
        yield node
        for child in getattr(node, "children", {}).values():
            yield from walk(child)

    parts = []
    for node in walk(at._tree):
        proto = getattr(node, "proto", None)
        if proto is not None and hasattr(proto, "DESCRIPTOR"):
            parts.append(json.dumps(MessageToDict(proto)))
    return "\n".join(parts)


def assert_no_fleet_data(at: AppTest, fleet: SeededFleet) -> None:
    sent = everything_sent(at)
    for hostname in fleet.ids:
        assert hostname not in sent
    assert HTML_ATTACK not in sent
    assert "Permission denied" not in sent
    assert not at.metric
    assert not at.dataframe
    assert not at.get("plotly_chart")


@pytest.fixture
def password_console(
    fleet: SeededFleet, console_env: Callable[..., None]
) -> Callable[..., AppTest]:
    console_env(
        fleet.url,
        auth="password",
        admin_user="admin",
        admin_password_hash=hash_password(PASSWORD),
    )

    def open_page(page: str | None = None, **query: str) -> AppTest:
        at = AppTest.from_file(str(APP), default_timeout=60)
        for name, value in query.items():
            at.query_params[name] = value
        if page is not None:
            at.switch_page(page)
        return at.run()

    return open_page


def log_in(at: AppTest, user: str, password: str) -> AppTest:
    at.text_input(key="login_user").set_value(user)
    at.text_input(key="login_password").set_value(password)
    return at.button[0].click().run()


def test_a_visitor_who_is_not_logged_in_sees_no_fleet_data_on_any_page(
    password_console: Callable[..., AppTest], fleet: SeededFleet
) -> None:
    for page in PAGES:
        at = password_console(page, agent=str(fleet.ids["fail-exec-05"]), statuses="failed")

        assert not at.exception
        assert at.text_input(key="login_user").label == "User"
        assert_no_fleet_data(at, fleet)


def test_a_wrong_password_or_user_is_refused_and_shows_nothing(
    password_console: Callable[..., AppTest], fleet: SeededFleet
) -> None:
    at = log_in(password_console(), "admin", "not the password")

    assert at.error[0].value == "Wrong user or password."
    assert_no_fleet_data(at, fleet)
    at = log_in(password_console(), "root", PASSWORD)
    assert at.error[0].value == "Wrong user or password."
    assert_no_fleet_data(at, fleet)


def test_the_admin_logs_in_and_lands_on_the_deep_link_they_opened(
    password_console: Callable[..., AppTest], fleet: SeededFleet
) -> None:
    at = password_console(links.EVENTS_PAGE, statuses="failed", host="fail-exec")

    at = log_in(at, "admin", PASSWORD)

    assert not at.exception
    events = next(f.value for f in at.dataframe if (f.key or "").startswith("ex_table"))
    assert sorted(events["hostname"]) == ["fail-exec-05", "fail-exec-06"]
    assert "admin" in [text.value for text in at.sidebar.text]
    assert at.sidebar.button(key="logout").label == "Log out"

    at.sidebar.button(key="logout").click().run()
    assert_no_fleet_data(at, fleet)


def test_an_expired_login_asks_for_the_password_again(
    password_console: Callable[..., AppTest], fleet: SeededFleet
) -> None:
    at = AppTest.from_file(str(APP), default_timeout=60)
    at.session_state["redflag_admin"] = {
        "user": "admin",
        "expires_at": datetime.now(UTC) - timedelta(seconds=1),
    }
    at.run()

    assert at.text_input(key="login_user")
    assert_no_fleet_data(at, fleet)


def test_without_a_configured_password_nobody_gets_in(
    fleet: SeededFleet, console_env: Callable[..., None]
) -> None:
    console_env(fleet.url, auth="password", admin_password_hash="")

    at = AppTest.from_file(str(APP), default_timeout=60).run()

    assert "No admin password is configured" in at.error[0].value
    assert_no_fleet_data(at, fleet)


def test_oidc_visitors_sign_in_with_the_identity_provider(
    fleet: SeededFleet, console_env: Callable[..., None]
) -> None:
    console_env(fleet.url, auth="oidc")
    at = AppTest.from_file(str(APP), default_timeout=60)
    at.secrets["auth"] = {
        "redirect_uri": "http://127.0.0.1:8501/oauth2callback",
        "cookie_secret": "not a secret in a test",
        "client_id": "console",
        "client_secret": "also not a secret",
        "server_metadata_url": "https://login.example.org/.well-known/openid-configuration",
    }
    at.user = {"is_logged_in": False}
    at.run()
    assert at.button(key="oidc_login").label == "Log in"
    assert_no_fleet_data(at, fleet)

    at.user = {"is_logged_in": True, "email": "ada@example.com", "name": "Ada"}
    at.run()
    assert {m.label: m.value for m in at.metric}["Agents"] == "12"
    assert "ada@example.com" in [text.value for text in at.sidebar.text]


def test_oidc_without_its_configuration_says_what_is_missing(
    fleet: SeededFleet, console_env: Callable[..., None]
) -> None:
    console_env(fleet.url, auth="oidc")
    at = AppTest.from_file(str(APP), default_timeout=60)
    at.user = {"is_logged_in": False}
    at.run()

    assert "add an [auth] section to .streamlit/secrets.toml" in at.error[0].value
    assert not at.button
    assert_no_fleet_data(at, fleet)


@pytest.fixture
def listening_everywhere() -> Iterator[None]:
    previous = config.get_option("server.address")
    config.set_option("server.address", "0.0.0.0")
    yield
    config.set_option("server.address", previous)


@pytest.mark.usefixtures("listening_everywhere")
def test_no_login_is_refused_when_the_console_is_reachable_from_other_hosts(
    fleet: SeededFleet, console_env: Callable[..., None]
) -> None:
    console_env(fleet.url, auth="none")

    at = AppTest.from_file(str(APP), default_timeout=60).run()

    assert "only allowed when the console listens on 127.0.0.1" in at.error[0].value
    assert_no_fleet_data(at, fleet)
