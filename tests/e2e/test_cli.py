"""Every command documents itself."""

from __future__ import annotations

import pytest

from tests.e2e.processes import fleetpulse

COMMANDS = [
    [],
    ["config"],
    ["db"],
    ["ingest"],
    ["tracker"],
    ["run"],
    ["history"],
    ["quarantine"],
    ["stats"],
    ["geofences"],
    ["geofences", "import"],
    ["events", "export"],
    ["devices", "near"],
    ["devices", "set-groups"],
    ["deliveries", "create"],
    ["profiles", "rebuild"],
    ["profiles", "refresh"],
    ["eta", "report"],
    ["deliveries", "update"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "fleetpulse")
def test_help(command: list[str]) -> None:
    result = fleetpulse(*command, "--help", env={})
    assert result.returncode == 0
    assert result.stdout.startswith("usage: fleetpulse")
