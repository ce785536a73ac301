"""FleetPulse's exception tree, grouped by cause; foreign errors are translated into it."""


class FleetPulseError(Exception):
    """Base of every error FleetPulse raises on purpose."""


class ConfigError(FleetPulseError):
    """A setting is missing or wrong; the message names the setting."""

    def __init__(self, setting: str, problem: str) -> None:
        super().__init__(f"{setting}: {problem}")
        self.setting = setting


class ServiceUnavailable(FleetPulseError):
    """A server FleetPulse needs (PostgreSQL, Redis, the broker) cannot be reached."""


class SchemaError(FleetPulseError):
    """The database schema is missing, too old or in an unexpected state."""
