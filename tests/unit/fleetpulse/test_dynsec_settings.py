"""The settings of the dynamic security backend: FLEETPULSE_MQTT_AUTH_BACKEND and
FLEETPULSE_MQTT_ADMIN_URL."""

from __future__ import annotations

import pytest

from fleetpulse.errors import ConfigError
from fleetpulse.settings import load_settings

ADMIN_URL = "mqtt://fleetpulse-admin:s3cret@127.0.0.1:1883"


def test_the_files_backend_is_the_default() -> None:
    settings = load_settings({})
    assert settings.mqtt_auth_backend == "files"
    assert settings.mqtt_admin_url == ""


def test_the_dynsec_backend_takes_an_administrators_url() -> None:
    settings = load_settings(
        {"FLEETPULSE_MQTT_AUTH_BACKEND": "dynsec", "FLEETPULSE_MQTT_ADMIN_URL": ADMIN_URL}
    )
    assert settings.mqtt_auth_backend == "dynsec"
    assert settings.mqtt_admin_url == ADMIN_URL
    assert settings.masked()["FLEETPULSE_MQTT_ADMIN_URL"] == (
        "mqtt://fleetpulse-admin:***@127.0.0.1:1883"
    )


def test_the_cli_flags_set_them_too() -> None:
    settings = load_settings({}, {"mqtt_auth_backend": "dynsec", "mqtt_admin_url": ADMIN_URL})
    assert (settings.mqtt_auth_backend, settings.mqtt_admin_url) == ("dynsec", ADMIN_URL)


@pytest.mark.parametrize(
    ("env", "named", "says"),
    [
        (
            {"FLEETPULSE_MQTT_AUTH_BACKEND": "ldap"},
            "FLEETPULSE_MQTT_AUTH_BACKEND",
            "files or dynsec",
        ),
        ({"FLEETPULSE_MQTT_AUTH_BACKEND": "DYNSEC"}, "FLEETPULSE_MQTT_AUTH_BACKEND", "'DYNSEC'"),
        (
            {"FLEETPULSE_MQTT_ADMIN_URL": "http://admin:pw@broker"},
            "FLEETPULSE_MQTT_ADMIN_URL",
            "admin:***@",
        ),
        (
            {
                "FLEETPULSE_MQTT_AUTH_BACKEND": "dynsec",
                "FLEETPULSE_MQTT_PASSWORD_FILE": "/etc/mosquitto/fleetpulse/passwd",
                "FLEETPULSE_MQTT_ACL_FILE": "/etc/mosquitto/fleetpulse/acl",
            },
            "FLEETPULSE_MQTT_PASSWORD_FILE",
            "MQTT_AUTH_BACKEND=files",
        ),
    ],
)
def test_wrong_values_are_refused_naming_the_setting(
    env: dict[str, str], named: str, says: str
) -> None:
    with pytest.raises(ConfigError) as exc:
        load_settings(env)
    assert exc.value.setting == named
    assert says in str(exc.value)
    assert "pw@" not in str(exc.value)
