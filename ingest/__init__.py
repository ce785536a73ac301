"""Ingest stage: validate, de-duplicate, batch and store every fix exactly once."""
