"""The console's pages, run by st.navigation from console/app.py (UI only)."""
