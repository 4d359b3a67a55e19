"""Settings that cannot work are refused when they load, naming the field, never echoing a secret."""

from __future__ import annotations

import typing
from pathlib import Path

import pydantic
import pytest

from server.accounts.credentials import parse_api_keys
from server.backends.factory import BACKEND_FACTORIES
from server.registry import ModelRegistry
from server.settings import ModelKind, load_settings

SECRET = "sk-very-secret-0123456789"


def _refused(tmp_path: Path, toml: str) -> str:
    config = tmp_path / "config.toml"
    config.write_text(toml)
    with pytest.raises((pydantic.ValidationError, ValueError)) as refused:
        load_settings(config)
    return str(refused.value)


@pytest.mark.parametrize(("toml", "field"), [
    (f'api_keys = ["{SECRET}:pro"]', "api_keys"),
    ("key_pepper = 98765432101234", "key_pepper"),  # a number where a string belongs
    (f'url_signing_key = ["{SECRET}"]', "url_signing_key"),
    (f'databaseurl = "postgresql://u:{SECRET}@h/db"', "databaseurl"),
    (f'[providers.openai]\napikey = "{SECRET}"', "providers.openai.apikey"),
    (f'[providers.azure]\napi_key = "{SECRET}"', "providers.azure"),
    (f'[providers.openai]\napi_key = ["{SECRET}"]', "providers.openai.api_key"),
])
def test_a_wrong_field_is_named_and_its_secret_value_is_not_echoed(tmp_path: Path, toml: str, field: str) -> None:
    message = _refused(tmp_path, toml)
    assert field in message
    assert SECRET not in message and "98765432101234" not in message


@pytest.mark.parametrize(("toml", "field"), [
    ("[models.flux-dev]\nprice_usd = inf", "models.flux-dev.price_usd"),
    ('[models.sim]\nkind = "simulated"\nstep_seconds_per_megapixel = nan', "models.sim.step_seconds_per_megapixel"),
    ('[models.mine]\nkind = "fluxx"', "models.mine.kind"),
    ('[models.flux-dev]\nsizes = ["abc"]', "models.flux-dev.sizes"),
    ('[providers.openai]\nbase_url = "http://"', "providers.openai.base_url"),
    ('[providers.openai]\nbase_url = "http://example.com:notaport/"', "providers.openai.base_url"),
    ('log_level = "verbose"', "log_level"),
    ('host = "not..a..host"', "host"),
    ('public_url = "not-a-url"', "public_url"),
])
def test_values_that_cannot_work_are_refused(tmp_path: Path, toml: str, field: str) -> None:
    assert field in _refused(tmp_path, toml)


def test_config_file_that_is_not_toml_names_the_file(tmp_path: Path) -> None:
    config = tmp_path / "binary.toml"
    config.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ValueError, match=f"config file {config} is not valid TOML"):
        load_settings(config)
    config.write_text("host = [unclosed")
    with pytest.raises(ValueError, match=f"config file {config} is not valid TOML"):
        load_settings(config)


def test_accepted_forms_still_load() -> None:
    settings = load_settings(log_level="WARNING", host="my-gpu-box.internal", public_url="https://img.example.com/")
    assert (settings.log_level, settings.public_url) == ("warning", "https://img.example.com")
    assert load_settings(host="::1").host == "::1" and load_settings(host="0.0.0.0").host == "0.0.0.0"
    assert load_settings(host="image_server").host == "image_server"  # a compose service name


def test_model_kinds_match_the_backends() -> None:
    assert set(typing.get_args(ModelKind)) == set(BACKEND_FACTORIES)


def test_a_new_model_without_a_kind_is_refused_naming_it() -> None:
    with pytest.raises(ValueError, match=r"\[models.mine\] is not a built-in model, so it needs `kind`"):
        ModelRegistry.from_overrides({"mine": {"price_usd": 1.0}})


def test_api_keys_never_echo_a_key_in_their_errors() -> None:
    with pytest.raises(ValueError, match="entry #1 has an unknown tier") as refused:
        parse_api_keys("SEKRET:PART2")
    assert "PART2" not in str(refused.value)
    with pytest.raises(ValueError, match="entry #2 repeats an earlier key") as repeated:
        parse_api_keys(f"{SECRET}:pro,{SECRET}:free")
    assert SECRET not in str(repeated.value)


def test_a_default_model_that_does_not_exist_is_refused_at_start(tmp_path: Path) -> None:
    from server.app import create_app

    with pytest.raises(ValueError, match="there is no model 'nope'; models: dall-e-3"):
        create_app(load_settings(data_dir=tmp_path, default_model="nope"))
