"""ExperimentConfig: automatic selection, validation split, refusals."""

import pytest

from actlab.config import ExperimentConfig, members_for
from actlab.errors import ConfigError


def test_one_lr_selects_nothing_and_holds_out_no_validation():
    config = ExperimentConfig()
    assert config.select == "final"
    assert config.val_size == 0


def test_several_lrs_select_on_a_validation_split_by_default():
    config = ExperimentConfig(lrs=(1e-3, 3e-3))
    assert config.select == "val"
    assert config.val_size == 0.1  # a fraction of train; the test split is never used


def test_explicit_choices_are_kept_and_counts_stay_integers():
    config = ExperimentConfig(lrs=(1e-3, 3e-3), select="final")
    assert (config.select, config.val_size) == ("final", 0)
    assert ExperimentConfig(val_size=5000.0).val_size == 5000
    assert isinstance(ExperimentConfig(val_size=5000.0).val_size, int)


def test_resolved_config_round_trips_through_its_dict():
    config = ExperimentConfig(lrs=(1e-3, 3e-3), seeds=(0, 1))
    assert ExperimentConfig.from_dict(config.to_dict()) == config


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"select": "val", "val_size": 0}, "validation split"),
        ({"val_size": 2.5}, "fraction"),
        ({"optimizer": "adagrad"}, "unknown optimizer"),
        ({"seeds": (0, 0)}, "duplicate seeds"),
        ({"output_activation": "softmax"}, "double softmax"),
    ],
)
def test_bad_configs_are_refused_with_one_line(changes, message):
    with pytest.raises(ConfigError, match=message) as error:
        ExperimentConfig(**changes)
    assert "\n" not in str(error.value)


def test_members_are_seed_major():
    config = ExperimentConfig(activations=("relu", "tanh"), seeds=(3, 4), lrs=(1e-3, 1e-2))
    members = members_for(config)
    assert [(m.seed, m.activation, m.lr) for m in members][:3] == [
        (3, "relu", 1e-3),
        (3, "relu", 1e-2),
        (3, "tanh", 1e-3),
    ]
    assert [m.index for m in members] == list(range(8))


def test_unknown_activation_fails_before_any_data_is_loaded(capsys):
    from actlab.cli.main import main

    # mnist is not on this machine: a data error would mean the dataset was looked for first.
    assert (
        main(["compare", "--dataset", "mnist", "--no-download", "--activations", "relu,rleu"]) == 2
    )
    assert "unknown activation 'rleu'; did you mean" in capsys.readouterr().err
