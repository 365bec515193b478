from pathlib import Path

import pytest
import yaml

from prefect_mlops.mlops.config import load_config, parse_config
from prefect_mlops.mlops.errors import ConfigError

CONFIGS = Path(__file__).resolve().parents[2] / "configs"

MINIMAL = {
    "name": "demo",
    "data": {"source": "x.csv", "target": "y"},
    "model": {"name": "demo-model"},
}


def write(tmp_path, payload) -> Path:
    path = tmp_path / "use_case.yaml"
    path.write_text(yaml.safe_dump(payload))
    return path


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_bundled_configs_parse(path):
    config = load_config(path)
    assert config.data.synthetic is not None
    assert config.model.name


def test_minimal_config_gets_defaults(tmp_path):
    config = load_config(write(tmp_path, MINIMAL))
    assert config.split.validation_fraction == 0.15
    assert config.training.cluster.n_workers == 2
    assert config.experiment_name == "demo"


def test_unknown_key_names_key_and_file(tmp_path):
    path = write(tmp_path, {**MINIMAL, "training": {"n_estimator": 10}})
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert "unknown key 'training.n_estimator'" in str(error.value)
    assert str(path) in str(error.value)


def test_wrong_type_names_key_value_and_file(tmp_path):
    path = write(tmp_path, {**MINIMAL, "training": {"learning_rate": "fast"}})
    with pytest.raises(ConfigError) as error:
        load_config(path)
    message = str(error.value)
    assert "training.learning_rate" in message and "'fast'" in message and str(path) in message


def test_missing_required_key(tmp_path):
    payload = {"name": "demo", "data": {"source": "x.csv"}, "model": {"name": "m"}}
    with pytest.raises(ConfigError, match="missing required key 'data.target'"):
        load_config(write(tmp_path, payload))


def test_missing_file_and_non_mapping(tmp_path):
    with pytest.raises(ConfigError, match="Config file not found"):
        load_config(tmp_path / "nope.yaml")
    path = tmp_path / "list.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(path)


def test_target_cannot_be_dropped():
    payload = {**MINIMAL, "data": {"source": "x.csv", "target": "y", "drop_columns": ["y"]}}
    with pytest.raises(ConfigError, match="also listed in data.drop_columns"):
        parse_config(payload)


def test_model_name_is_checked():
    with pytest.raises(ConfigError, match="model.name"):
        parse_config({**MINIMAL, "model": {"name": "bad name!"}})
