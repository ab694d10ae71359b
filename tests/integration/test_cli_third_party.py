"""``platform add`` for a third-party app (wechat_component), as operators
run it: the app secret, the callback Token and the EncodingAESKey stored
together and encrypted, given as options or prompted for (hidden), and never
printed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import clean_env
from tests.fakes.wechat import FakeWeChat
from tests.integration.test_cli import Cli, no_secret

COMPONENT = "wx0123456789abcdef"
SECRET = "component-secret-5d1c"
CALLBACK_TOKEN = "callback-token-77ab"
AES_KEY = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"  # 43 characters, as the consoles issue them


@pytest.fixture
def cli(tmp_path: Path, wechat: FakeWeChat) -> Cli:
    sqlite_path = tmp_path / "pighand.sqlite3"
    env = clean_env(sqlite_path=sqlite_path, wechat_api_base=wechat.base_url, is_enable_schedule=False,
                    upstream_timeout=2)
    return Cli("sqlite", env, sqlite_path, "")


def stored_secrets(cli: Cli) -> dict[str, str]:
    [(platform, appid, secret)] = cli.credentials()
    assert (platform, appid) == ("wechat_component", COMPONENT)
    return dict(json.loads(secret))


def test_platform_add_wechat_component_stores_secret_token_and_key_together(cli: Cli) -> None:
    result = cli("platform", "add", "wechat_component", COMPONENT, "--secret-file", "-",
                 "--callback-token", CALLBACK_TOKEN, "--encoding-aes-key", AES_KEY, input=SECRET + "\n")
    assert result.returncode == 0, result.stderr
    assert f"added wechat_component {COMPONENT}" in result.stdout
    no_secret(result, SECRET, CALLBACK_TOKEN, AES_KEY)
    assert stored_secrets(cli) == {"secret": SECRET, "callback_token": CALLBACK_TOKEN, "encoding_aes_key": AES_KEY}
    # Encrypted at rest: the row holds none of them in the clear.
    [(row,)] = cli.sql("SELECT secret FROM platform")
    for value in (SECRET, CALLBACK_TOKEN, AES_KEY):
        assert value not in str(row)
    listed = cli("platform", "list")
    assert listed.returncode == 0 and COMPONENT in listed.stdout
    no_secret(listed, SECRET, CALLBACK_TOKEN, AES_KEY)


def test_platform_add_wechat_component_prompts_for_what_is_omitted(cli: Cli) -> None:
    result = cli("platform", "add", "wechat_component", COMPONENT,
                 input=f"{SECRET}\n{CALLBACK_TOKEN}\n{AES_KEY}\n")
    assert result.returncode == 0, result.stderr
    asked = (result.stdout + result.stderr).lower()
    assert "secret" in asked and "callback-token" in asked and "encoding-aes-key" in asked
    no_secret(result, SECRET, CALLBACK_TOKEN, AES_KEY)
    assert stored_secrets(cli) == {"secret": SECRET, "callback_token": CALLBACK_TOKEN, "encoding_aes_key": AES_KEY}


def refused(cli: Cli, *args: str, input: str, hidden: tuple[str, ...]) -> str:
    """Run a command that must fail with one 'Error:' line showing none of
    ``hidden``; that line."""
    result = cli(*args, input=input)
    assert result.returncode != 0, result.stdout
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    no_secret(result, *hidden)
    return errors[0]


def test_platform_add_refuses_an_encoding_aes_key_that_cannot_decrypt(cli: Cli) -> None:
    short = AES_KEY[:-1]
    error = refused(cli, "platform", "add", "wechat_component", COMPONENT, "--secret-file", "-",
                    "--callback-token", CALLBACK_TOKEN, "--encoding-aes-key", short, input=SECRET + "\n",
                    hidden=(SECRET, CALLBACK_TOKEN, short))
    assert "EncodingAESKey" in error
    assert cli.credentials() == []


def test_callback_options_are_refused_for_a_platform_without_callbacks(cli: Cli) -> None:
    error = refused(cli, "platform", "add", "wechat", "wx_app_1", "--secret-file", "-",
                    "--callback-token", CALLBACK_TOKEN, input=SECRET + "\n", hidden=(SECRET, CALLBACK_TOKEN))
    assert "takes no callback" in error
    assert cli.credentials() == []
