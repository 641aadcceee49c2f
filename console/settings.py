"""Console settings, read from `REDFLAG_CONSOLE_*` environment variables."""

from __future__ import annotations

from enum import StrEnum

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class AuthMode(StrEnum):
    PASSWORD = "password"  # built-in login, the password stored only as a hash
    OIDC = "oidc"  # Streamlit's st.login against an identity provider
    NONE = "none"  # no login: only when asked for and bound to 127.0.0.1


class ConsoleSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="REDFLAG_CONSOLE_", extra="ignore")

    auth: AuthMode = AuthMode.PASSWORD
    admin_user: str = "admin"
    # `redflag-console hash-password` prints a value for this.
    admin_password_hash: str = ""
    session_minutes: int = Field(default=8 * 60, ge=1)
    refresh_seconds: int = Field(default=30, ge=5)
    cache_seconds: int = Field(default=15, ge=1)
