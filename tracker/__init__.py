"""Tracker: the pure domain (positions, later geofences, deliveries, ETAs) and its adapters."""
