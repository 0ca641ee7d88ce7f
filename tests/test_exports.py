"""The public surface, as httpx's tests/test_exported_members.py checks it: small, explicit, resolvable,
and cheap to import."""

from __future__ import annotations

import importlib
import subprocess
import sys
import textwrap

import pytest

import modelyard

EXPECTED_TOP_LEVEL = {
    "Context",
    "Platform",
    "Role",
    "Settings",
    "YardError",
    "__version__",
    "init_home",
    "load_settings",
    # tracking: the client and the fluent API of the active run
    "Client",
    "start_run",
    "end_run",
    "log_param",
    "log_params",
    "log_metric",
    "log_metrics",
    "set_tag",
    "set_tags",
    "log_artifact",
    "log_dict",
    "log_figure",
}


def test_top_level_all_is_exactly_the_expected_set() -> None:
    assert len(modelyard.__all__) == len(set(modelyard.__all__)), "duplicates in modelyard.__all__"
    assert set(modelyard.__all__) == EXPECTED_TOP_LEVEL
    assert len(modelyard.__all__) <= 20


def test_every_top_level_name_resolves() -> None:
    for name in modelyard.__all__:
        assert getattr(modelyard, name) is not None, name
    assert isinstance(modelyard.__version__, str)


def test_lazy_names_are_the_real_objects() -> None:
    from modelyard import config, core, errors

    assert modelyard.Platform is core.Platform
    assert modelyard.Context is core.Context
    assert modelyard.Role is core.Role
    assert modelyard.init_home is core.init_home
    assert modelyard.Settings is config.Settings
    assert modelyard.load_settings is config.load_settings
    assert modelyard.YardError is errors.YardError


def test_tracking_names_are_the_real_objects() -> None:
    from modelyard import tracking

    for name in (
        "Client",
        "start_run",
        "end_run",
        "log_metric",
        "log_metrics",
        "log_param",
        "log_params",
        "set_tag",
        "set_tags",
        "log_artifact",
        "log_dict",
        "log_figure",
    ):
        assert getattr(modelyard, name) is getattr(tracking, name), name


def test_stages_are_reachable_after_a_bare_import() -> None:
    script = textwrap.dedent(
        """
        import sys
        import modelyard
        assert "modelyard.data" not in sys.modules
        assert callable(modelyard.data.get) and callable(modelyard.models.load)  # as the README writes them
        assert modelyard.data is sys.modules["modelyard.data"]
        print("ok")
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_unknown_attribute_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no_such_name"):
        modelyard.no_such_name  # noqa: B018
    assert not hasattr(modelyard, "_LAZY_THING")


@pytest.mark.parametrize(
    "module_name",
    ["modelyard.core", "modelyard.errors", "modelyard.testing", "modelyard.cli", "modelyard.tracking"],
)
def test_submodule_all_members_resolve(module_name: str) -> None:
    module = importlib.import_module(module_name)
    names = module.__all__
    assert names, f"{module_name}.__all__ is empty"
    assert len(names) == len(set(names)), f"duplicates in {module_name}.__all__"
    for name in names:
        assert getattr(module, name, None) is not None, f"{module_name}.{name} does not resolve"
        assert not name.startswith("_") or name == "__version__", f"{module_name} exports private {name}"


def test_errors_all_lists_every_error_class() -> None:
    from modelyard import errors

    defined = {
        name
        for name, obj in vars(errors).items()
        if isinstance(obj, type) and issubclass(obj, errors.YardError) and obj.__module__ == errors.__name__
    }
    assert defined == set(errors.__all__)


def test_importing_modelyard_is_light() -> None:
    script = textwrap.dedent(
        """
        import sys
        import modelyard
        heavy = sorted(m for m in ("sqlalchemy", "torch", "modelyard.core", "alembic") if m in sys.modules)
        assert not heavy, f"import modelyard pulled in {heavy}"
        modelyard.YardError, modelyard.__version__
        assert "modelyard.core" not in sys.modules
        modelyard.Platform  # first use loads the stage
        assert "modelyard.core" in sys.modules
        assert "torch" not in sys.modules
        modelyard.log_metric  # the tracking SDK loads without torch or matplotlib
        assert "torch" not in sys.modules and "matplotlib" not in sys.modules
        print("ok")
        """
    )
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "ok"
