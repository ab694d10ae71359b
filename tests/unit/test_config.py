"""Settings: layering, typing of environment variables, validation and the
documented defaults, read through the real dynaconf files."""

from __future__ import annotations

import os
from dataclasses import Field, fields
from pathlib import Path
from typing import Any

import pytest

from pighand_token.config import Settings, load_settings
from pighand_token.core.errors import SettingsError


@pytest.fixture(autouse=True)
def no_stray_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts from an environment without PIGHAND_* or dynaconf switches."""
    for name in list(os.environ):
        if name.startswith(("PIGHAND_", "DYNACONF_")) or name.endswith("_FOR_DYNACONF"):
            monkeypatch.delenv(name)


def settings_file(tmp_path: Path, text: str) -> str:
    path = tmp_path / "extra.toml"
    path.write_text(text)
    return str(path)


def settings_error(**env: str) -> str:
    """The message load_settings raises for these environment variables."""
    with pytest.MonkeyPatch.context() as mp:
        for name, value in env.items():
            mp.setenv(name, value)
        with pytest.raises(SettingsError) as caught:
            load_settings()
    return caught.value.message


# -- defaults ----------------------------------------------------------------------
DOCUMENTED_DEFAULTS: list[tuple[str, Any]] = [
    ("is_enable_env", True),
    ("host", "127.0.0.1"),
    ("port", 3050),
    ("mysql_host", ""),
    ("mysql_port", 3306),
    ("mysql_log", False),
    ("sqlite_path", "instance/pighand.sqlite3"),
    ("redis_host", ""),
    ("redis_port", 6379),
    ("redis_pwd", ""),
    ("redis_db", 0),
    ("is_enable_schedule", True),
    ("corn_interval", 300),
    ("save_model", "auto"),
    ("local_cache_ttl", 5),
    ("wechat_api_base", "https://api.weixin.qq.com"),
    ("wechat_token_mode", "stable"),
    ("upstream_timeout", 5),
    ("refresh_rate_limit", 20),
]


@pytest.mark.parametrize(("name", "default"), DOCUMENTED_DEFAULTS, ids=[n for n, _ in DOCUMENTED_DEFAULTS])
def test_every_documented_setting_has_its_documented_default(name: str, default: Any) -> None:
    value = getattr(load_settings(), name)
    assert value == default
    assert type(value) is type(default) or (isinstance(default, int) and type(value) is float)


def test_without_pighand_env_the_development_environment_is_used() -> None:
    settings = load_settings()
    assert settings.env == "development"
    assert settings.log_level == "debug"  # from [development]


def test_empty_database_and_redis_hosts_mean_sqlite_and_no_redis() -> None:
    settings = load_settings()
    assert not settings.uses_mysql and not settings.uses_redis
    assert load_settings(overrides={"mysql_host": "db", "redis_host": "cache"}).uses_mysql


TEST_KEY = "x1lF0Y9YAfKUyR5zn8b4kN2f3gYbQ6Jc8wq7m0bq4eI="


@pytest.mark.parametrize(("env", "required"), [("development", False), ("testing", True), ("production", True)])
def test_auth_is_required_except_in_development(monkeypatch: pytest.MonkeyPatch, env: str,
                                                required: bool) -> None:
    monkeypatch.setenv("PIGHAND_ENV", env)
    monkeypatch.setenv("PIGHAND_ENCRYPTION_KEY", TEST_KEY)
    assert load_settings().auth_required is required


def test_production_without_an_encryption_key_does_not_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIGHAND_ENV", "production")
    with pytest.raises(SettingsError) as info:
        load_settings()
    assert str(info.value).startswith("encryption_key=") and "\n" not in str(info.value)


# -- layering ----------------------------------------------------------------------
@pytest.mark.parametrize(("env", "name", "value"), [
    ("testing", "sqlite_path", "instance/pighand-testing.sqlite3"),
    ("testing", "mysql_database", "pighand_token_test"),
    ("production", "host", "0.0.0.0"),
    ("production", "log_level", "info"),
    ("development", "log_level", "debug"),
])
def test_pighand_env_selects_the_environment_section(
        monkeypatch: pytest.MonkeyPatch, env: str, name: str, value: str) -> None:
    monkeypatch.setenv("PIGHAND_ENV", env)
    monkeypatch.setenv("PIGHAND_ENCRYPTION_KEY", TEST_KEY)
    settings = load_settings()
    assert settings.env == env
    assert getattr(settings, name) == value


def test_layers_stack_default_then_environment_section_then_env_var(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = settings_file(tmp_path, "[default]\nport = 4100\ncorn_interval = 60\n"
                                   "[testing]\nport = 4200\n")
    monkeypatch.setenv("PIGHAND_SETTINGS_FILE", path)
    assert load_settings().port == 4100  # development has no port: [default] applies
    monkeypatch.setenv("PIGHAND_ENV", "testing")
    assert load_settings().port == 4200
    assert load_settings().corn_interval == 60
    monkeypatch.setenv("PIGHAND_PORT", "4300")
    assert load_settings().port == 4300
    assert load_settings().corn_interval == 60


def test_env_var_beats_the_production_section(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIGHAND_ENV", "production")
    monkeypatch.setenv("PIGHAND_ENCRYPTION_KEY", TEST_KEY)
    monkeypatch.setenv("PIGHAND_HOST", "10.1.2.3")
    assert load_settings().host == "10.1.2.3"


def test_overrides_sit_above_env_vars(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIGHAND_PORT", "4300")
    assert load_settings(overrides={"port": 4500}).port == 4500


def test_is_enable_env_false_in_a_settings_file_ignores_pighand_vars_but_not_pighand_env(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PIGHAND_SETTINGS_FILE", settings_file(
        tmp_path, f'[default]\nis_enable_env = false\nencryption_key = "{TEST_KEY}"\n'))
    monkeypatch.setenv("PIGHAND_ENV", "production")
    monkeypatch.setenv("PIGHAND_PORT", "4300")
    monkeypatch.setenv("PIGHAND_HOST", "10.1.2.3")
    monkeypatch.setenv("PIGHAND_IS_ENABLE_ENV", "true")
    settings = load_settings()
    assert settings.is_enable_env is False
    assert settings.env == "production"
    assert settings.host == "0.0.0.0"
    assert settings.port == 3050


def test_pighand_is_enable_env_false_ignores_other_pighand_vars_even_bad_ones(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIGHAND_IS_ENABLE_ENV", "false")
    monkeypatch.setenv("PIGHAND_ENV", "testing")
    monkeypatch.setenv("PIGHAND_PORT", "abc")
    monkeypatch.setenv("PIGHAND_SAVE_MODEL", "bogus")
    monkeypatch.setenv("PIGHAND_CORN_INTERVAL", "10")
    settings = load_settings()
    assert settings.is_enable_env is False
    assert settings.env == "testing"
    assert settings.sqlite_path == "instance/pighand-testing.sqlite3"
    assert (settings.port, settings.save_model, settings.corn_interval) == (3050, "auto", 300)


def test_environ_argument_replaces_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIGHAND_PORT", "abc")
    monkeypatch.setenv("PIGHAND_ENV", "staging")
    settings = load_settings(environ={"PIGHAND_ENV": "testing", "PIGHAND_PORT": "4000"})
    assert (settings.env, settings.port) == ("testing", 4000)


def test_dynaconf_own_variables_do_not_leak_in(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DYNACONF_PORT", "9")
    monkeypatch.setenv("ENV_FOR_DYNACONF", "production")
    settings = load_settings()
    assert settings.port == 3050
    assert (settings.env, settings.host) == ("development", "127.0.0.1")


# -- typing of environment variables -----------------------------------------------
def test_numeric_env_var_becomes_an_int(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIGHAND_PORT", "4000")
    monkeypatch.setenv("PIGHAND_REDIS_DB", "3")
    settings = load_settings()
    assert settings.port == 4000 and type(settings.port) is int
    assert settings.redis_db == 3 and type(settings.redis_db) is int


@pytest.mark.parametrize("password", ["1234", "0012", "1.50", "1e3", "true", "[1, 2]", "@json", " spaced "])
def test_string_settings_keep_exactly_the_text_given(monkeypatch: pytest.MonkeyPatch, password: str) -> None:
    monkeypatch.setenv("PIGHAND_MYSQL_PASSWORD", password)
    monkeypatch.setenv("PIGHAND_REDIS_PWD", password)
    settings = load_settings()
    assert settings.mysql_password == password
    assert settings.redis_pwd == password


CHOICES = {"save_model": "all", "wechat_token_mode": "classic", "log_level": "warning",
           "redis_url": "redis://cache.internal:6380/2", "redis_sentinels": "sentinel-a:26379,sentinel-b:26379",
           "redis_cluster_nodes": "cache-a:7000,cache-b:7001", "platform_http_proxy": "http://egress.internal:3128"}


def other_value(name: str, default: Any) -> tuple[str, Any]:
    """A valid value different from the default, as env text and as loaded."""
    if name in CHOICES:
        return CHOICES[name], CHOICES[name]
    if name == "worker_lifetime":  # 0 (off) or at least a minute
        return "3600", 3600
    if name == "trusted_proxies":
        return "10.0.0.0/8,::1", ("10.0.0.0/8", "::1/128")
    if name == "no_proxy":
        return "internal.example.com,10.0.0.0/8", ("internal.example.com", "10.0.0.0/8")
    if name == "redis_compat":
        return "wxjava,wechatpy", ("wxjava", "wechatpy")
    if isinstance(default, bool):
        return str(not default).lower(), not default
    if isinstance(default, int):
        return str(default + 1), default + 1
    if isinstance(default, float):
        return str(default + 1.5), default + 1.5
    return f"value-of-{name}", f"value-of-{name}"


SETTING_FIELDS = [f for f in fields(Settings) if f.name not in ("env", "is_enable_env")]


@pytest.mark.parametrize("field", SETTING_FIELDS, ids=[f.name for f in SETTING_FIELDS])
def test_every_setting_can_be_set_by_its_pighand_variable(monkeypatch: pytest.MonkeyPatch, field: Field[Any]) -> None:
    text, expected = other_value(field.name, field.default)
    monkeypatch.setenv(f"PIGHAND_{field.name.upper()}", text)
    if field.name == "redis_sentinels":
        monkeypatch.setenv("PIGHAND_REDIS_SENTINEL_MASTER", "pighand")
    if field.name == "redis_compat":  # written to Redis: needs one
        monkeypatch.setenv("PIGHAND_REDIS_HOST", "cache.internal")
    value = getattr(load_settings(), field.name)
    assert value == expected and type(value) is type(expected)


@pytest.mark.parametrize(("text", "expected"), [("false", False), ("true", True), ("False", False), ("0", False)])
def test_boolean_env_var_becomes_a_bool(monkeypatch: pytest.MonkeyPatch, text: str, expected: bool) -> None:
    monkeypatch.setenv("PIGHAND_IS_ENABLE_SCHEDULE", text)
    monkeypatch.setenv("PIGHAND_MYSQL_LOG", "false" if expected else "true")
    settings = load_settings()
    assert settings.is_enable_schedule is expected
    assert settings.mysql_log is (not expected)


@pytest.mark.parametrize(("text", "expected"), [("2.5", 2.5), ("2", 2.0)])
def test_upstream_timeout_env_var_becomes_a_float(
        monkeypatch: pytest.MonkeyPatch, text: str, expected: float) -> None:
    monkeypatch.setenv("PIGHAND_UPSTREAM_TIMEOUT", text)
    value = load_settings().upstream_timeout
    assert value == expected and type(value) is float


# -- validation --------------------------------------------------------------------
@pytest.mark.parametrize(("variable", "value", "setting", "allowed"), [
    ("PIGHAND_SAVE_MODEL", "bogus", "save_model", "auto, all"),
    ("PIGHAND_CORN_INTERVAL", "-5", "corn_interval", ">= 1"),
    ("PIGHAND_CORN_INTERVAL", "0", "corn_interval", ">= 1"),
    ("PIGHAND_PORT", "abc", "port", "whole number"),
    ("PIGHAND_PORT", "70000", "port", "<= 65535"),
    ("PIGHAND_PORT", "true", "port", "whole number"),
    ("PIGHAND_PORT", "3050.5", "port", "whole number"),
    ("PIGHAND_WECHAT_TOKEN_MODE", "fast", "wechat_token_mode", "stable, classic"),
    ("PIGHAND_IS_ENABLE_SCHEDULE", "maybe", "is_enable_schedule", "true, false"),
    ("PIGHAND_UPSTREAM_TIMEOUT", "0", "upstream_timeout", "> 0"),
    ("PIGHAND_UPSTREAM_TIMEOUT", "nan", "upstream_timeout", "> 0"),
    ("PIGHAND_LOCAL_CACHE_TTL", "-1", "local_cache_ttl", ">= 0"),
    ("PIGHAND_REFRESH_RATE_LIMIT", "0", "refresh_rate_limit", ">= 1"),
    ("PIGHAND_REFRESH_RATE_LIMIT", "2.5", "refresh_rate_limit", "whole number"),
    ("PIGHAND_REFRESH_RATE_LIMIT", "20000", "refresh_rate_limit", "<= 10000"),
    ("PIGHAND_LOG_LEVEL", "loud", "log_level", "debug, info, warning, error, critical"),
    ("PIGHAND_TRUSTED_PROXIES", "10.0.0.0/8,proxy.internal", "trusted_proxies", "CIDR networks"),
    ("PIGHAND_ENV", "staging", "PIGHAND_ENV", "development, testing, production"),
])
def test_a_bad_value_is_one_line_naming_setting_value_and_what_is_allowed(
        variable: str, value: str, setting: str, allowed: str) -> None:
    message = settings_error(**{variable: value})
    assert "\n" not in message
    assert message.startswith(f"{setting}=")
    assert value in message
    assert "allowed values are" in message and allowed in message


def test_a_bad_value_from_overrides_is_refused() -> None:
    with pytest.raises(SettingsError, match=r"^corn_interval=-1 is invalid"):
        load_settings(overrides={"corn_interval": -1})
    with pytest.raises(SettingsError, match=r"^port=True is invalid"):
        load_settings(overrides={"port": True})


def test_a_bad_value_in_a_settings_file_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PIGHAND_SETTINGS_FILE", settings_file(tmp_path, '[production]\nsave_model = "every"\n'))
    assert load_settings().save_model == "auto"
    monkeypatch.setenv("PIGHAND_ENV", "production")
    with pytest.raises(SettingsError, match=r"^save_model='every' is invalid: allowed values are auto, all$"):
        load_settings()


# -- trusted_proxies ---------------------------------------------------------------
def test_trusted_proxies_default_to_none() -> None:
    assert load_settings().trusted_proxies == ()


@pytest.mark.parametrize("text", ["127.0.0.1, 10.0.0.0/8 2001:db8::/32",
                                  '["127.0.0.1", "10.0.0.0/8", "2001:db8::/32"]'])
def test_trusted_proxies_from_the_environment_as_text_or_a_list(monkeypatch: pytest.MonkeyPatch, text: str) -> None:
    monkeypatch.setenv("PIGHAND_TRUSTED_PROXIES", text)
    assert load_settings().trusted_proxies == ("127.0.0.1/32", "10.0.0.0/8", "2001:db8::/32")


def test_trusted_proxies_in_a_settings_file_as_a_toml_list(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PIGHAND_SETTINGS_FILE",
                       settings_file(tmp_path, '[default]\ntrusted_proxies = ["192.0.2.10", "fd00::/8"]\n'))
    assert load_settings().trusted_proxies == ("192.0.2.10/32", "fd00::/8")


@pytest.mark.parametrize(("value", "named"), [
    ("10.0.0.1/8", "'10.0.0.1/8' is not an IP address or CIDR network (10.0.0.1/8 has host bits set)"),
    ("proxy.internal", "'proxy.internal' is not an IP address or CIDR network"),
    ("[1, 2]", "give a list of strings or comma-separated text"),
])
def test_a_bad_trusted_proxy_stops_the_start_naming_the_entry(value: str, named: str) -> None:
    message = settings_error(PIGHAND_TRUSTED_PROXIES=value)
    assert message.startswith(f"trusted_proxies={value!r} is invalid: allowed values are IP addresses or CIDR")
    assert named in message and "\n" not in message


@pytest.mark.parametrize(("text", "fragment"), [
    ("[default]\nport = \n", "PIGHAND_SETTINGS_FILE="),
    ("port = 4000\n", "unknown top-level key 'port'"),
])
def test_a_broken_settings_file_is_one_line_naming_the_file(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, text: str, fragment: str) -> None:
    path = settings_file(tmp_path, text)
    monkeypatch.setenv("PIGHAND_SETTINGS_FILE", path)
    with pytest.raises(SettingsError) as caught:
        load_settings()
    assert "\n" not in caught.value.message
    assert fragment in caught.value.message and path in caught.value.message


def test_a_missing_settings_file_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.toml")
    message = settings_error(PIGHAND_SETTINGS_FILE=missing)
    assert message == f"PIGHAND_SETTINGS_FILE={missing!r} is invalid: no such file"


@pytest.mark.parametrize("overrides,named", [
    ({"redis_url": "http://cache:6379"}, "redis_url"),
    ({"redis_sentinels": "cache-a,cache-b:26379", "redis_sentinel_master": "m"}, "redis_sentinels"),
    ({"redis_sentinels": "cache-a:26379"}, "redis_sentinel_master"),
    ({"redis_cluster_nodes": "cache-a:7000,cache-b"}, "redis_cluster_nodes"),
    ({"redis_cluster_nodes": "cache-a:70000"}, "redis_cluster_nodes"),
    ({"redis_cluster_nodes": "cache-a:7000", "redis_sentinels": "s:26379", "redis_sentinel_master": "m"},
     "redis_cluster_nodes"),
    ({"redis_cluster_nodes": "cache-a:7000", "redis_db": 2}, "redis_db"),
])
def test_redis_connection_settings_are_checked(overrides: dict[str, str], named: str) -> None:
    with pytest.raises(SettingsError) as info:
        load_settings(overrides=overrides, environ={})
    assert str(info.value).startswith(f"{named}=") and "\n" not in str(info.value)


@pytest.mark.parametrize(("name", "text"), [("worker_lifetime", "30"), ("http_header_timeout", "0"),
                                            ("http_header_timeout", "61")])
def test_server_limits_out_of_range_stop_with_the_setting_named(monkeypatch: pytest.MonkeyPatch, name: str,
                                                                 text: str) -> None:
    monkeypatch.setenv(f"PIGHAND_{name.upper()}", text)
    with pytest.raises(SettingsError, match=f"^{name}="):
        load_settings()
