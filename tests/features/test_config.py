from __future__ import annotations

from pathlib import Path

import pytest

from features.config import RepoConfig, interpolate
from features.errors import ConfigError


def test_environment_interpolation(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGPASSWORD", "s3cret")
    monkeypatch.delenv("UNSET_VAR", raising=False)
    assert interpolate("postgresql://u:${PGPASSWORD}@h/db") == "postgresql://u:s3cret@h/db"
    assert interpolate("${UNSET_VAR:-local[2]}") == "local[2]"
    with pytest.raises(ConfigError, match=r"\$\{UNSET_VAR\} is not set"):
        interpolate("${UNSET_VAR}")


def test_relative_sqlite_paths_are_anchored_at_the_repository(tmp_path: Path) -> None:
    (tmp_path / "skewless.yaml").write_text("connections:\n  db: sqlite:///data/x.db\nregistry: sqlite:///r.db\n")
    config = RepoConfig.load(tmp_path)
    assert config.connection_url("db") == f"sqlite:///{tmp_path.resolve()}/data/x.db"
    assert config.resolved_registry_url() == f"sqlite:///{tmp_path.resolve()}/r.db"
    assert config.connection_url("sqlite:////abs.db") == "sqlite:////abs.db"
    with pytest.raises(ConfigError, match=r"unknown connection 'nope'; known in skewless.yaml: db"):
        config.connection_url("nope")


def test_unknown_keys_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"no skewless\.yaml"):
        RepoConfig.load(tmp_path)
    (tmp_path / "skewless.yaml").write_text("registy: x\n")
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['registy'\]; valid choices"):
        RepoConfig.load(tmp_path)
