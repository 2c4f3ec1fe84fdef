"""Training config (model/train/config.py): TOML and YAML, strict keys and types, overrides, round trip."""

from __future__ import annotations

from pathlib import Path

import pytest
import tomllib
import yaml

from model.train.config import SourceConfig, TrainConfig, dump_toml, load_train_config, read_config_file
from model.train.demo import demo_config, demo_model

TOML = """
[run]
out_dir = "runs/x"
steps = 100

[model.builtin_lm]
dim = 48

[optim]
lr = 3e-4
betas = [0.9, 0.95]

[data]
mode = "sample"

[[data.sources]]
name = "m3w"
kind = "m3w"
urls = "m3w-{00000..00003}.tar"

[[data.sources]]
name = "align"
kind = "pairs"
urls = ["a-00000.tar", "https://host/a-00001.tar"]
weight = 0.2
batch_size = 32

[[eval.sets]]
name = "heldout"
kind = "pairs"
urls = "h.tar"
batches = 2
"""


def test_toml_and_yaml_give_the_same_typed_config(tmp_path):
    (tmp_path / "c.toml").write_text(TOML)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(read_config_file(tmp_path / "c.toml")))
    a, b = load_train_config(tmp_path / "c.toml"), load_train_config(tmp_path / "c.yaml")
    assert a == b
    assert a.model.builtin_lm.dim == 48 and a.model.builtin_lm.n_layers == 4  # nested defaults kept
    assert a.optim.betas == (0.9, 0.95) and isinstance(a.optim.lr, float)
    assert a.data.sources[0].urls == ["m3w-{00000..00003}.tar"]  # a single pattern becomes a list
    assert a.data.sources[1].weight == 0.2 and a.data.sources[1].batch_size == 32
    assert a.eval.sets[0].shuffle_buffer == 0 and a.eval.sets[0].batches == 2  # eval sets read in order


@pytest.mark.parametrize("edit, message", [
    (("run", "stepz", 3), "unknown keys"),
    (("run", "steps", "ten"), "expected int"),
    (("optim", "schedule", "cosin"), "not one of"),
    (("model", "xattn", {"every_n_layer": 2}), r"model.xattn: unknown keys \[.every_n_layer.\]"),
])
def test_typos_and_wrong_types_are_errors_that_name_the_key(edit, message):
    data = read_config_file_from_text(TOML)
    section, key, value = edit
    data[section][key] = value
    with pytest.raises(ValueError, match=message):
        TrainConfig.from_dict(data)
    data = read_config_file_from_text(TOML)
    del data["run"]["steps"]
    with pytest.raises(ValueError, match="missing required keys"):
        TrainConfig.from_dict(data)
    data = read_config_file_from_text(TOML)
    data["data"]["sources"][1]["name"] = "m3w"
    with pytest.raises(ValueError, match="unique names"):
        TrainConfig.from_dict(data)
    data = read_config_file_from_text(TOML)
    for source in data["data"]["sources"]:
        source["weight"] = 0.0
    with pytest.raises(ValueError, match=r"data.sources: every weight is 0 \(m3w, align\)"):
        TrainConfig.from_dict(data)


@pytest.mark.parametrize("fields, message", [
    ({"kind": "m3w", "min_images": 3, "max_images": 2}, "min_images <= max_images"),
    ({"kind": "pairs", "max_images": 0}, "max_images >= 1"),
    ({"kind": "m3w", "max_tokens": 40, "lead_tokens": 39}, r"lead_tokens \(39\) leaves no room"),
    ({"kind": "video", "max_frames": 0}, "max_frames"),
])
def test_source_limits_that_would_skip_every_sample_are_errors(fields, message):
    with pytest.raises(ValueError, match=message):
        SourceConfig(name="s", urls=["x"], **fields)
    SourceConfig(name="s", urls=["x"], **{**fields, "kind": "m3w", "truncation": "head", "min_images": 0,
                                          "max_images": 1, "max_frames": 1})  # the same source, usable


def test_video_clips_longer_than_the_learned_time_embeddings_are_refused():
    """A clip of more frames than model.resampler.max_frames would train on stretched time embeddings."""
    data = read_config_file_from_text(TOML)
    data["model"]["resampler"] = {"max_frames": 4}
    video = {"name": "vtp", "kind": "video", "urls": "v.tar", "max_frames": 4}
    data["data"]["sources"].append(dict(video))
    assert TrainConfig.from_dict(data).data.sources[-1].max_frames == 4  # as many as learned: fine
    data["data"]["sources"][-1]["max_frames"] = 5
    with pytest.raises(ValueError, match="source vtp: max_frames 5 exceeds model.resampler.max_frames 4"):
        TrainConfig.from_dict(data)
    data["data"]["sources"].pop()
    data["eval"]["sets"].append({**video, "name": "heldout_vtp", "max_frames": 6})
    with pytest.raises(ValueError, match="source heldout_vtp: max_frames 6 exceeds"):
        TrainConfig.from_dict(data)


def read_config_file_from_text(text):
    return tomllib.loads(text)


def test_overrides_and_toml_round_trip(tmp_path):
    (tmp_path / "c.toml").write_text(TOML)
    cfg = load_train_config(tmp_path / "c.toml", ["run.steps=7", "optim.lr=1e-3", "run.resume=never",
                                                  "model.xattn.every_n_layers=2", "run.lm_weights=lm.safetensors"])
    assert (cfg.run.steps, cfg.optim.lr, cfg.run.resume, cfg.model.xattn.every_n_layers) == (7, 1e-3, "never", 2)
    (tmp_path / "out.toml").write_text(dump_toml(cfg.to_dict()))
    assert load_train_config(tmp_path / "out.toml") == cfg
    with pytest.raises(ValueError):
        load_train_config(tmp_path / "c.toml", ["nonsense"])


def test_shipped_configs_load():
    configs = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.*"))
    assert {p.name for p in configs} >= {"demo.toml", "flamingo.yaml"}
    for path in configs:
        cfg = load_train_config(path)
        assert cfg.data.sources and cfg.run.steps > 0, path
    hf = load_train_config(configs[[p.name for p in configs].index("flamingo.yaml")])
    assert [s.weight for s in hf.data.sources] == [1.0, 0.2, 0.2, 0.03] and hf.model.xattn.every_n_layers == 4
    assert hf.data.loss_normalisation == "per_sequence"  # the paper's, for the paper's weights
    text = configs[[p.name for p in configs].index("flamingo.yaml")].read_text()  # says what to download, to where
    assert f"--local-dir {hf.model.lm_path}" in text and f"--local-dir {hf.model.vision_path}" in text
    demo = load_train_config(configs[[p.name for p in configs].index("demo.toml")])
    assert demo.data.loss_normalisation == "per_token"  # the default: what the demo has always trained with


def test_demo_config_file_is_the_demos_model():
    """configs/demo.toml reruns the demo's training on its pre-trained backbones: the same shapes
    (load_pretrained_lm would refuse an LM of another shape) and the same optimiser."""
    raw = tomllib.loads((Path(__file__).resolve().parents[2] / "configs" / "demo.toml").read_text())
    assert raw["model"] == demo_model()
    shipped = demo_config(Path("w"), {}, {}, raw["run"]["steps"], None, None, "accumulate", 0, 0)["optim"]
    assert raw["optim"] == {**shipped, "betas": list(shipped["betas"])}
