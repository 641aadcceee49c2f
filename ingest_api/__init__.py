"""The ingest API: enrolment, check-ins carrying events, idempotent storage."""
