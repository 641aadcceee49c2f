"""The demo fleet: real agents migrating sandboxed hosts against a locally started system.

`redflag-demo` (what `make run` starts) upgrades the database, starts the ingest API and
the console, and drives a fleet of sandbox hosts through the real `redflag-agent`.
"""
