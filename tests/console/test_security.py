"""Agent-sent text reaches the page only as literal text, never as Markdown or HTML.

Labels, titles, captions, alerts, metric labels, expander labels and page links all
render Markdown (links, images, emphasis, raw HTML in some cases). These tests open every
page on a fleet with a hostile host, walk the whole element tree AppTest received, and
allow the attack strings only inside elements that show text literally: dataframe cells,
st.code, st.text, st.json, and a text input's own value.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path

from google.protobuf.json_format import MessageToDict
from streamlit.testing.v1 import AppTest

from console import links
from tests.console.conftest import (
    HOSTILE_HOST,
    HOSTILE_MESSAGE,
    HOSTILE_TEXTS,
    HTML_ATTACK,
    REPO,
    SeededFleet,
)

OpenPage = Callable[..., AppTest]
LITERAL = {"code", "text", "json", "dataframe"}


def _walk(node: object) -> Iterator[object]:
    yield node
    for child in getattr(node, "children", {}).values():
        yield from _walk(child)


def rendered_as_markup(at: AppTest) -> list[tuple[str, str]]:
    """(element type, attack) for every attack string found where Markdown/HTML renders."""
    found = []
    for node in _walk(at._tree):
        proto = getattr(node, "proto", None)
        kind = str(getattr(node, "type", ""))
        if proto is None or not hasattr(proto, "DESCRIPTOR") or kind in LITERAL:
            continue
        if kind == "text_input":
            # The typed (or linked) value sits in an input box; its label and help render.
            text = json.dumps([proto.label, proto.help, proto.placeholder])
        else:
            text = json.dumps(MessageToDict(proto), ensure_ascii=False)
        if kind == "plotly_chart":
            # Plotly draws text itself: Markdown is inert there, HTML tags are not.
            found += [(kind, tag) for tag in ("<img", "<b>") if tag in text]
            continue
        found += [(kind, attack) for attack in HOSTILE_TEXTS if attack in text]
    return found


def literal_texts(at: AppTest) -> str:
    """What the literal elements hold, to show the hostile values did reach the page."""
    parts = [str(e.value) for e in (*at.code, *at.text, *at.json)]
    parts += [frame.value.to_json(date_format="iso") for frame in at.dataframe]
    return "\n".join(parts)


def test_the_overview_shows_hostile_values_only_as_literal_text(console: OpenPage) -> None:
    at = console()

    assert rendered_as_markup(at) == []
    assert HTML_ATTACK in literal_texts(at)  # the hostile host is among the failed hosts


def test_the_explorer_and_a_hostile_event_show_only_literal_text(
    console: OpenPage, fleet: SeededFleet
) -> None:
    at = console(links.EVENTS_PAGE, event=str(fleet.hostile_event_pk))

    assert rendered_as_markup(at) == []
    assert HOSTILE_MESSAGE in [code.value for code in at.code]
    assert HOSTILE_HOST in literal_texts(at)


def test_a_link_carrying_hostile_filters_shows_them_only_as_input_values(
    console: OpenPage,
) -> None:
    at = console(
        links.EVENTS_PAGE,
        host=HOSTILE_HOST,
        error_text="[click](javascript:alert(1))",
        agent_ids=HTML_ATTACK,
        migration_from="**bold**",
    )

    assert rendered_as_markup(at) == []
    assert at.text_input(key="ex_host").value == HOSTILE_HOST


def test_the_history_of_a_hostile_host_shows_only_literal_text(
    console: OpenPage, fleet: SeededFleet
) -> None:
    at = console(links.HISTORY_PAGE, agent=str(fleet.hostile_id))

    assert rendered_as_markup(at) == []
    assert len(at.expander) == 2
    assert HOSTILE_MESSAGE in [code.value for code in at.code]

    at.text_input(key="history_search").set_value("img").run()
    assert rendered_as_markup(at) == []
    assert HOSTILE_HOST in literal_texts(at)


def test_a_hostile_error_group_shows_only_literal_text(
    console: OpenPage, fleet: SeededFleet
) -> None:
    at = console(links.GROUPS_PAGE)
    groups = next(f.value for f in at.dataframe if (f.key or "").startswith("groups_table"))
    hostile = groups[groups["sample_message"] == HOSTILE_MESSAGE].iloc[0]["fingerprint"]

    at = console(links.GROUPS_PAGE, group=hostile)

    assert rendered_as_markup(at) == []
    assert HOSTILE_MESSAGE in [code.value for code in at.code]


def test_the_console_never_asks_streamlit_to_render_raw_html() -> None:
    risky = re.compile(r"unsafe_allow_html|st\.html\(|components\.v1|st\.write\(|st\.table\(")
    sources = sorted((REPO / "console").rglob("*.py"))
    assert sources
    offenders = [
        f"{path.relative_to(REPO)}:{number}"
        for path in sources
        for number, line in enumerate(Path(path).read_text().splitlines(), start=1)
        if risky.search(line)
    ]
    assert offenders == []


def test_the_check_itself_catches_agent_text_in_a_label_or_caption() -> None:
    def leaky_page(text: str) -> None:
        import streamlit as st

        st.caption(text)
        st.expander(text)
        st.code(text)

    at = AppTest.from_function(leaky_page, args=(HTML_ATTACK,)).run()

    assert sorted(rendered_as_markup(at)) == [("caption", HTML_ATTACK), ("expander", HTML_ATTACK)]
