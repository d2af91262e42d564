"""`actlab compare`'s options are generated from ExperimentConfig's fields (issue 22): one place
for every default, so the command and `actlab.compare()` run the same study by default."""

import argparse
import dataclasses

import pytest

from actlab.cli.base import OneLineParser
from actlab.cli.compare import RunOptions, config_from_args
from actlab.cli.main import build_parser, main
from actlab.cli.options import add_options, float_text, options_of, values_from
from actlab.config import DEFAULT_SEEDS, ExperimentConfig, option
from actlab.errors import ConfigError
from actlab.study.driver import config_from_options


def parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["compare", *argv])


def test_the_command_and_the_python_api_run_the_same_study_by_default():
    from_shell = config_from_args(parse())
    assert from_shell == ExperimentConfig() == config_from_options()
    assert from_shell.seeds == tuple(range(DEFAULT_SEEDS)) == tuple(range(10))


def test_every_config_option_is_on_the_command_line_with_its_default(capsys):
    with pytest.raises(SystemExit):
        main(["compare", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for item in options_of(ExperimentConfig):
        assert item.flag in text, item.name
    # a field without option metadata is not an option (the user model's source hash)
    assert "--model-sha256" not in text and "--model-source" not in text
    assert "(default: 10)" in text and "(default: 1e-3)" in text


def test_options_parse_into_the_config_fields():
    config = config_from_args(
        parse(
            "--seeds",
            "2",
            "--seed-start",
            "3",
            "--lr",
            "1e-3,3e-3",
            "--no-download",
            "--hidden",
            "32,16",
            "--activations",
            "relu,elu(alpha=0.5)",
            "--init-gain",
            "--no-diagnostics",
            "--depths",
            "1,2",
            "--min-gap",
            "0.3",
        )  # fmt: skip
    )
    assert config.seeds == (3, 4) and config.lrs == (1e-3, 3e-3)
    assert not config.download and not config.diagnostics and config.init_gain
    assert config.hidden == (32, 16) and config.depths == (1, 2)
    assert config.activations == ("relu", "elu(alpha=0.5)") and config.min_gap == 0.3
    run = RunOptions(
        **values_from(parse("--no-report", "--log", "tensorboard", "--ray"), RunOptions)
    )
    assert not run.report and run.log == ("tensorboard",) and run.ray == "auto"
    assert RunOptions(**values_from(parse(), RunOptions)) == RunOptions()


def test_a_new_field_with_metadata_is_a_new_option():
    @dataclasses.dataclass(frozen=True)
    class Options:
        width: int = option(64, "model width", group="model", aliases=("--dim",))
        schedule: str = option(
            "cosine", "lr schedule", group="training", choices=("cosine", "none")
        )
        clip: float | None = option(None, "clip grad norm", group="training")
        bias: bool = option(True, "no biases", group="model")
        context: tuple[int, ...] = option((128, 256), "contexts", group="model", kind="ints")
        internal: str = "not an option"

    parser = OneLineParser(prog="x")
    add_options(parser, Options)
    assert Options(**values_from(parser.parse_args([]), Options)) == Options()
    args = parser.parse_args(["--dim", "8", "--schedule", "none", "--clip", "1", "--no-bias",
                              "--context", "16"])  # fmt: skip
    assert Options(**values_from(args, Options)) == Options(8, "none", 1.0, False, (16,))
    assert "--internal" not in parser.format_help()
    with pytest.raises(ConfigError, match="--context 'a': expected integers"):
        values_from(parser.parse_args(["--context", "a"]), Options)


def test_bad_choices_and_types_are_one_line_errors(capsys):
    for argv, words in ((["--optimizer", "adagrad"], "invalid choice"),
                        (["--epochs", "ten"], "invalid int value")):  # fmt: skip
        with pytest.raises(SystemExit) as exit_info:
            main(["compare", *argv])
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and len(err.splitlines()) == 1 and words in err


def test_floats_are_shown_as_typed():
    assert [float_text(v) for v in (1e-3, 3e-4, 0.5, 0.1, 10.0, 2.5e-5)] == [
        "1e-3", "3e-4", "0.5", "0.1", "10", "2.5e-5",
    ]  # fmt: skip
