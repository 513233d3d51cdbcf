"""Every config group option composes and builds; bad config fails early with one line."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from flwr.serverapp.strategy import Strategy
from hydra.utils import instantiate

from fedsim.attacks.byzantine import ByzantineBehaviour
from fedsim.data.fashion_mnist import FILES, SYSTEM_DIR
from fedsim.config import ConfigError, locate_targets, parse_simulation
from fedsim.errors import UserInputError
from fedsim.run.preparation import prepare
from fedsim.updates import UpdateRule
from tests.helpers import ROOT, make_cfg, options, write_fashion_like_files


def test_groups_have_the_options_the_readme_promises() -> None:
    assert options("dataset") == ["digits", "fashion_mnist"]
    assert options("partition") == ["dirichlet", "iid", "shards"]
    assert options("model") == [
        "ghostnet", "mobilenet_v2", "mobilenet_v3_small", "shufflenet_v2", "squeezenet"
    ]
    assert options("norm") == ["batch", "group", "none"]
    assert options("privacy") == ["central_dp", "central_dp_adaptive", "local_dp", "none"]
    assert options("audit") == ["example", "membership", "none"]
    assert options("logger") == ["mlflow", "none", "tensorboard"]
    assert options("strategy") == sorted(
        "fedavg fedprox fedadam fedadagrad fedyogi fedavgm fedmedian fedtrimmedavg krum "
        "multikrum bulyan qfedavg".split()
    )
    assert options("attack") == ["gaussian", "label_flip", "none", "scale", "sign_flip"]
    assert options("update.compression") == ["int8", "none", "topk", "topk_int8"]
    assert options("fleet") == ["mixed", "stress_low_end", "uniform_mid"]
    assert options("device") == ["flagship", "low_end", "mid_range", "wearable"]
    assert options("availability") == ["always", "diurnal", "trace"]
    assert options("finetune") == ["bias", "frozen_stats", "full", "head", "int8_head", "qat"]
    assert options("lr_schedule") == ["constant", "cosine"]
    assert options("pretrain") == ["none", "proxy"]
    assert options("distill.where") == ["client", "none", "server_ensemble", "server_pre"]
    assert options("client_algorithm") == ["fednova", "scaffold", "sgd"]


@pytest.mark.parametrize("attack", options("attack"))
def test_every_attack_option_builds(attack: str) -> None:
    prepared = prepare(make_cfg(f"attack={attack}"))
    assert isinstance(prepared.threat.behaviour, ByzantineBehaviour)
    assert prepared.threat.fraction == (0.0 if attack == "none" else 0.2)


@pytest.mark.parametrize("codec", options("update.compression"))
@pytest.mark.parametrize("kind", ["weights", "delta", "gradient"])
def test_every_update_kind_and_codec_builds(kind: str, codec: str) -> None:
    cfg = make_cfg(f"update.kind={kind}", f"update.compression={codec}")
    locate_targets(cfg)
    rule = instantiate(cfg["update"])
    assert isinstance(rule, UpdateRule) and rule.kind == kind
    assert rule.lossless == (codec == "none")


def test_robust_strategies_assume_the_expected_malicious_count() -> None:
    # 0.2 x 10 clients per round = 2 assumed attackers; Bulyan needs n >= 4f + 3, so f = 1.
    for strategy, expected in (("krum", 2), ("multikrum", 2), ("bulyan", 1)):
        prepared = prepare(make_cfg(f"strategy={strategy}", "attack=sign_flip"))
        assert prepared.strategy.num_malicious_nodes == expected
    prepared = prepare(make_cfg("strategy=krum", "strategy.num_malicious_nodes=3"))
    assert prepared.strategy.num_malicious_nodes == 3  # an explicit number is kept
    assert prepare(make_cfg("strategy=krum")).strategy.num_malicious_nodes == 0


def test_bad_update_and_attack_values_name_the_key() -> None:
    with pytest.raises(ConfigError, match=r"^update.kind: must be one of weights, delta, gradient"):
        prepare(make_cfg("update.kind=gradients"))
    with pytest.raises(UserInputError, match=r"^compression.fraction: must be in \(0, 1\]"):
        prepare(make_cfg("update.compression=topk", "update.compression.fraction=0"))
    with pytest.raises(UserInputError, match=r"^attack.fraction: must be in \[0, 1\]"):
        prepare(make_cfg("attack=sign_flip", "attack.fraction=1.5"))
    with pytest.raises(UserInputError, match=r"^attack._target_: 'collections.OrderedDict' is not"):
        prepare(make_cfg("attack._target_=collections.OrderedDict"))


@pytest.mark.parametrize("strategy", options("strategy"))
def test_every_strategy_option_builds_a_flower_strategy(strategy: str) -> None:
    cfg = make_cfg(f"strategy={strategy}")
    locate_targets(cfg)
    assert isinstance(instantiate(cfg.strategy), Strategy)


@pytest.mark.parametrize("privacy", options("privacy"))
def test_every_privacy_option_prepares_with_a_norm_it_can_protect(privacy: str) -> None:
    prepared = prepare(make_cfg(f"privacy={privacy}"))
    assert prepared.privacy.report["privacy"] == privacy
    # DP options select the DP recipe: the pre-trained BatchNorm student, frozen statistics.
    dp = privacy != "none"
    assert prepared.pretraining.enabled == dp
    assert prepared.finetune.name == ("frozen_stats" if dp else "full")
    assert "BatchNorm2d" in {type(m).__name__ for m in prepared.builder().modules()}


@pytest.mark.parametrize("privacy", ["central_dp", "central_dp_adaptive", "local_dp"])
def test_dp_with_batch_norm_is_refused_by_name(privacy: str) -> None:
    with pytest.raises(ConfigError, match="^norm: privacy=.* cannot protect BatchNorm"):
        prepare(make_cfg(f"privacy={privacy}", "norm=batch", "finetune=full"))


@pytest.mark.parametrize("finetune", ["head", "int8_head"])
def test_dp_with_batch_norm_is_allowed_when_its_statistics_never_leave_the_phone(
    finetune: str,
) -> None:
    # Only the classifier travels: the backbone's statistics are the server's (public) ones.
    prepared = prepare(make_cfg(
        "privacy=central_dp", "norm=batch", f"finetune={finetune}", "pretrain=proxy"
    ))
    assert "BatchNorm2d" in {type(m).__name__ for m in prepared.builder().modules()}


@pytest.mark.parametrize("finetune", ["head", "bias", "int8_head"])
def test_a_mode_a_user_model_lacks_the_seam_for_is_refused_in_one_line(finetune: str) -> None:
    model = "model._target_=examples.mcmahan_cnn.mcmahan_cnn"
    with pytest.raises(ConfigError) as err:
        prepare(make_cfg(model, f"finetune={finetune}"))
    assert str(err.value).startswith(f"finetune: {finetune} cannot run on mcmahan_cnn: ")
    assert "\n" not in str(err.value)
    assert prepare(make_cfg(model, "finetune=full")).builder().out.out_features == 10


def test_dp_with_batch_norm_is_refused_when_a_fallback_mode_uploads_statistics() -> None:
    # budget.policy=adapt may fall back from head to bias, which uploads the statistics.
    with pytest.raises(ConfigError, match="cannot protect BatchNorm .* finetune=head/bias"):
        prepare(make_cfg(
            "privacy=central_dp", "norm=batch", "finetune=head", "budget.policy=adapt",
            "budget.fallback=[head,bias]",
        ))


@pytest.fixture(scope="module")
def fashion_like(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("fashion-like")
    write_fashion_like_files(directory)
    return directory


def dataset_overrides(dataset: str, data_dir: Path) -> list[str]:
    """Fashion-MNIST from ``data_dir``, uncached; Digits as it ships (sklearn bundles it)."""
    if dataset != "fashion_mnist":
        return [f"dataset={dataset}"]
    return ["dataset=fashion_mnist", f"dataset.data_dir={data_dir}", "dataset.download=false",
            "dataset.cache_dir=null"]


@pytest.mark.parametrize("partition", options("partition"))
@pytest.mark.parametrize("dataset", options("dataset"))
def test_every_dataset_and_partition_prepares(
    dataset: str, partition: str, fashion_like: Path
) -> None:
    # Fashion-MNIST from generated IDX files (1000 train images): the whole path from the files
    # to a phone's shard, on any machine; the real files are checked below where present.
    cfg = make_cfg(*dataset_overrides(dataset, fashion_like), f"partition={partition}")
    prepared = prepare(cfg)
    x, y = prepared.shards(0)
    assert x.shape[1:] == prepared.splits.input_shape and len(x) == len(y) > 0
    if dataset == "fashion_mnist":
        assert (len(prepared.splits.train), len(prepared.splits.test)) == (1000, 200)


@pytest.mark.skipif(
    not (SYSTEM_DIR / FILES["test_labels"]).exists(),
    reason=f"real Fashion-MNIST not in {SYSTEM_DIR} (bash .ci/run installs dataset-fashion-mnist)",
)
@pytest.mark.parametrize("partition", options("partition"))
def test_real_fashion_mnist_prepares(partition: str) -> None:
    cfg = make_cfg(*dataset_overrides("fashion_mnist", SYSTEM_DIR), f"partition={partition}")
    prepared = prepare(cfg)
    x, y = prepared.shards(0)
    assert x.shape[1:] == (1, 28, 28) and len(x) == len(y) > 0
    assert (len(prepared.splits.train), len(prepared.splits.test)) == (60_000, 10_000)


@pytest.mark.parametrize("norm", options("norm"))
@pytest.mark.parametrize("model", options("model"))
def test_every_model_and_norm_builds_for_the_dataset_shape(model: str, norm: str) -> None:
    prepared = prepare(make_cfg(f"model={model}", f"norm={norm}"))
    net = prepared.builder()
    x, _ = prepared.shards(0)
    assert net(torch.from_numpy(x[:2])).shape == (2, 10)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("simulation.rounds=abc", "simulation.rounds: Value 'abc'"),
        ("simulation.population=-5", "simulation.population: must be >= 1, got -5"),
        ("simulation.clients_per_round=101", "simulation.clients_per_round: 101 exceeds"),
        ("simulation.local.batch_size=0", "simulation.local.batch_size: must be >= 1"),
        ("simulation.local.momentum=1.5", "simulation.local.momentum: must be in [0, 1)"),
        ("simulation.sampling=sometimes", "simulation.sampling: must be 'fixed' or 'poisson'"),
        ("+simulation.roudns=3", "simulation.roudns: Key 'roudns' not in 'Simulation'"),
    ],
)
def test_bad_simulation_values_name_the_key(override: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_simulation(make_cfg(override))
    assert str(err.value).startswith(message)
    assert "\n" not in str(err.value)


def test_unimportable_target_names_the_group() -> None:
    cfg = make_cfg("strategy._target_=no_such_module.Strategy")
    with pytest.raises(ConfigError, match=r"^strategy._target_: cannot import 'no_such_module"):
        locate_targets(cfg)


def test_a_class_that_is_not_a_strategy_is_refused() -> None:
    with pytest.raises(ConfigError, match="is not a flwr.serverapp.strategy.Strategy"):
        prepare(make_cfg("strategy._target_=collections.OrderedDict"))


class HalfStrategy(Strategy):
    """A user class that forgot most of Strategy's required methods."""

    def configure_train(self, server_round, arrays, config, grid):
        return []


def test_a_strategy_lacking_a_required_method_is_refused_in_one_line() -> None:
    with pytest.raises(ConfigError) as err:
        prepare(make_cfg("strategy._target_=tests.test_config.HalfStrategy"))
    assert str(err.value).startswith(
        "strategy._target_: 'tests.test_config.HalfStrategy' lacks required method(s) "
        "aggregate_evaluate, aggregate_train, configure_evaluate, summary"
    )
    assert "\n" not in str(err.value)


def test_a_strategy_with_a_wrong_argument_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"^strategy: cannot build .*FedAvg"):
        prepare(make_cfg("+strategy.proximal_mu=0.1"))


def run_cli(*overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "run_sim.py", *overrides, "hydra.run.dir=/tmp/fedsim-test-cli"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )


@pytest.mark.parametrize(
    ("override", "line"),
    [
        ("simulation.clients_per_round=1000", "fedsim: error: simulation.clients_per_round: 1000 exceeds simulation.population (100)"),
        ("strategy._target_=my_module.MyStrategy", "fedsim: error: strategy._target_: cannot import 'my_module.MyStrategy'"),
        ("strategy._target_=collections.OrderedDict", "fedsim: error: strategy._target_: 'collections.OrderedDict' is not a flwr.serverapp.strategy.Strategy subclass"),
        ("strategy._target_=tests.test_config.HalfStrategy", "fedsim: error: strategy._target_: 'tests.test_config.HalfStrategy' lacks required method(s)"),
        ("update.kind=grad", "fedsim: error: update.kind: must be one of weights, delta, gradient, got 'grad'"),
    ],
)
def test_cli_prints_one_line_and_exits_2_before_ray(override: str, line: str) -> None:
    result = run_cli(override)
    assert result.returncode == 2
    assert result.stderr.strip().startswith(line)
    assert len(result.stderr.strip().splitlines()) == 1
    assert "ray" not in result.stderr.lower()


def test_dp_with_a_median_strategy_is_refused_before_ray() -> None:
    with pytest.raises(UserInputError, match="needs a mean-type strategy"):
        prepare(make_cfg("privacy=central_dp", "strategy=fedmedian"))


def test_pld_cannot_account_fixed_size_sampling() -> None:
    with pytest.raises(UserInputError, match="privacy.accountant"):
        prepare(make_cfg("privacy=central_dp", "privacy.accountant=pld"))
