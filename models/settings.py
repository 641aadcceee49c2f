"""Server-side settings, read from `REDFLAG_*` environment variables."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_DATABASE_URL = "sqlite:///./var/redflag.db"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="REDFLAG_", extra="ignore")

    database_url: str = DEFAULT_DATABASE_URL
    # SQLite busy timeout and PostgreSQL pool wait: how long a request waits for the
    # database before the API answers 503.
    database_timeout_seconds: float = Field(default=5.0, gt=0)
    database_pool_size: int = Field(default=10, ge=1)
    check_in_interval_seconds: int = Field(default=300, ge=30, le=3600)
    max_body_bytes: int = Field(default=2 * 1024 * 1024, ge=1024)
    # Per-agent token bucket: a burst of check-ins, then a sustained rate.
    rate_limit_per_minute: float = Field(default=60.0, gt=0)
    rate_limit_burst: int = Field(default=20, ge=1)
    retry_after_seconds: int = Field(default=5, ge=1)
    # How long an API process trusts a proven agent token without asking the database
    # again (0: always ask). Revocation still stops a check-in's write at once; only the
    # early 401 may come up to this late (docs/PERFORMANCE.md).
    auth_cache_seconds: float = Field(default=10.0, ge=0, le=300)
    enrollment_default_uses: int = Field(default=1, ge=1)
    enrollment_default_ttl_seconds: int = Field(default=24 * 3600, ge=60)
