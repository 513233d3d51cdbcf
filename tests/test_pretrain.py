"""Server pre-training on the proxy split: the split, the config, the cache key and the cache."""

import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

import fedsim.proxy.pretrain as pretrain_module
from fedsim.errors import ConfigError
from fedsim.data.partition.proxy import proxy_indices
from fedsim.data.shards import ShardSource
from fedsim.models.factory import ModelBuilder
from fedsim.proxy.pretrain import (
    Pretraining,
    cache_key,
    load_pretrained,
    model_spec_of,
    pretrained_state,
)

CONF = Path(__file__).resolve().parents[1] / "conf" / "pretrain"
DIGITS = {"_target_": "fedsim.data.datasets.Digits"}
IID = {"_target_": "fedsim.data.partition.iid.IidPartitioner"}
# A small student, so a few epochs on a contended 2-CPU box stay within seconds.
TINY = {"_target_": "fedsim.models.mobilenet_v2.mobilenet_v2", "width_mult": 0.25, "dropout": 0.0}
BATCH_NORM = {"_target_": "torch.nn.BatchNorm2d", "_partial_": True}


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Two torch threads on two shared CPUs thrash (several times slower per step)."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


def digits_setup(fraction: float, seed: int = 0) -> tuple[ShardSource, ModelBuilder]:
    shards = ShardSource.from_config(DIGITS, IID, 10, 0, proxy_fraction=fraction, proxy_seed=seed)
    splits, _ = shards.load()
    builder = ModelBuilder.from_config(TINY, BATCH_NORM, splits.input_shape, splits.num_classes)
    return shards, builder


# --- the proxy split ---------------------------------------------------------------------------


def test_proxy_indices_hand_example() -> None:
    # Class sizes [6, 3, 1], fraction 0.3: 3 ids, quotas 1.8, 0.9, 0.3 round to [2, 1, 0].
    labels = np.array([0] * 6 + [1] * 3 + [2])
    ids = proxy_indices(labels, 0.3, seed=0)
    assert len(ids) == 3 and np.bincount(labels[ids], minlength=3).tolist() == [2, 1, 0]
    assert np.array_equal(ids, np.sort(ids)) and ids.dtype == np.int64
    assert np.array_equal(ids, proxy_indices(labels, 0.3, seed=0))  # a function of the seed
    assert len(proxy_indices(labels, 0.0, seed=0)) == 0


def test_proxy_split_is_disjoint_from_every_shard_and_stratified() -> None:
    shards, _ = digits_setup(0.1)
    splits, _ = shards.load()
    proxy = shards.proxy_indices()
    n = len(splits.train.y)  # 1437 digits
    assert len(proxy) == round(0.1 * n) == 144
    owned = np.concatenate([shards.indices(i) for i in range(10)])
    assert len(np.intersect1d(owned, proxy)) == 0  # no phone holds a proxy sample
    # Disjoint IID: the shards and the proxy split tile the train split exactly once.
    assert np.array_equal(np.sort(np.concatenate([owned, proxy])), np.arange(n))
    # Stratified: every class contributes a tenth of itself, give or take rounding.
    per_class = np.bincount(splits.train.y[proxy], minlength=10)
    assert np.all(np.abs(per_class - 0.1 * np.bincount(splits.train.y)) < 1)
    x, y = shards.proxy()
    assert np.array_equal(y, splits.train.y[proxy]) and len(x) == 144


def test_proxy_split_ignores_the_run_seed() -> None:
    a = ShardSource.from_config(DIGITS, IID, 10, seed=0, proxy_fraction=0.1).proxy_indices()
    b = ShardSource.from_config(DIGITS, IID, 10, seed=7, proxy_fraction=0.1).proxy_indices()
    c = ShardSource.from_config(DIGITS, IID, 10, 0, proxy_fraction=0.1, proxy_seed=1)
    assert np.array_equal(a, b) and not np.array_equal(a, c.proxy_indices())


def test_fraction_zero_leaves_shards_as_without_a_proxy_split() -> None:
    shards, builder = digits_setup(0.0)
    splits, _ = shards.load()
    # What a partitioner gives on the whole train split: the behaviour before proxy splits.
    before = instantiate(IID).split(splits.train.y, 10, 0)
    for client in range(10):
        assert np.array_equal(shards.indices(client), before.indices(client))
    assert len(shards.proxy_indices()) == 0
    state, report = pretrained_state(Pretraining(fraction=0.0), builder, shards)
    assert state is None and report == {"fraction": 0.0}


# --- pre-training and its cache ----------------------------------------------------------------


def test_pretraining_beats_chance_and_second_call_is_a_bit_identical_cache_hit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shards, builder = digits_setup(0.3)
    splits, _ = shards.load()
    config = Pretraining(fraction=0.3, epochs=3, batch_size=8, lr=0.02, cache_dir=str(tmp_path))
    rng_before = torch.get_rng_state()
    started = time.perf_counter()
    state, report = pretrained_state(config, builder, shards, test=splits.test)
    seconds = time.perf_counter() - started
    assert torch.equal(torch.get_rng_state(), rng_before)  # the run's RNG stream is untouched
    assert report["cache"] == "miss" and report["proxy_samples"] == round(0.3 * 1437)
    assert report["test_accuracy"] > 0.5, report  # chance is 0.1
    assert (tmp_path / f"{report['key']}.pt").exists()
    print(f"pre-training: {seconds:.1f} s, {report}")

    def must_not_train(*args, **kwargs):
        raise AssertionError("a cache hit must not train")

    monkeypatch.setattr(pretrain_module, "pretrain_student", must_not_train)
    again, hit = pretrained_state(config, builder, shards, test=splits.test)
    assert hit["cache"] == "hit" and hit["key"] == report["key"]
    assert hit["test_accuracy"] == report["test_accuracy"]
    assert again.keys() == state.keys()
    assert all(np.array_equal(again[k], state[k]) for k in state)
    # The whole state, BatchNorm running statistics included, loads into a fresh student.
    assert any(k.endswith("running_mean") for k in state)
    model = builder()
    load_pretrained(model, state)
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], torch.from_numpy(state[k])) for k in state)


def tiny_run(cache_dir: Path, **fields) -> tuple[dict, dict]:
    shards, builder = digits_setup(0.05)
    config = Pretraining(**{"fraction": 0.05, "epochs": 1, "cache_dir": str(cache_dir), **fields})
    return pretrained_state(config, builder, shards)


def test_pretraining_is_deterministic_given_its_seed(tmp_path: Path) -> None:
    first, _ = tiny_run(tmp_path / "a")
    second, report = tiny_run(tmp_path / "b")  # another cache: trained again
    assert report["cache"] == "miss"
    assert all(np.array_equal(first[k], second[k]) for k in first)


def test_corrupt_cache_file_is_rebuilt(tmp_path: Path) -> None:
    state, report = tiny_run(tmp_path)
    path = tmp_path / f"{report['key']}.pt"
    path.write_bytes(path.read_bytes()[:100])  # a torn write
    with pytest.warns(UserWarning, match="corrupt cache"):
        rebuilt, again = tiny_run(tmp_path)
    assert again["cache"] == "miss"
    assert all(np.array_equal(rebuilt[k], state[k]) for k in state)
    assert tiny_run(tmp_path)[1]["cache"] == "hit"  # the rebuilt file is whole
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary files left


def test_max_steps_caps_whole_epochs_and_the_report_says_how_many(tmp_path: Path) -> None:
    # 5 % of digits' 1437 training images: 72 proxy images, 9 steps an epoch at batch 8; a budget
    # of 20 steps allows 2 whole epochs of the 5 asked for, of 100 steps all 5.
    assert Pretraining(epochs=5, batch_size=8, max_steps=20).epochs_for(72) == 2
    assert Pretraining(epochs=5, batch_size=8, max_steps=100).epochs_for(72) == 5
    assert Pretraining(epochs=5, batch_size=8, max_steps=3).epochs_for(72) == 1  # at least one
    capped, report = tiny_run(tmp_path, epochs=5, batch_size=8, max_steps=20)
    assert report["proxy_samples"] == 72 and report["epochs"] == 2
    same, again = tiny_run(tmp_path / "b", epochs=2, batch_size=8)
    assert again["epochs"] == 2 and again["key"] != report["key"]
    assert all(np.array_equal(capped[k], same[k]) for k in same)  # two epochs either way


def test_cache_key_covers_what_determines_the_weights() -> None:
    base = Pretraining(fraction=0.1)
    model = {"model": {"width_mult": 0.5}, "norm": {"_target_": "a"}}
    key = cache_key(base, DIGITS, model)
    assert len(key) == 64 and key == cache_key(Pretraining(fraction=0.1), dict(DIGITS), model)
    assert key == cache_key(Pretraining(fraction=0.1, cache_dir="/elsewhere"), DIGITS, model)
    assert key != cache_key(Pretraining(fraction=0.1, epochs=11), DIGITS, model)
    assert key != cache_key(Pretraining(fraction=0.1, seed=1), DIGITS, model)
    assert key != cache_key(Pretraining(fraction=0.1, max_steps=100), DIGITS, model)
    assert key != cache_key(Pretraining(fraction=0.2), DIGITS, model)
    assert key != cache_key(base, {**DIGITS, "test_fraction": 0.3}, model)
    assert key != cache_key(base, DIGITS, {**model, "norm": {"_target_": "b"}})
    # The builder's spec includes the norm, so BatchNorm and GroupNorm students never collide.
    _, builder = digits_setup(0.1)
    group = ModelBuilder(builder.model_spec, '{"_target_": "g"}', 10, 1, 8)
    assert model_spec_of(builder) != model_spec_of(group)


def test_shards_must_hold_out_this_proxy_split(tmp_path: Path) -> None:
    shards, builder = digits_setup(0.1)
    config = Pretraining(fraction=0.1, seed=3, cache_dir=str(tmp_path))
    with pytest.raises(ValueError, match="pretrain: shards hold out fraction 0.1 seed 0"):
        pretrained_state(config, builder, shards)


# --- config -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("fraction", 1.0, "pretrain.fraction: must be in [0, 1), got 1.0"),
        ("fraction", -0.1, "pretrain.fraction: must be in [0, 1), got -0.1"),
        ("epochs", 0, "pretrain.epochs: must be >= 1, got 0"),
        ("batch_size", 0, "pretrain.batch_size: must be >= 1, got 0"),
        ("lr", 0.0, "pretrain.lr: must be > 0, got 0.0"),
        ("momentum", 1.0, "pretrain.momentum: must be in [0, 1), got 1.0"),
        ("weight_decay", -1.0, "pretrain.weight_decay: must be >= 0, got -1.0"),
        ("seed", -1, "pretrain.seed: must be >= 0, got -1"),
        ("max_steps", 0, "pretrain.max_steps: must be >= 1 or null, got 0"),
    ],
)
def test_config_errors_are_one_line(field: str, value: object, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        Pretraining(**{field: value})
    assert str(err.value) == message


def test_yaml_options_instantiate(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDSIM_CACHE", "/tmp/fedsim-cache")
    off = instantiate(OmegaConf.load(CONF / "none.yaml"))
    on = instantiate(OmegaConf.load(CONF / "proxy.yaml"))
    assert isinstance(off, Pretraining) and not off.enabled
    assert on.enabled and (on.fraction, on.epochs, on.seed) == (0.1, 50, 0)
    assert on.cache_dir == "/tmp/fedsim-cache/pretrain"
