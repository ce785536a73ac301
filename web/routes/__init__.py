"""REST routes, one module per resource; each exposes `api`, an `web.api.Api`."""
