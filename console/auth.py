"""The console's gate: nothing below it runs, and no fleet data is sent, without an admin."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import streamlit as st

from console.passwords import verify_password
from console.settings import AuthMode, ConsoleSettings

LOCAL_ADDRESSES = {"127.0.0.1", "localhost", "::1"}
_SESSION_KEY = "redflag_admin"
_FAILURES_KEY = "redflag_login_failures"


def require_admin(settings: ConsoleSettings) -> str:
    """The signed-in admin's name; otherwise shows the login and stops the script run."""
    if settings.auth is AuthMode.NONE:
        return _local_admin()
    if settings.auth is AuthMode.OIDC:
        return _oidc_admin()
    return _password_admin(settings)


def is_signed_in(settings: ConsoleSettings) -> bool:
    """Whether this session already belongs to an admin (shows nothing, changes nothing)."""
    if settings.auth is AuthMode.NONE:
        return str(st.get_option("server.address") or "") in LOCAL_ADDRESSES
    if settings.auth is AuthMode.OIDC:
        return bool(st.user.is_logged_in)
    session = st.session_state.get(_SESSION_KEY)
    return bool(session and session["expires_at"] > datetime.now(UTC))


def logout_button(settings: ConsoleSettings) -> None:
    if settings.auth is AuthMode.NONE:
        return
    if st.sidebar.button("Log out", icon=":material/logout:", key="logout"):
        st.session_state.pop(_SESSION_KEY, None)
        if settings.auth is AuthMode.OIDC:
            st.logout()
        st.rerun()


def _local_admin() -> str:
    address = str(st.get_option("server.address") or "")
    if address not in LOCAL_ADDRESSES:
        st.error(
            "Login is switched off (REDFLAG_CONSOLE_AUTH=none), which is only allowed when "
            f"the console listens on 127.0.0.1; it listens on {address or 'every address'}."
        )
        st.stop()
    return "local admin"


def _oidc_configured() -> bool:
    try:
        return "auth" in st.secrets
    except FileNotFoundError:  # no .streamlit/secrets.toml at all
        return False


def _oidc_admin() -> str:
    if not st.user.is_logged_in:
        st.title("RedFlag fleet migration console")
        if not _oidc_configured():
            st.error(
                "OIDC login is selected (REDFLAG_CONSOLE_AUTH=oidc) but not configured: add an "
                "[auth] section to .streamlit/secrets.toml (see the README)."
            )
            st.stop()
        st.markdown("Sign in with your organisation's identity provider to see the fleet.")
        st.button("Log in", icon=":material/login:", on_click=st.login, key="oidc_login")
        st.stop()
    return str(st.user.get("email") or st.user.get("name") or "admin")


def _password_admin(settings: ConsoleSettings) -> str:
    session = st.session_state.get(_SESSION_KEY)
    if session and session["expires_at"] > datetime.now(UTC):
        return str(session["user"])
    st.session_state.pop(_SESSION_KEY, None)

    st.title("RedFlag fleet migration console")
    if not settings.admin_password_hash:
        st.error(
            "No admin password is configured. Set REDFLAG_CONSOLE_ADMIN_PASSWORD_HASH to the "
            "output of `redflag-console hash-password`, or configure OIDC login."
        )
        st.stop()
    with st.form("login"):
        user = st.text_input("User", key="login_user")
        password = st.text_input("Password", type="password", key="login_password")
        submitted = st.form_submit_button("Log in", icon=":material/login:")
    if submitted:
        failures = int(st.session_state.get(_FAILURES_KEY, 0))
        # Each failure in a session slows the next try, which makes guessing expensive.
        time.sleep(min(0.5 * failures, 5.0))
        if user == settings.admin_user and verify_password(password, settings.admin_password_hash):
            st.session_state[_SESSION_KEY] = {
                "user": user,
                "expires_at": datetime.now(UTC) + timedelta(minutes=settings.session_minutes),
            }
            st.session_state[_FAILURES_KEY] = 0
            st.rerun()
        st.session_state[_FAILURES_KEY] = failures + 1
        st.error("Wrong user or password.")
    st.stop()
    raise AssertionError("unreachable: st.stop() ends the run")
