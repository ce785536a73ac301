"""The environment file that documents every setting: `fleetpulse config --env-template`.

`deploy/fleetpulse.env.example` is this module's output, checked by a unit test, so the
file cannot miss a setting or keep an old default. Every assignment is commented out: an
unset variable takes the built-in default, so an operator uncomments only what they
change, and an upgrade's new defaults still reach everything left alone.
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterable

from fleetpulse.settings import OPTIONS, Option

# Defaults computed on the machine that renders the file; shown as what they mean.
MACHINE_DEFAULTS = {"client_id": "fleetpulse-ingest-<hostname>"}
WIDTH = 92

HEADER = """\
# FleetPulse settings: every FLEETPULSE_* variable, with its built-in default.
#
# Written by `fleetpulse config --env-template`; a unit test fails when this file misses
# a setting or differs from that output, so regenerate it rather than editing it:
#   fleetpulse config --env-template > deploy/fleetpulse.env.example
#
# Copy it (deploy/compose/fleetpulse.env for the compose files; a ConfigMap and a Secret in
# Kubernetes, see deploy/k8s/config.yaml) and uncomment what you change. Durations take
# ms, s, m, h, d, w or plain seconds. A wrong value stops the program with one line naming
# the variable. `fleetpulse config` prints the effective values, passwords masked.
#
# Set per process by the deployment, not here: FLEETPULSE_CLIENT_ID (one per ingester,
# stable across restarts), FLEETPULSE_TRACKER_INDEX and _COUNT, and the service URLs,
# which carry passwords (keep those in a secret store, not in this file).
"""


def shown_default(option: Option) -> str:
    return MACHINE_DEFAULTS.get(option.field, option.default)


def render(options: Iterable[Option] = OPTIONS) -> str:
    blocks = [HEADER]
    for option in options:
        help_lines = textwrap.wrap(option.help, WIDTH - 2)
        comment = "\n".join(f"# {line}" for line in help_lines)
        if option.secret:
            comment += "\n# (secret: a password may be part of it)"
        blocks.append(f"{comment}\n# {option.env}={shown_default(option)}\n")
    return "\n".join(blocks)
