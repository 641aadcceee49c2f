"""The Streamlit admin console over the shared database."""
