import re
import socket

import pytest

from fleetpulse import cli, env_template
from fleetpulse.settings import OPTIONS, load_settings

ASSIGNMENT = re.compile(r"^# (FLEETPULSE_\w+)=(.*)$", re.M)


def _assignments(text: str) -> dict[str, str]:
    return dict(ASSIGNMENT.findall(text))


def test_every_setting_appears_once_with_its_help() -> None:
    text = env_template.render()
    names = [name for name, _ in ASSIGNMENT.findall(text)]
    assert names == [option.env for option in OPTIONS]
    for option in OPTIONS:
        block = text.split(f"# {option.env}=")[0].rsplit("\n\n", 1)[1]
        assert " ".join(line.removeprefix("# ") for line in block.splitlines()).startswith(
            option.help
        )


def test_uncommenting_everything_gives_the_defaults() -> None:
    values = _assignments(env_template.render())
    values["FLEETPULSE_CLIENT_ID"] = "ingest-1"
    settings = load_settings(values)
    assert settings == load_settings({"FLEETPULSE_CLIENT_ID": "ingest-1"})


def test_the_output_does_not_depend_on_the_machine() -> None:
    text = env_template.render()
    assert _assignments(text)["FLEETPULSE_CLIENT_ID"] == "fleetpulse-ingest-<hostname>"
    assert f"fleetpulse-ingest-{socket.gethostname()}" not in text


def test_secrets_are_marked() -> None:
    text = env_template.render()
    for option in OPTIONS:
        block = text.split(f"# {option.env}=")[0].rsplit("\n\n", 1)[1]
        assert ("(secret" in block) == option.secret, option.env


def test_the_command_prints_the_template(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["config", "--env-template"]) == 0
    assert capsys.readouterr().out == env_template.render()
