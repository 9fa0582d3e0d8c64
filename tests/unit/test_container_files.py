"""The serving image's files and podman command lines, without podman (tests/slow/test_container.py
builds and runs the image)."""

from __future__ import annotations

import re

import pytest

from tests.helpers import REPO
from tsvision.tools.serve.container import (
    BUILD_CERTIFICATES,
    Container,
    ContainerError,
    build_command,
    debian_mirror,
    local_wheel_options,
)
from tsvision.tools.serve.server import read_properties


def test_the_mirror_is_read_from_deb822_or_one_line_sources_and_security_is_skipped(tmp_path):
    deb822 = tmp_path / "debian.sources"
    deb822.write_text("Types: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\n\n"
                      "Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm\n")
    one_line = tmp_path / "sources.list"
    one_line.write_text("# a comment\ndeb [arch=amd64] http://other.example/debian bookworm main\n")
    assert debian_mirror([tmp_path / "missing", deb822]) == "http://mirror.example/debian"
    assert debian_mirror([one_line]) == "http://other.example/debian"
    with pytest.raises(ContainerError, match="no Debian mirror"):
        debian_mirror([tmp_path / "missing"])


def test_local_wheels_are_mounted_and_searched_first_only_where_they_exist(tmp_path):
    assert local_wheel_options([tmp_path / "wheels", tmp_path / "pypi"]) == []
    (tmp_path / "wheels").mkdir()
    (tmp_path / "pypi" / "simple").mkdir(parents=True)
    options = local_wheel_options([tmp_path / "wheels", tmp_path / "pypi"])
    assert options[:2] == ["-v", f"{tmp_path / 'wheels'}:{tmp_path / 'wheels'}:ro"]
    [pip] = [option for option in options if option.startswith("PIP_OPTIONS=")]
    assert pip.index(f"--index-url file://{tmp_path / 'pypi' / 'simple'}") < pip.index("https://pypi.org/simple")
    assert "TORCH_INDEX=" in options and "--cert" not in pip
    bundle = tmp_path / "ca.pem"
    bundle.write_text("certificates")
    options = local_wheel_options([tmp_path / "wheels", tmp_path / "pypi"], certificates=bundle)
    assert f"{bundle}:{BUILD_CERTIFICATES}:ro" in options  # pip's HTTPS through this machine's proxy
    assert f"--cert {BUILD_CERTIFICATES}" in next(option for option in options if option.startswith("PIP_OPTIONS="))


def test_the_build_command_keeps_the_healthcheck_and_passes_build_arguments():
    command = build_command("localhost/x:1", "localhost/base:1", {"ARCHIVES": "model_store"}, local_wheels=False)
    assert command[:3] == ["podman", "--storage-driver", "vfs"]
    assert command[command.index("--format") + 1] == "docker"  # OCI images drop HEALTHCHECK
    assert "BASE_IMAGE=localhost/base:1" in command and "ARCHIVES=model_store" in command
    assert command[-3:] == ["-f", str(REPO / "Containerfile"), str(REPO)]


def test_a_container_gets_its_ports_through_the_environment_and_the_store_read_only(tmp_path):
    command = Container("c", "img", {"inference": 1234, "management": 1235}, tmp_path).run_command()
    assert "TSVISION_INFERENCE_PORT=1234" in command and "TSVISION_MANAGEMENT_PORT=1235" in command
    assert f"{tmp_path}:/opt/tsvision/model-store:ro" in command
    assert command[command.index("--runtime") + 1] == "runc" and command[-1] == "img"
    with pytest.raises(ValueError, match="unknown port names"):
        Container("c", ports={"admin": 1})


def test_the_container_configuration_keeps_management_and_metrics_on_loopback_with_tokens_on():
    config = read_properties(REPO / "container" / "config.properties")
    assert config["management_address"].startswith("http://127.0.0.1:")
    assert config["metrics_address"].startswith("http://127.0.0.1:")
    assert config["grpc_management_address"] == "127.0.0.1"
    assert config["enable_model_api"] == "false" and config["disable_token_authorization"] == "false"
    # The entry point appends the ports; what it appends must keep the same hosts.
    entrypoint = (REPO / "container" / "entrypoint.sh").read_text()
    assert re.search(r"management_address=http://127\.0\.0\.1:", entrypoint)
    assert re.search(r"metrics_address=http://127\.0\.0\.1:", entrypoint)
    assert "0.0.0.0" not in "".join(line for line in entrypoint.splitlines() if "management" in line)
    # inference: every interface by default (tokens on), the loopback when TSVISION_BIND_ADDRESS says so
    assert "inference_address=http://${TSVISION_BIND_ADDRESS:-0.0.0.0}:" in entrypoint
    assert "grpc_inference_address=${TSVISION_BIND_ADDRESS:-0.0.0.0}" in entrypoint
