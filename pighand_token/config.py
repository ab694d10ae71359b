"""Settings: dynaconf layers, validated once, handed out as a frozen dataclass.

Layers, lowest first: ``[default]`` < the environment named by ``PIGHAND_ENV``
(development, testing, production) < ``PIGHAND_<NAME>`` environment variables.
The names are the original service's (``corn_interval``, ``save_model``,
``redis_pwd`` ...) because existing deployments set them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from dynaconf import Dynaconf, ValidationError, Validator

from .errors import SettingsError

SETTINGS_DIR = Path(__file__).resolve().parent.parent / "settings"
ENVIRONMENTS = ("development", "testing", "production")
SAVE_MODELS = ("auto", "all")
WECHAT_TOKEN_MODES = ("stable", "classic")
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


@dataclass(frozen=True)
class Settings:
    env: str = "development"
    is_enable_env: bool = True
    host: str = "127.0.0.1"
    port: int = 3050
    workers: int = 0
    threads: int = 0
    log_level: str = "info"
    mysql_host: str = ""
    mysql_port: int = 3306
    mysql_username: str = "root"
    mysql_password: str = ""
    mysql_database: str = "pighand_token"
    mysql_log: bool = False
    sqlite_path: str = "instance/pighand.sqlite3"
    redis_host: str = ""
    redis_port: int = 6379
    redis_pwd: str = ""
    redis_db: int = 0
    redis_key_prefix: str = ""
    is_enable_schedule: bool = True
    corn_interval: int = 300
    save_model: str = "auto"
    local_cache_ttl: int = 30
    wechat_api_base: str = "https://api.weixin.qq.com"
    wechat_token_mode: str = "stable"
    upstream_timeout: float = 5.0

    @property
    def uses_mysql(self) -> bool:
        return bool(self.mysql_host)

    @property
    def uses_redis(self) -> bool:
        return bool(self.redis_host)


def _validators() -> list[Validator]:
    def one_of(name: str, allowed: tuple[str, ...]) -> Validator:
        return Validator(
            name,
            is_in=allowed,
            messages={"operations": f"{name}={{value!r}} is invalid: allowed values are {', '.join(allowed)}"},
        )

    def integer(name: str, low: int, high: int | None = None) -> Validator:
        allowed = f"a whole number >= {low}" + (f" and <= {high}" if high is not None else "")
        checks: dict[str, Any] = {"gte": low}
        if high is not None:
            checks["lte"] = high
        return Validator(
            name,
            is_type_of=int,
            messages={
                "operations": f"{name}={{value!r}} is invalid: allowed values are {allowed}",
            },
            **checks,
        )

    def number(name: str, low: float) -> Validator:
        return Validator(
            name,
            is_type_of=(int, float),
            gt=low,
            messages={"operations": f"{name}={{value!r}} is invalid: allowed values are a number > {low}"},
        )

    def boolean(name: str) -> Validator:
        return Validator(
            name,
            is_type_of=bool,
            messages={"operations": f"{name}={{value!r}} is invalid: allowed values are true, false"},
        )

    def text(name: str) -> Validator:
        return Validator(
            name,
            is_type_of=str,
            messages={"operations": f"{name}={{value!r}} is invalid: allowed values are a string"},
        )

    return [
        boolean("is_enable_env"),
        text("host"),
        integer("port", 1, 65535),
        integer("workers", 0, 256),
        integer("threads", 0, 1024),
        one_of("log_level", LOG_LEVELS),
        text("mysql_host"),
        integer("mysql_port", 1, 65535),
        text("mysql_username"),
        text("mysql_password"),
        text("mysql_database"),
        boolean("mysql_log"),
        text("sqlite_path"),
        text("redis_host"),
        integer("redis_port", 1, 65535),
        text("redis_pwd"),
        integer("redis_db", 0, 10_000),
        text("redis_key_prefix"),
        boolean("is_enable_schedule"),
        integer("corn_interval", 1),
        one_of("save_model", SAVE_MODELS),
        integer("local_cache_ttl", 0),
        text("wechat_api_base"),
        one_of("wechat_token_mode", WECHAT_TOKEN_MODES),
        number("upstream_timeout", 0),
    ]


def _build(env: str, *, with_env_vars: bool, settings_files: list[str]) -> Dynaconf:
    return Dynaconf(
        settings_files=settings_files,
        environments=True,
        env=env,
        # None turns off dynaconf's environment-variable loader entirely.
        envvar_prefix="PIGHAND" if with_env_vars else None,
        load_dotenv=False,
        merge_enabled=False,
    )


def _fix_string_types(raw: dict[str, Any]) -> dict[str, Any]:
    # dynaconf parses PIGHAND_MYSQL_PASSWORD=1234 as the integer 1234; for the
    # settings that are strings by nature keep the text the operator typed.
    string_names = {f.name for f in fields(Settings) if f.type in ("str", str)}
    return {k: (str(v) if k in string_names and isinstance(v, int | float) and not isinstance(v, bool) else v)
            for k, v in raw.items()}


def load_settings(overrides: Mapping[str, Any] | None = None,
                  environ: Mapping[str, str] | None = None) -> Settings:
    """Read every layer, validate, and return typed settings.

    ``overrides`` sit above every layer (tests and the CLI use them). Raises
    :class:`SettingsError` with one line naming the setting, its value and
    what is allowed.
    """
    environ = os.environ if environ is None else environ
    env = environ.get("PIGHAND_ENV", "development").strip().lower() or "development"
    if env not in ENVIRONMENTS:
        raise SettingsError(
            f"PIGHAND_ENV={env!r} is invalid: allowed values are {', '.join(ENVIRONMENTS)}"
        )
    files = [str(SETTINGS_DIR / "settings.toml")]
    extra = environ.get("PIGHAND_SETTINGS_FILE")
    if extra:
        if not Path(extra).is_file():
            raise SettingsError(f"PIGHAND_SETTINGS_FILE={extra!r} is invalid: no such file")
        files.append(extra)

    files_only = _build(env, with_env_vars=False, settings_files=files)
    enable_env = files_only.get("is_enable_env", True)
    env_switch = environ.get("PIGHAND_IS_ENABLE_ENV")
    if env_switch is not None and env_switch.strip().lower() in ("false", "0", "no", "off"):
        enable_env = False
    dyn = _build(env, with_env_vars=bool(enable_env), settings_files=files) if enable_env else files_only
    if overrides:
        dyn.update({k.upper(): v for k, v in overrides.items()})

    known = {f.name for f in fields(Settings)} - {"env"}
    raw = {name: dyn.get(name) for name in known if dyn.get(name) is not None}
    raw = _fix_string_types(raw)
    checker = Dynaconf(settings_files=[], environments=False, envvar_prefix=None, load_dotenv=False)
    checker.update({k.upper(): v for k, v in raw.items()})
    checker.validators.register(*_validators())
    try:
        checker.validators.validate_all()
    except ValidationError as exc:
        raise SettingsError(_first_line(str(exc))) from None
    values: dict[str, Any] = {k: checker.get(k) for k in raw}
    if "upstream_timeout" in values:
        values["upstream_timeout"] = float(values["upstream_timeout"])
    return Settings(env=env, **values)


def _first_line(message: str) -> str:
    return message.strip().splitlines()[0] if message.strip() else "invalid settings"
