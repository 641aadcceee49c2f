"""The console's entrypoint: page set-up, the admin gate, then the page that was asked for.

Nothing reads the database before `require_admin` returns: a visitor who is not signed in
gets the login form and the script stops there.
"""

from __future__ import annotations

import streamlit as st

from console import links
from console.auth import is_signed_in, logout_button, require_admin
from console.settings import ConsoleSettings

st.set_page_config(
    page_title="RedFlag fleet console",
    page_icon="🚩",
    layout="wide",
)

try:
    settings = ConsoleSettings()
except ValueError as exc:
    st.error("The console settings (REDFLAG_CONSOLE_*) are invalid.", icon=":material/error:")
    st.code(str(exc), language=None)
    st.stop()

pages = [
    st.Page(
        links.OVERVIEW_PAGE,
        title="Fleet overview",
        icon=":material/dashboard:",
        default=True,
        help="How far the fleet's migration has got: agents per state, failure trend, "
        "the biggest error groups and breakdowns by OS, version and migration path.",
    ),
    st.Page(
        links.EVENTS_PAGE,
        title="Events explorer",
        icon=":material/manage_search:",
        help="Every reported event, filtered in the database, with paging, the full "
        "details of a selected event and a download of the whole filtered set.",
    ),
    st.Page(
        links.HISTORY_PAGE,
        title="Agent history",
        icon=":material/history:",
        help="One host: identity, system info, migration state and its timeline of "
        "migration and update events with full details.",
    ),
    st.Page(
        links.GROUPS_PAGE,
        title="Error groups",
        icon=":material/stacks:",
        help="The same failure on many hosts as one row; open a group to see its hosts "
        "and how often it happened over time.",
    ),
]
# The pages are registered before the gate, hidden from visitors, so that a deep link
# (/events_explorer?statuses=failed) still points at its page once the admin has logged
# in. Registering runs nothing: no page, and no query, runs before `require_admin`.
# URL paths follow the file names, which AppTest can address before a first run too.
page = st.navigation(pages, position="sidebar" if is_signed_in(settings) else "hidden")
admin = require_admin(settings)

with st.sidebar:
    st.caption("Signed in as")
    # An OIDC identity comes from outside the console: shown as literal text.
    st.text(admin)
    logout_button(settings)
    st.caption(f"Figures refresh every {settings.refresh_seconds} s.")

page.run()
