"""Settings: precedence explicit argument > environment (YARD_*) > $YARD_HOME/config.yaml > default,
read at call time, nothing read or created at import."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from modelyard.config import Settings, load_settings, write_home_config
from modelyard.core import MetadataStore, Platform
from modelyard.errors import ConfigError, UsageError


def write_config(home: Path, text: str) -> Path:
    home.mkdir(parents=True, exist_ok=True)
    path = home / "config.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


# -- defaults ---------------------------------------------------------------------------------------------


def test_defaults_live_under_the_home(home: Path) -> None:
    s = load_settings()
    assert isinstance(s, Settings)
    assert s.home == home
    assert s.region == "local"
    assert s.project == "default"
    assert s.database_url is None and s.artifact_uri is None
    assert s.master_key is None and s.token is None
    assert s.resolved_database_url == f"sqlite:///{home / 'yard.db'}"
    assert s.resolved_artifact_uri == (home / "artifacts").as_uri()
    assert s.resolved_artifact_uri.startswith("file:///")
    assert s.resolved_key_file == home / "keys" / "master.key"
    assert not s.debug


def test_default_home_is_dot_modelyard(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("YARD_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    s = load_settings()
    assert s.home == tmp_path / "user" / ".modelyard"
    assert s.resolved_database_url == f"sqlite:///{tmp_path / 'user' / '.modelyard' / 'yard.db'}"
    assert not (tmp_path / "user").exists()


def test_home_is_expanded_and_absolute(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    assert load_settings(home="~/yard").home == tmp_path / "yard"
    monkeypatch.chdir(tmp_path)
    assert load_settings(home="relative").home == tmp_path / "relative"


# -- precedence -------------------------------------------------------------------------------------------


def test_region_precedence(monkeypatch: pytest.MonkeyPatch, home: Path) -> None:
    assert load_settings().region == "local"  # default
    write_config(home, "region: me-central-1\n")
    assert load_settings().region == "me-central-1"  # file beats default
    monkeypatch.setenv("YARD_REGION", "eu-west-1")
    assert load_settings().region == "eu-west-1"  # environment beats file
    assert load_settings(region="us-east-2").region == "us-east-2"  # argument beats environment
    assert load_settings(region=None).region == "eu-west-1"  # None means "not given"


def test_database_url_precedence(monkeypatch: pytest.MonkeyPatch, home: Path, tmp_path: Path) -> None:
    assert load_settings().resolved_database_url == f"sqlite:///{home / 'yard.db'}"
    write_config(home, f"database_url: sqlite:///{tmp_path / 'file.db'}\n")
    assert load_settings().resolved_database_url == f"sqlite:///{tmp_path / 'file.db'}"
    monkeypatch.setenv("YARD_DATABASE_URL", "postgresql+psycopg://env@db/yard")
    assert load_settings().resolved_database_url == "postgresql+psycopg://env@db/yard"
    arg = load_settings(database_url="postgresql://arg@db/yard")
    assert arg.resolved_database_url == "postgresql://arg@db/yard"


def test_artifact_uri_and_project_precedence(monkeypatch: pytest.MonkeyPatch, home: Path) -> None:
    write_config(home, "artifact_uri: s3://from-file/prefix\nproject: filed\n")
    s = load_settings()
    assert (s.resolved_artifact_uri, s.project) == ("s3://from-file/prefix", "filed")
    monkeypatch.setenv("YARD_ARTIFACT_URI", "s3://from-env")
    monkeypatch.setenv("YARD_PROJECT", "envproj")
    s = load_settings()
    assert (s.resolved_artifact_uri, s.project) == ("s3://from-env", "envproj")
    s = load_settings(artifact_uri="file:///tmp/arg", project="argproj")
    assert (s.resolved_artifact_uri, s.project) == ("file:///tmp/arg", "argproj")


def test_config_file_follows_the_chosen_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    env_home, arg_home = tmp_path / "env-home", tmp_path / "arg-home"
    write_config(env_home, "region: me-central-1\n")
    write_config(arg_home, "region: ap-south-1\n")
    monkeypatch.setenv("YARD_HOME", str(env_home))
    assert load_settings().region == "me-central-1"
    s = load_settings(home=arg_home)
    assert (s.home, s.region) == (arg_home, "ap-south-1")
    assert s.resolved_database_url == f"sqlite:///{arg_home / 'yard.db'}"


def test_settings_are_read_at_call_time(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("YARD_HOME", str(tmp_path / "a"))
    first = load_settings()
    monkeypatch.setenv("YARD_HOME", str(tmp_path / "b"))
    monkeypatch.setenv("YARD_REGION", "eu-west-1")
    second = load_settings()
    assert (first.home, first.region) == (tmp_path / "a", "local")
    assert (second.home, second.region) == (tmp_path / "b", "eu-west-1")


def test_secrets_come_from_the_environment_and_are_not_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("YARD_MASTER_KEY", "c2VjcmV0LW1hc3Rlci1rZXk=")
    monkeypatch.setenv("YARD_TOKEN", "yard_abc_secret-token")
    s = load_settings()
    assert s.master_key is not None and s.master_key.get_secret_value() == "c2VjcmV0LW1hc3Rlci1rZXk="
    assert s.token is not None and s.token.get_secret_value() == "yard_abc_secret-token"
    assert "c2VjcmV0" not in repr(s) and "secret-token" not in repr(s)


def test_write_home_config_round_trips(home: Path) -> None:
    home.mkdir()
    write_home_config(load_settings(), {"region": "me-central-1"})
    write_home_config(load_settings(), {"artifact_uri": "s3://bucket/x", "database_url": None})
    s = load_settings()
    assert (s.region, s.resolved_artifact_uri) == ("me-central-1", "s3://bucket/x")
    assert s.database_url is None


# -- errors -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("region", ["Mars", "eu_west_1", "-eu", "", "a" * 64, "eu west"])
def test_invalid_region_names_the_setting(region: str) -> None:
    with pytest.raises(ConfigError) as exc_info:
        load_settings(region=region)
    message = exc_info.value.message
    assert "region" in message and "YARD_REGION" in message
    assert "me-central-1" in message  # an example of what is expected


def test_invalid_region_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("YARD_REGION", "Not A Region")
    with pytest.raises(ConfigError, match="YARD_REGION"):
        load_settings()


def test_invalid_project_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("YARD_PROJECT", "../etc")
    with pytest.raises(ConfigError, match=r"project.*YARD_PROJECT"):
        load_settings()


def test_unknown_key_in_config_file(home: Path) -> None:
    path = write_config(home, "region: local\nregoin: me-central-1\n")
    with pytest.raises(ConfigError) as exc_info:
        load_settings()
    message = exc_info.value.message
    assert "regoin" in message and str(path) in message
    assert "region" in message.replace("regoin", "")  # lists what is allowed


@pytest.mark.parametrize("key", ["master_key", "token"])
def test_secrets_are_refused_in_the_config_file(home: Path, key: str) -> None:
    write_config(home, f"{key}: c2VjcmV0\n")
    with pytest.raises(ConfigError, match=key):
        load_settings()


def test_malformed_yaml(home: Path) -> None:
    path = write_config(home, "region: [me-central-1\n")
    with pytest.raises(ConfigError) as exc_info:
        load_settings()
    assert str(path) in exc_info.value.message
    assert "YAML" in exc_info.value.message


def test_config_file_must_be_a_mapping(home: Path) -> None:
    write_config(home, "- region\n- local\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_settings()


def test_unsafe_yaml_is_not_executed(home: Path, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    write_config(home, f"region: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(ConfigError):
        load_settings()
    assert not marker.exists()


def test_empty_config_file_is_fine(home: Path) -> None:
    write_config(home, "")
    assert load_settings().region == "local"


def test_bad_value_type_in_config_file(home: Path) -> None:
    write_config(home, "debug: [1, 2]\n")
    with pytest.raises(ConfigError, match="debug"):
        load_settings()


def test_unknown_argument() -> None:
    with pytest.raises(ConfigError, match="bogus"):
        load_settings(bogus=1)


@pytest.mark.parametrize("url", ["mysql://root@localhost/yard", "mongodb://h/db", "oracle://scott@h/db"])
def test_bad_database_url_scheme_lists_the_valid_schemes(url: str) -> None:
    settings = load_settings(database_url=url)  # accepted as a string; checked when a store opens
    with pytest.raises(UsageError) as exc_info:
        MetadataStore(settings.resolved_database_url)
    message = exc_info.value.message
    assert url.split(":")[0] in message
    assert "sqlite://" in message and "postgresql://" in message


def test_database_url_that_is_not_a_url() -> None:
    with pytest.raises(UsageError, match=r"sqlite:///.*postgresql"):
        MetadataStore("not a url at all")


# -- nothing at import time -------------------------------------------------------------------------------


def test_import_then_load_creates_nothing(tmp_path: Path) -> None:
    home = tmp_path / "missing-home"
    script = textwrap.dedent(
        """
        import os
        from pathlib import Path

        home = Path(os.environ["YARD_HOME"])
        import modelyard
        import modelyard.config
        assert not home.exists()
        s = modelyard.config.load_settings()
        assert s.home == home
        assert s.resolved_database_url.endswith("yard.db") and s.resolved_key_file.name == "master.key"
        assert not home.exists()
        os.environ["YARD_REGION"] = "me-central-1"  # read at call time, not at import
        assert modelyard.config.load_settings().region == "me-central-1"
        print("ok")
        """
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("YARD_")}
    env["YARD_HOME"] = str(home)
    r = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "ok"
    assert not home.exists()


def test_import_ignores_an_invalid_environment(tmp_path: Path) -> None:
    script = "import modelyard, modelyard.config, modelyard.errors; print('imported')"
    env = {k: v for k, v in os.environ.items() if not k.startswith("YARD_")}
    env.update({"YARD_HOME": str(tmp_path / "nope"), "YARD_REGION": "NOT VALID", "YARD_DEBUG": "maybe"})
    r = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "imported"
    assert not (tmp_path / "nope").exists()


def test_a_name_with_a_final_newline_is_refused_everywhere(platform: Platform) -> None:
    """A regex ``$`` also matches before a final newline: "alice\\n" passed as a user distinct from "alice"
    that every listing shows as "alice" (an audit log naming the wrong person), "m\\n@prod\\n" as a model."""
    from modelyard.config import check_name
    from modelyard.core import Role, add_user
    from modelyard.registry import parse_spec

    for name in ("alice\n", "alice\n\n"):
        with pytest.raises(ValueError, match="not valid"):
            check_name(name, "user")
        with pytest.raises(UsageError):
            add_user(platform, platform.context(), name, Role.VIEWER)
    for spec in ("m\n", "m@prod\n", "m\n@3"):
        with pytest.raises(UsageError):
            parse_spec(spec)
    with pytest.raises(ConfigError):
        load_settings(region="me-central-1\n")
    assert check_name("alice", "user") == "alice" and parse_spec("m@prod") == ("m", "prod")
