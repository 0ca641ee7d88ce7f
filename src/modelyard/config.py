"""Typed settings, read at call time.

Precedence: explicit argument > environment (``YARD_*``) > ``$YARD_HOME/config.yaml`` > default.
Nothing is read or created at import time: call :func:`load_settings` when you need the values.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from modelyard.errors import ConfigError

CONFIG_FILE = "config.yaml"
_REGION_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}\Z")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z")
_MAX_JOB_S = 30 * 86400.0
_SIZE_RE = re.compile(r"^\s*([0-9]{1,15}(?:\.[0-9]{1,6})?)\s*([kmgtp]?)(?:i?b?)\s*\Z", re.IGNORECASE)


def default_home() -> Path:
    return Path(os.environ.get("YARD_HOME") or Path.home() / ".modelyard").expanduser()


class _HomeYamlSource(PydanticBaseSettingsSource):
    """Reads ``config.yaml`` from the home the higher-precedence sources point at."""

    def __init__(self, settings_cls: type[BaseSettings], init_kwargs: dict[str, Any]) -> None:
        super().__init__(settings_cls)
        self._init_kwargs = init_kwargs

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # unused: __call__ returns the whole mapping

    def __call__(self) -> dict[str, Any]:
        home = self._init_kwargs.get("home") or default_home()
        path = Path(home).expanduser() / CONFIG_FILE
        if not path.is_file():
            return {}
        import yaml  # only when there is a file to read: it is a tenth of a CLI command's imports

        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read {path}: {exc}; fix the YAML or delete the file") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"{path} must be a mapping of settings, got {type(data).__name__}")
        allowed = set(self.settings_cls.model_fields) - {"master_key", "token"}
        unknown = sorted(set(data) - allowed)
        if unknown:
            raise ConfigError(f"{path}: unknown setting(s) {unknown}; expected some of {sorted(allowed)}")
        return data


class Settings(BaseSettings):
    """Platform settings. Environment variables are the field names upper-cased with ``YARD_``."""

    model_config = SettingsConfigDict(env_prefix="YARD_", extra="forbid", frozen=True)

    home: Path = Field(default_factory=default_home)
    database_url: str | None = None
    artifact_uri: str | None = None
    master_key: SecretStr | None = None
    master_key_file: Path | None = None
    region: str = "local"
    project: str = "default"
    token: SecretStr | None = None
    s3_endpoint_url: str | None = None
    debug: bool = False
    # Tracking: how often a run's process proves it is alive, and after how long without that proof a
    # RUNNING run is reaped to FAILED; how often buffered metrics are flushed; system metrics sampling
    # (0 disables); how long end_run/exit waits for a flush before giving up with a warning.
    run_heartbeat_s: float = Field(default=10.0, gt=0)
    run_heartbeat_timeout_s: float = Field(default=60.0, gt=0)
    metric_flush_s: float = Field(default=1.0, gt=0)
    system_metrics_s: float = Field(default=10.0, ge=0)
    flush_timeout_s: float = Field(default=30.0, gt=0)
    # Data: threads that hash and encrypt files (0 = one per CPU).
    data_workers: int = Field(default=0, ge=0)
    # Job queue: how often a worker proves it is alive on the jobs it runs, after how long without that
    # proof a RUNNING job goes back to the queue (or FAILED past its retries), the default retries, how often
    # an idle worker polls, how long a cancelled job gets between SIGTERM and SIGKILL, and the container
    # image of Kubernetes jobs (default modelyard:<version>). job_aging_s: a queued job gains one priority
    # level per this many seconds waited, so a stream of higher-priority jobs cannot starve it (0: strict),
    # up to job_aging_limit (default high: only urgent jobs stay above every aged one).
    # The durations are at most 30 days: inf or 1e300 seconds overflowed the store's clock plus the timeout,
    # Event.wait and the pod's grace period, an OverflowError in every `yard jobs ls` and worker.
    job_heartbeat_s: float = Field(default=5.0, gt=0, le=_MAX_JOB_S)
    job_heartbeat_timeout_s: float = Field(default=60.0, gt=0, le=_MAX_JOB_S)
    job_max_retries: int = Field(default=2, ge=0, le=100)
    job_poll_s: float = Field(default=1.0, gt=0, le=_MAX_JOB_S)
    job_kill_grace_s: float = Field(default=10.0, ge=0, le=_MAX_JOB_S)
    job_aging_s: float = Field(default=0.0, ge=0)
    job_aging_limit: Literal["low", "normal", "high", "urgent"] = "high"
    job_image: str | None = None
    # Kubernetes jobs: the most disk the pod's /work (an emptyDir: the job's home, checkpoints, caches) may
    # use before the kubelet evicts the pod, so a job cannot fill its node's disk (binary units: 20G =
    # 20 GiB); and the numeric user and group the container runs as (runAsNonRoot alone makes the kubelet
    # refuse an image whose USER is a name; the group is also the pod's fsGroup, so /work is writable).
    job_work_disk: int = Field(default=20 << 30, gt=0)
    job_run_as_user: int = Field(default=1000, ge=1, le=2**31 - 1)
    job_run_as_group: int = Field(default=1000, ge=0, le=2**31 - 1)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        init_kwargs = init_settings() if callable(init_settings) else {}
        return (init_settings, env_settings, _HomeYamlSource(settings_cls, dict(init_kwargs)))

    @field_validator("home", mode="after")
    @classmethod
    def _expand_home(cls, v: Path) -> Path:
        return v.expanduser().absolute()

    @field_validator("job_work_disk", mode="before")
    @classmethod
    def _parse_size(cls, v: Any) -> Any:
        if not isinstance(v, str):
            return v
        m = _SIZE_RE.match(v)
        if m is None:
            raise ValueError(f"{v!r} is not a size; expected e.g. 20G or 512M (binary units) or bytes")
        return math.ceil(float(m.group(1)) * 1024 ** "_KMGTP".index(m.group(2).upper() or "_"))

    @field_validator("region")
    @classmethod
    def _check_region(cls, v: str) -> str:
        return check_region(v)

    @field_validator("project")
    @classmethod
    def _check_project(cls, v: str) -> str:
        check_name(v, "project")
        return v

    @property
    def run_beat_s(self) -> float:
        """How often a run (or trial) beats: ``run_heartbeat_s``, but at least three times per timeout. A
        timeout set below the interval (to notice crashes sooner) made every live run stale between beats."""
        return min(self.run_heartbeat_s, self.run_heartbeat_timeout_s / 3)

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.home / 'yard.db'}"

    @property
    def resolved_artifact_uri(self) -> str:
        return self.artifact_uri or (self.home / "artifacts").as_uri()

    @property
    def resolved_key_file(self) -> Path:
        return (self.master_key_file or self.home / "keys" / "master.key").expanduser()


def check_region(value: str) -> str:
    """Region names: lower-case letters, digits and '-' (``me-central-1``)."""
    if not isinstance(value, str) or not _REGION_RE.match(value):
        raise ValueError(f"region {value!r} must be lower-case letters, digits and '-', e.g. me-central-1")
    return value


def check_name(value: str, what: str) -> str:
    """Names of projects, users and stores: short, no path characters."""
    if not isinstance(value, str) or not _NAME_RE.match(value):
        raise ValueError(
            f"{what} name {value!r} is not valid: use 1-128 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return value


def load_settings(**overrides: Any) -> Settings:
    """Settings from explicit overrides, the environment, the home's config.yaml and defaults."""
    clean = {k: v for k, v in overrides.items() if v is not None}
    try:
        return Settings(**clean)
    except ConfigError:
        raise
    except Exception as exc:  # pydantic ValidationError: name the setting and the env var
        errors = getattr(exc, "errors", None)
        if callable(errors):
            parts = []
            for err in errors():
                loc = ".".join(str(p) for p in err.get("loc", ()))
                parts.append(f"{loc} (YARD_{loc.upper()}): {err.get('msg')}")
            raise ConfigError("invalid settings: " + "; ".join(parts)) from exc
        raise ConfigError(f"invalid settings: {exc}") from exc


def write_home_config(settings: Settings, values: dict[str, Any]) -> Path:
    """Persist chosen settings (region, URLs) to the home's config.yaml, keeping existing keys."""
    import yaml

    path = settings.home / CONFIG_FILE
    current: dict[str, Any] = {}
    if path.is_file():
        current = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    wanted = {k: (str(v) if isinstance(v, Path) else v) for k, v in values.items() if v is not None}
    if all(current.get(k) == v for k, v in wanted.items()):
        return path  # already so: the file is left as it is
    current.update(wanted)
    tmp = path.with_suffix(".yaml.tmp")
    # Owner-only, like the rest of the home (a home that existed before init may be less private).
    fd = os.open(tmp, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(yaml.safe_dump(current, sort_keys=True))
    os.chmod(tmp, 0o600)  # O_CREAT's mode applies only to a new file
    os.replace(tmp, path)
    return path
