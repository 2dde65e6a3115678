from pathlib import Path

from shared.settings import load_settings


def test_embedded_defaults_live_under_home(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    settings = load_settings({})
    assert settings.home == tmp_path / "var"
    assert settings.database_url == f"sqlite:///{tmp_path / 'var' / 'latentforge.db'}"
    assert settings.uses_embedded_broker
    assert settings.artifact_dir == tmp_path / "var" / "artifacts"
    assert settings.data_dir == tmp_path / "data"
    assert settings.api_token is None


def test_environment_overrides(tmp_path):
    settings = load_settings({
        "LATENTFORGE_HOME": str(tmp_path / "h"),
        "LATENTFORGE_DATABASE_URL": "postgresql+psycopg://u@db/lf",
        "LATENTFORGE_BROKER_URL": "redis://redis:6379/0",
        "LATENTFORGE_ARTIFACT_DIR": str(tmp_path / "a"),
        "LATENTFORGE_DATA_DIR": str(tmp_path / "d"),
        "LATENTFORGE_API_TOKEN": "s3cret",
    })
    assert settings.home == tmp_path / "h"
    assert settings.database_url == "postgresql+psycopg://u@db/lf"
    assert not settings.uses_embedded_broker
    assert settings.artifact_dir == Path(tmp_path / "a")
    assert settings.data_dir == tmp_path / "d"
    assert settings.api_token == "s3cret"


def test_blank_values_mean_unset():
    assert load_settings({"LATENTFORGE_API_TOKEN": "  "}).api_token is None
