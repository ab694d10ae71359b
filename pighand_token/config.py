"""Settings: dynaconf layers, validated once, handed out as a frozen dataclass.

Layers, lowest first: ``[default]`` < the environment named by ``PIGHAND_ENV``
(development, testing, production) < ``PIGHAND_<NAME>`` environment variables.
The names are the original service's (``corn_interval``, ``save_model``,
``redis_pwd`` ...) because existing deployments set them.
"""

from __future__ import annotations

import math
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from dynaconf import Dynaconf

from .core.egress import no_proxy_problem, proxy_url_problem, redact_url
from .core.errors import SettingsError
from .core.proxies import parse_networks, split_entries

SETTINGS_DIR = Path(__file__).resolve().parent.parent / "settings"
ENVIRONMENTS = ("development", "testing", "production")
SAVE_MODELS = ("auto", "all")
WECHAT_TOKEN_MODES = ("stable", "classic")
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
# The SDKs whose Redis keys the hub can write too (adapters/redis_compat.py).
REDIS_COMPAT_SDKS = ("wxjava", "silenceper", "wechatpy")


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
    database_url: str = ""
    redis_host: str = ""
    redis_port: int = 6379
    redis_pwd: str = ""
    redis_db: int = 0
    redis_key_prefix: str = ""
    redis_url: str = ""
    redis_sentinels: str = ""
    redis_sentinel_master: str = ""
    redis_cluster_nodes: str = ""
    is_enable_schedule: bool = True
    corn_interval: int = 300
    save_model: str = "auto"
    local_cache_ttl: int = 5
    wechat_api_base: str = "https://api.weixin.qq.com"
    wechat_token_mode: str = "stable"
    feishu_api_base: str = "https://open.feishu.cn"
    lark_api_base: str = "https://open.larksuite.com"
    wecom_api_base: str = "https://qyapi.weixin.qq.com"
    dingtalk_api_base: str = "https://api.dingtalk.com"
    alipay_gateway: str = "https://openapi.alipay.com/gateway.do"
    upstream_timeout: float = 5.0
    failure_cooldown: float = 5.0
    auth_required: bool = True
    encryption_key: str = ""
    refresh_limit_per_minute: int = 10
    refresh_rate_limit: int = 20
    fast_path: bool = True
    http_header_timeout: float = 10.0
    worker_lifetime: int = 0
    cpu_affinity: bool = True
    trusted_proxies: tuple[str, ...] = ()
    # May carry the proxy's user:password: kept out of the repr.
    platform_http_proxy: str = field(default="", repr=False)
    no_proxy: tuple[str, ...] = ()
    redis_compat: tuple[str, ...] = ()
    redis_compat_wxjava_prefix: str = "wx"
    redis_compat_wxjava_cp_prefix: str = "wx:cp"
    redis_compat_wechatpy_prefix: str = "wechatpy"
    proxy_max_body: int = 20 * 1024 * 1024
    proxy_timeout: float = 30.0
    proxy_rate_limit: int = 0

    @property
    def uses_mysql(self) -> bool:
        return bool(self.mysql_host)

    @property
    def uses_redis(self) -> bool:
        return bool(self.redis_host or self.redis_url or self.redis_sentinels or self.redis_cluster_nodes)


@dataclass(frozen=True)
class _Rule:
    """What one setting accepts, and how its ``PIGHAND_<NAME>`` text is read."""

    kind: str  # "bool", "int", "number", "text", "choice", "networks", "hosts" or "choices"
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] = ()
    low_included: bool = False  # "number" only: may the value equal low?

    @property
    def allowed(self) -> str:
        if self.kind == "bool":
            return "true, false"
        if self.kind == "int":
            return f"a whole number >= {self.low:g}" + (f" and <= {self.high:g}" if self.high is not None else "")
        if self.kind == "number":
            return f"a number {'>=' if self.low_included else '>'} {self.low:g}"
        if self.kind == "choice":
            return ", ".join(self.choices)
        if self.kind == "networks":
            return "IP addresses or CIDR networks (IPv4, IPv6), comma-separated: 10.0.0.0/8,::1"
        if self.kind == "hosts":
            return ("host names (with their subdomains), IP addresses, CIDR networks, each with an optional "
                    ":port, or *, comma-separated: internal.example.com,10.0.0.0/8")
        if self.kind == "choices":
            return f"a list of any of {', '.join(self.choices)} (or comma-separated text)"
        return "a string"

    def accepts(self, value: Any) -> bool:
        if self.kind == "bool":
            return isinstance(value, bool)
        if self.kind == "text":
            return isinstance(value, str)
        if self.kind == "choice":
            return isinstance(value, str) and value in self.choices
        if self.kind == "networks":
            return not _networks_problem(value)
        if self.kind == "hosts":
            entries = split_entries(value)
            return entries is not None and no_proxy_problem(entries) is None
        if self.kind == "choices":
            entries = split_entries(value)
            return entries is not None and all(entry in self.choices for entry in entries)
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if self.kind == "int":
            return isinstance(value, int) and value >= (self.low or 0) and (self.high is None or value <= self.high)
        low = self.low or 0
        return math.isfinite(value) and (value >= low if self.low_included else value > low)

    def from_env(self, text: str) -> Any:
        """The typed value of an environment variable; text that does not
        parse is returned as it is, so validation names what was given."""
        if self.kind in ("text", "choice", "networks", "hosts", "choices"):
            return text
        word = text.strip()
        if self.kind == "bool":
            return _BOOL_WORDS.get(word.lower(), text)
        if self.kind == "int" and re.fullmatch(r"[+-]?[0-9]+", word):
            return int(word)
        if self.kind == "number":
            try:
                return float(word)
            except ValueError:
                return text
        return text


_BOOL_WORDS = {"true": True, "false": False, "1": True, "0": False, "yes": True, "no": False,
               "on": True, "off": False}

RULES: dict[str, _Rule] = {
    "is_enable_env": _Rule("bool"),
    "host": _Rule("text"),
    "port": _Rule("int", 1, 65535),
    "workers": _Rule("int", 0, 256),
    "threads": _Rule("int", 0, 1024),
    "log_level": _Rule("choice", choices=LOG_LEVELS),
    "mysql_host": _Rule("text"),
    "mysql_port": _Rule("int", 1, 65535),
    "mysql_username": _Rule("text"),
    "mysql_password": _Rule("text"),
    "mysql_database": _Rule("text"),
    "mysql_log": _Rule("bool"),
    "sqlite_path": _Rule("text"),
    "database_url": _Rule("text"),
    "redis_host": _Rule("text"),
    "redis_port": _Rule("int", 1, 65535),
    "redis_pwd": _Rule("text"),
    "redis_db": _Rule("int", 0, 10_000),
    "redis_key_prefix": _Rule("text"),
    "is_enable_schedule": _Rule("bool"),
    "corn_interval": _Rule("int", 1),
    "refresh_limit_per_minute": _Rule("int", 1),
    "refresh_rate_limit": _Rule("int", 1, 10_000),
    "save_model": _Rule("choice", choices=SAVE_MODELS),
    "local_cache_ttl": _Rule("int", 0),
    "wechat_api_base": _Rule("text"),
    "wechat_token_mode": _Rule("choice", choices=WECHAT_TOKEN_MODES),
    "upstream_timeout": _Rule("number", 0),
    "http_header_timeout": _Rule("number", 0),
    "trusted_proxies": _Rule("networks"),
    "platform_http_proxy": _Rule("text"),
    "no_proxy": _Rule("hosts"),
    "redis_compat": _Rule("choices", choices=REDIS_COMPAT_SDKS),
    "proxy_max_body": _Rule("int", 0),
    "proxy_timeout": _Rule("number", 0),
    "proxy_rate_limit": _Rule("int", 0, 1_000_000),
}
SECTIONS = ("default", *ENVIRONMENTS)
_RULES_BY_TYPE = {"str": _Rule("text"), "bool": _Rule("bool"), "int": _Rule("int", 0),
                  "float": _Rule("number", 0, low_included=True)}


def _rules() -> dict[str, _Rule]:
    """A rule for every setting: its own from RULES, else one from its type."""
    rules = {}
    for f in fields(Settings):
        if f.name == "env":
            continue
        type_name = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", "")
        rules[f.name] = RULES.get(f.name) or _RULES_BY_TYPE[type_name]
    return rules


def _read_files(env: str, files: list[str], label: dict[str, str]) -> dict[str, Any]:
    """The [default] < [<env>] layers of the settings files (no environment
    variables: those are read from ``environ`` by :func:`load_settings`)."""
    for path in label:
        try:
            with open(path, "rb") as fh:
                document = tomllib.load(fh)
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise SettingsError(f"{label[path]}={path!r} is invalid: {_first_line(str(exc))}") from None
        # dynaconf silently skips keys outside the environment sections.
        stray = [key for key in document if key.lower() not in SECTIONS and not key.lower().startswith("dynaconf")]
        if stray:
            raise SettingsError(
                f"{label[path]}={path!r} is invalid: unknown top-level key {stray[0]!r}; "
                f"put settings under {', '.join(f'[{s}]' for s in SECTIONS)}"
            )
    try:
        dyn = Dynaconf(
            settings_files=files,
            environments=True,
            force_env=env,
            # None turns off dynaconf's environment-variable loader entirely
            # (it would also read DYNACONF_* and parse every value as TOML).
            envvar_prefix=None,
            load_dotenv=False,
            merge_enabled=False,
        )
        return {name: dyn.get(name) for name in _rules() if dyn.get(name) is not None}
    except Exception as exc:  # noqa: BLE001 - dynaconf raises many kinds; all mean a bad file
        raise SettingsError(f"settings files {', '.join(files)} are invalid: {_first_line(str(exc))}") from None


def load_settings(overrides: Mapping[str, Any] | None = None,
                  environ: Mapping[str, str] | None = None) -> Settings:
    """Read every layer, validate, and return typed settings.

    ``environ`` (default ``os.environ``) supplies ``PIGHAND_ENV``,
    ``PIGHAND_SETTINGS_FILE`` and the ``PIGHAND_<NAME>`` layer.
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
    main = str(SETTINGS_DIR / "settings.toml")
    files = [main]
    label = {main: "settings file"}
    local = SETTINGS_DIR / "settings.local.toml"
    if local.is_file():
        label[str(local)] = "settings file"
    extra = environ.get("PIGHAND_SETTINGS_FILE")
    if extra:
        if not Path(extra).is_file():
            raise SettingsError(f"PIGHAND_SETTINGS_FILE={extra!r} is invalid: no such file")
        files.append(extra)
        label[extra] = "PIGHAND_SETTINGS_FILE"
    raw = _read_files(env, files, label)
    rules = _rules()

    from_env = {name: rule.from_env(environ[f"PIGHAND_{name.upper()}"])
                for name, rule in rules.items() if f"PIGHAND_{name.upper()}" in environ}
    switch = from_env.get("is_enable_env")
    if switch is False or (switch is None and raw.get("is_enable_env", True) is False):
        raw["is_enable_env"] = False
    elif raw.get("is_enable_env", True) is not False:
        raw.update(from_env)
    raw.update({k.lower(): v for k, v in (overrides or {}).items() if k.lower() in rules})

    for name, rule in rules.items():
        if name in raw and not rule.accepts(raw[name]):
            raise SettingsError(f"{name}={raw[name]!r} is invalid: allowed values are {rule.allowed}"
                                + (_networks_problem(raw[name]) if rule.kind == "networks" else "")
                                + (_hosts_problem(raw[name]) if rule.kind == "hosts" else ""))
    for name, rule in rules.items():
        if rule.kind == "number" and name in raw:
            raw[name] = float(raw[name])
        if rule.kind == "networks" and name in raw:
            raw[name] = _networks(raw[name])
        if rule.kind in ("hosts", "choices") and name in raw:
            raw[name] = tuple(dict.fromkeys(split_entries(raw[name]) or ()))
    settings = Settings(env=env, **raw)
    _check_combinations(settings)
    return settings


def _check_combinations(settings: Settings) -> None:
    if settings.platform_http_proxy:
        problem = proxy_url_problem(settings.platform_http_proxy)
        if problem:
            # The URL may carry the proxy's password: never shown.
            raise SettingsError(f"platform_http_proxy={redact_url(settings.platform_http_proxy)!r} is invalid: "
                                f"{problem}; allowed values are '' (no proxy) or http://[user:password@]host:port")
    if settings.redis_compat and not settings.uses_redis:
        # The SDKs would find no keys and fetch tokens themselves, knocking
        # out the hub's (40001): refuse rather than run without the keys.
        raise SettingsError(f"redis_compat={list(settings.redis_compat)!r} is invalid: the SDK keys are written to "
                            "Redis, and no Redis is configured (redis_host, redis_url, redis_sentinels or "
                            "redis_cluster_nodes); allowed values without Redis are []")
    if settings.worker_lifetime and settings.worker_lifetime < 60:
        raise SettingsError(f"worker_lifetime={settings.worker_lifetime!r} is invalid: allowed values are 0 (workers "
                            "live until stopped) or a whole number of seconds >= 60")
    if settings.http_header_timeout > 60:
        raise SettingsError(f"http_header_timeout={settings.http_header_timeout!r} is invalid: allowed values are "
                            "numbers of seconds > 0 and <= 60")
    if settings.env == "production" and not settings.encryption_key.strip():
        raise SettingsError("encryption_key='' is invalid: production needs at least one Fernet key "
                            "(make one with python3 -c 'from cryptography.fernet import Fernet; "
                            "print(Fernet.generate_key().decode())')")
    if settings.env == "production" and not settings.auth_required:
        # Behind a reverse proxy on the same host every caller is loopback:
        # "loopback only" would hand every token to anyone the proxy lets in.
        raise SettingsError("auth_required=False is invalid: production serves callers with API keys only "
                            "(add them with pighand-token client add); allowed values are true")
    if settings.redis_url and not settings.redis_url.startswith(("redis://", "rediss://", "unix://")):
        # The URL may carry a password: show only its scheme.
        scheme = settings.redis_url.split("://", 1)[0] + "://..." if "://" in settings.redis_url else "..."
        raise SettingsError(
            f"redis_url={scheme!r} is invalid: allowed values are redis://, rediss:// or unix:// URLs")
    if settings.redis_sentinels:
        for item in settings.redis_sentinels.split(","):
            host, _, port = item.strip().rpartition(":")
            if not host or not port.isdigit():
                raise SettingsError(f"redis_sentinels={settings.redis_sentinels!r} is invalid: "
                                    "allowed values are host:port[,host:port...]")
        if not settings.redis_sentinel_master:
            raise SettingsError("redis_sentinel_master='' is invalid: allowed values are the master's name "
                                "(required with redis_sentinels)")
    if settings.redis_cluster_nodes:
        for item in settings.redis_cluster_nodes.split(","):
            host, _, port = item.strip().rpartition(":")
            if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
                raise SettingsError(f"redis_cluster_nodes={settings.redis_cluster_nodes!r} is invalid: "
                                    "allowed values are host:port[,host:port...] (any nodes of the cluster)")
        if settings.redis_sentinels or settings.redis_sentinel_master:
            raise SettingsError(f"redis_cluster_nodes={settings.redis_cluster_nodes!r} is invalid: allowed "
                                "values are cluster nodes without redis_sentinels/redis_sentinel_master "
                                "(a cluster has no Sentinel)")
        if settings.redis_db:
            raise SettingsError(f"redis_db={settings.redis_db!r} is invalid: allowed values are 0 with "
                                "redis_cluster_nodes (a cluster has database 0 only)")


def _networks(value: object) -> tuple[str, ...]:
    """A ``networks`` value as canonical CIDR strings; ValueError saying
    what is wrong with it."""
    entries = split_entries(value)
    if entries is None:
        raise ValueError("give a list of strings or comma-separated text")
    return tuple(str(network) for network in parse_networks(entries))


def _networks_problem(value: object) -> str:
    try:
        _networks(value)
    except ValueError as exc:
        return f"; {exc}"
    return ""


def _hosts_problem(value: object) -> str:
    entries = split_entries(value)
    if entries is None:
        return "; give a list of strings or comma-separated text"
    problem = no_proxy_problem(entries)
    return f"; {problem}" if problem else ""


def _first_line(message: str) -> str:
    return message.strip().splitlines()[0] if message.strip() else "invalid settings"
