"""Unit tests of :mod:`recluster.config`: defaults, unknown keys, credentials refused by name,
overrides, YAML loading and ``configs/example.yaml``. No cluster.
"""

from __future__ import annotations

import pytest

from recluster.config import apply_overrides, load_config, parse_config
from recluster.errors import ConfigError

pytestmark = pytest.mark.timeout(120)


def _base_config() -> dict:
    return {"input": {"path": "/data/in", "id_column": "user_id"},
            "output": {"path": "/data/out"}}


def test_parse_config_defaults_are_valid():
    cfg = parse_config(_base_config())
    assert cfg.input.id_column == "user_id"
    assert cfg.sample.size >= 2 * cfg.assign.k


@pytest.mark.parametrize("section,key", [("input", "colour"), ("sample", "sizee"), (None, "sampel")])
def test_parse_config_rejects_unknown_keys(section, key):
    data = _base_config()
    if section is None:
        data[key] = {}
    else:
        data.setdefault(section, {})[key] = 1
    with pytest.raises(ConfigError) as exc:
        parse_config(data)
    assert key in str(exc.value)


@pytest.mark.parametrize("section", ["input", "output"])
@pytest.mark.parametrize("key", ["secret", "key", "Token", "aws_secret_access_key"])
def test_parse_config_rejects_credentials(section, key):
    data = _base_config()
    data[section]["storage_options"] = {key: "TOP-SECRET-VALUE-123", "anon": False}
    with pytest.raises(ConfigError) as exc:
        parse_config(data)
    msg = str(exc.value)
    assert key in msg
    assert "AWS_ACCESS_KEY_ID" in msg and "AWS_SECRET_ACCESS_KEY" in msg
    assert "TOP-SECRET-VALUE-123" not in msg  # the secret itself is never echoed


def test_parse_config_accepts_harmless_storage_options():
    data = _base_config()
    data["input"]["storage_options"] = {"anon": True, "endpoint_url": "http://127.0.0.1:9000"}
    cfg = parse_config(data)
    assert cfg.input.storage_options["anon"] is True


def test_apply_overrides_parses_yaml_scalars():
    data = _base_config()
    out = apply_overrides(data, ["sample.size=123", "output.overwrite=true",
                                 "assign.method=umap", "sample.stratify_by=country",
                                 "input.path=s3://bucket/a=b"])
    assert out["sample"]["size"] == 123 and isinstance(out["sample"]["size"], int)
    assert out["output"]["overwrite"] is True
    assert out["assign"]["method"] == "umap"
    assert out["input"]["path"] == "s3://bucket/a=b"  # only the first '=' splits
    assert "sample" not in data  # the input data is not mutated
    cfg = parse_config(out)
    assert cfg.sample.size == 123
    assert cfg.sample.stratify_by == "country"


@pytest.mark.parametrize("bad", ["sample.size", "input.path.deeper=1"])
def test_apply_overrides_rejects_malformed(bad):
    with pytest.raises(ConfigError):
        apply_overrides(_base_config(), [bad])


def test_load_config_missing_file(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as exc:
        load_config(missing)
    assert "nope.yaml" in str(exc.value)


def test_load_config_reads_yaml_and_overrides(tmp_path):
    p = tmp_path / "job.yaml"
    p.write_text("input:\n  path: /in\n  id_column: id\noutput:\n  path: /out\nseed: 3\n")
    cfg = load_config(p, ["sample.size=500", "seed=9"])
    assert cfg.sample.size == 500
    assert cfg.seed == 9
    bad = tmp_path / "bad.yaml"
    bad.write_text("input: [unclosed\n")
    with pytest.raises(ConfigError):
        load_config(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError):
        load_config(listy)
    invalid = tmp_path / "invalid.yaml"
    invalid.write_text("input:\n  path: /in\n  id_column: id\noutput:\n  path: /out\nsample:\n  size: 5\n")
    with pytest.raises(ConfigError) as exc:
        load_config(invalid)
    assert "sample.size" in str(exc.value)


def test_secret_looking_options_are_refused_and_masked():
    data = _base_config()
    data["input"]["storage_options"] = {"client_secret_ref": "s3cr3t-ref",
                                        "refresh_TOKEN_path": "/var/tok",
                                        "endpoint_url": "http://minio:9000"}
    with pytest.raises(ConfigError) as exc:
        parse_config(data)
    msg = str(exc.value)
    assert "client_secret_ref" in msg and "refresh_TOKEN_path" in msg
    assert "s3cr3t-ref" not in msg and "/var/tok" not in msg
    # Masking (defence in depth for manifests) reaches nested keys and keeps harmless ones.
    from recluster.config import redact_options as _mask

    masked = _mask({"endpoint_url": "http://minio:9000",
                    "client_kwargs": {"MySecretThing": "xyz", "region_name": "eu"}})
    assert masked == {"endpoint_url": "http://minio:9000",
                      "client_kwargs": {"MySecretThing": "***", "region_name": "eu"}}
    ok = _base_config()
    ok["input"]["storage_options"] = {"endpoint_url": "http://minio:9000", "anon": False}
    assert parse_config(ok).redacted()["input"]["storage_options"] == ok["input"]["storage_options"]


def test_nested_credentials_are_refused_by_name_without_their_values():
    data = _base_config()
    data["input"]["storage_options"] = {
        "client_kwargs": {"aws_access_key_id": "AKIAFAKE", "aws_secret_access_key": "NESTED-SECRET"}}
    with pytest.raises(ConfigError) as exc:
        parse_config(data)
    msg = str(exc.value)
    assert "client_kwargs.aws_access_key_id" in msg and "client_kwargs.aws_secret_access_key" in msg
    assert "input.storage_options" in msg and "AWS_ACCESS_KEY_ID" in msg
    assert "NESTED-SECRET" not in msg and "AKIAFAKE" not in msg


def test_example_config_is_valid_and_complete():
    """configs/example.yaml parses and lists every key the model knows."""
    from pathlib import Path

    import yaml

    from recluster.config import JobConfig, load_config

    path = Path(__file__).resolve().parents[1] / "configs" / "example.yaml"
    cfg = load_config(path)
    raw = yaml.safe_load(path.read_text())
    for name, field in JobConfig.model_fields.items():
        assert name in raw, name
        sub = field.annotation
        if hasattr(sub, "model_fields"):
            missing = set(sub.model_fields) - set(raw[name]) - {"features"}
            assert not missing, (name, missing)
    assert cfg.sample.stratify_by == "country"


@pytest.mark.parametrize("sample", [{"size": 150}, {"min_node_size": 150}])
def test_samples_smaller_than_the_embedding_needs_are_refused(sample):
    """n_neighbors 200 with a 150-row sample (or level-budget floor) left nodes of any size
    unsplit ('sample of 150 rows is below the 202 the embedding needs'): refused up front."""
    data = {**_base_config(), "sample": sample, "embedding": {"n_neighbors": 200}}
    name = f"sample.{next(iter(sample))}"
    with pytest.raises(ConfigError, match=f"{name} .*embedding.n_neighbors"):
        parse_config(data)
    # Without a level budget the floor is unused, so it is not checked.
    if "min_node_size" in sample:
        data["sample"] = {**sample, "level_size": 0}
        assert parse_config(data).sample.min_node_size == 150


@pytest.mark.parametrize("input_extra, message", [
    ({"exclude": ["ts"], "features": ["a", "b"]}, "input.exclude is for a table whose features"),
    ({"exclude": ["user_id"]}, "input.exclude names ['user_id'], which is the id"),
    ({"exclude": ["a"], "categorical": ["a"]},
     "input.exclude names ['a'], which input.categorical lists as features; leave it out"),
    # both at once: each named for what it is (it said "['a', 'user_id'], which are used")
    ({"exclude": ["user_id", "a"], "categorical": ["a"]},
     "input.exclude names ['user_id'], which is the id column"),
])
def test_input_exclude_contradictions_are_refused(input_extra, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_config({"input": {"path": "/in", "id_column": "user_id", **input_extra},
                      "output": {"path": "/out"}})


@pytest.mark.parametrize("section, key, number", [
    ("explain", "max_features", 3), ("recursion", "max_depth", 3), ("sample", "size", 300),
    ("stability", "fraction", 0.5), ("embedding", "n_epochs", 30)])
@pytest.mark.parametrize("value", [True, False])
def test_a_yes_or_no_is_not_a_number(section, key, number, value):
    """YAML's true/false (also yes/no/on/off) were read as 1/0 in a number: `max_features: true`
    (meaning "screen, please") trained every wide node's models on one feature, without a
    word. A number setting refuses them, naming the setting; yes/no settings still take them."""
    data = _base_config()
    data[section] = {key: value}
    with pytest.raises(ConfigError, match=rf"{section}\.{key}.*a number is expected, not "
                                          rf"{str(value).lower()}"):
        parse_config(data)
    data[section] = {key: number}
    assert getattr(getattr(parse_config(data), section), key) == number
    data = _base_config()
    data["explain"] = {"enabled": value, "max_features": None}
    cfg = parse_config(data)
    assert cfg.explain.enabled is value and cfg.explain.max_features is None


def test_an_early_stability_stop_below_the_stable_score_is_refused():
    """``stability.conclusive`` settles a node on its first resample; below ``stable`` it would
    settle nodes whose clusters are not even stable."""
    data = {**_base_config(), "stability": {"conclusive": 0.6}}
    with pytest.raises(ConfigError, match=r"stability\.conclusive=0\.6 must be at least "
                                          r"stability\.stable=0\.75"):
        parse_config(data)
    data["stability"] = {"conclusive": 0.6, "stable": 0.6}
    assert parse_config(data).stability.conclusive == 0.6
    data["stability"] = {"conclusive": None}
    assert parse_config(data).stability.conclusive is None
