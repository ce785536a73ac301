"""Web stage: REST API, websockets and pages (arrives with the web issue)."""
