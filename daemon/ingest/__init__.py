"""Taking events in: bind, receive, decode and validate, de-duplicate, append to the event
log and fsync, acknowledge, quarantine what is rejected; spool ingestion; the live feed."""
