"""The RedFlag agent's migration and reporting half: it runs on every managed host.

Importing this package must stay cheap and free of server-side libraries (no FastAPI,
SQLModel, pandas, Streamlit or plotly): only the standard library, httpx and pydantic.
"""

from __future__ import annotations

AGENT_VERSION = "0.2.0"
__version__ = AGENT_VERSION
