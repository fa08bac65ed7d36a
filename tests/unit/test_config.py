"""Configuration: defaults < file < environment < flags, and bad values name their key."""

from __future__ import annotations

from pathlib import Path

import pytest

from lumbung.config import ClientConfig, HubConfig, NodeConfig, load
from lumbung.errors import ConfigError


def test_defaults_apply_when_nothing_is_given() -> None:
    assert load(HubConfig, env={}) == HubConfig()


def test_file_then_environment_then_flags_each_win_over_the_last(tmp_path: Path) -> None:
    file = tmp_path / "hub.toml"
    file.write_text('port = 9000\nhost = "0.0.0.0"\nlease_timeout_s = 20\n')
    env = {"LUMBUNG_HUB_PORT": "9100", "LUMBUNG_HUB_DB_URL": "sqlite:///x.db"}
    config = load(HubConfig, env=env, file=file, overrides={"port": 9200, "host": None})
    assert config.port == 9200  # flag beats environment beats file
    assert config.host == "0.0.0.0"  # an unset flag (None) does not mask the file
    assert config.db_url == "sqlite:///x.db"
    assert config.lease_timeout_s == 20.0


def test_environment_of_another_process_is_ignored() -> None:
    config = load(NodeConfig, env={"LUMBUNG_HUB_PORT": "1", "LUMBUNG_NODE_SLOTS": "3"})
    assert config.slots == 3


@pytest.mark.parametrize(
    ("env", "key"),
    [
        ({"LUMBUNG_NODE_SLOTS": "three"}, "slots"),
        ({"LUMBUNG_NODE_PRICE_MICRO_PER_CPU_HOUR": "1.5"}, "price_micro_per_cpu_hour"),
        ({"LUMBUNG_CLIENT_TIMEOUT_S": "soon"}, "timeout_s"),
    ],
)
def test_a_bad_environment_value_fails_naming_its_key(env: dict[str, str], key: str) -> None:
    cls = NodeConfig if "NODE" in next(iter(env)) else ClientConfig
    with pytest.raises(ConfigError) as caught:
        load(cls, env=env)
    assert caught.value.field == key
    assert next(iter(env)) in caught.value.message


def test_unknown_keys_in_a_file_are_refused(tmp_path: Path) -> None:
    file = tmp_path / "node.toml"
    file.write_text("slotz = 2\n")
    with pytest.raises(ConfigError, match="unknown configuration key 'slotz'"):
        load(NodeConfig, env={}, file=file)


def test_a_broken_file_is_refused_naming_it(tmp_path: Path) -> None:
    file = tmp_path / "hub.toml"
    file.write_text("port = = 1\n")
    with pytest.raises(ConfigError, match=r"hub\.toml"):
        load(HubConfig, env={}, file=file)


def test_paths_expand_the_home_directory() -> None:
    config = load(ClientConfig, env={"LUMBUNG_CLIENT_DATA_DIR": "~/keys"})
    assert config.data_dir == Path.home() / "keys"
