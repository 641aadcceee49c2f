"""`redflag-server serve` runs the app with the interpreter tuned for a server process."""

from __future__ import annotations

import sys

import pytest
from fastapi import FastAPI

from ingest_api import cli


def test_served_app_shortens_the_switch_interval() -> None:
    before = sys.getswitchinterval()
    try:
        app = cli.served_app()
        assert isinstance(app, FastAPI)
        assert sys.getswitchinterval() == pytest.approx(cli.SERVER_SWITCH_INTERVAL_SECONDS)
    finally:
        sys.setswitchinterval(before)
