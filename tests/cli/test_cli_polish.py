"""A first session with the command line (issue 12): help and version, defaults in --help,
seed ranges, training longer, Ctrl-C and resume lines, plot and report messages, Keras
parameter names, softmax's dim, dir(actlab), and datasets offline."""

import csv
import json

import numpy as np
import pytest
import torch

import actlab
from actlab.cli.main import main, merge_line, parse_seeds
from actlab.data import datasets as data
from actlab.data import download as dl
from actlab.data import locate
from actlab.errors import ConfigError, DataError, SpecError
from actlab.study.store import merge_runs

pytestmark = pytest.mark.usefixtures("restore_threads")


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> str:
    rng = np.random.default_rng(1)
    path = tmp_path_factory.mktemp("data") / "small.npz"
    x = rng.integers(0, 256, (320, 6, 6), dtype=np.uint8)
    y = (x.reshape(320, -1)[:, :5].sum(1) % 3).astype(np.int64)
    np.savez(path, x_train=x[:256], y_train=y[:256], x_test=x[256:], y_test=y[256:])
    return f"npz:{path}"


def compare(small, out, *args):
    return main(["compare", "--dataset", small, "--hidden", "8", "--activations", "relu,tanh",
                 "--threads", "1", "--no-report", "--seeds", "1", "--out", str(out), *args])  # fmt: skip


def rows(run):
    with (run / "metrics.csv").open() as handle:
        return [{k: v for k, v in r.items() if k != "epoch_time_s"} for r in csv.DictReader(handle)]


def test_actlab_alone_prints_help_and_version_works(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: actlab") and "compare" in out and "examples:" in out
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0 and capsys.readouterr().out == f"actlab {actlab.__version__}\n"


def test_compare_help_shows_every_default(capsys):
    with pytest.raises(SystemExit):
        main(["compare", "--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for option, default in [("--epochs", "10"), ("--lr", "1e-3"), ("--seeds", "10"),
                            ("--min-gap", "0.5"),
                            ("--activations", "relu,sigmoid,tanh,leaky_relu"),
                            ("--hidden", "128,128"), ("--batch-size", "64")]:  # fmt: skip
        section = text.split(f"{option} ", 2)[2] if text.count(f"{option} ") > 1 else text
        assert f"(default: {default})" in section.split(" --")[0] + section, option
    assert "(default: None)" not in text and "(default: False)" not in text


def test_seed_counts_ranges_and_lists():
    assert parse_seeds("3") == (0, 1, 2)
    assert parse_seeds("2", start=3) == (3, 4)
    assert parse_seeds("3..4") == (3, 4) and parse_seeds("2..2") == (2,)
    assert parse_seeds("0,5,7") == (0, 5, 7)
    for bad in ("4..3", "a..b", "0", "-1..2"):
        with pytest.raises(ConfigError, match="--seeds"):
            parse_seeds(bad)


def test_added_seeds_merge_and_the_report_says_so(small, tmp_path, capsys):
    assert compare(small, tmp_path / "a", "--epochs", "1", "--seeds", "2", "--quiet") == 0
    assert compare(small, tmp_path / "b", "--epochs", "1", "--seeds", "2..3", "--quiet") == 0
    assert compare(small, tmp_path / "c", "--epochs", "1", "--seeds", "1", "--seed-start", "4",
                   "--quiet") == 0  # fmt: skip
    assert {r["seed"] for r in rows(tmp_path / "b")} == {"2", "3"}
    assert {r["seed"] for r in rows(tmp_path / "c")} == {"4"}
    # what `actlab report RUN_A RUN_B` prints before writing the merged report
    out = merge_line(merge_runs([tmp_path / "a", tmp_path / "b"]))
    assert f"merged 2 runs of one study: {tmp_path / 'a'} (seeds 0, 1), " in out
    assert f"{tmp_path / 'b'} (seeds 2, 3); the report pools 4 seeds" in out


def test_a_finished_study_trains_longer_from_its_checkpoint(small, tmp_path, capsys):
    longer, fresh = tmp_path / "longer", tmp_path / "fresh"
    assert compare(small, longer, "--epochs", "1", "--seeds", "2", "--quiet") == 0
    capsys.readouterr()
    assert compare(small, longer, "--epochs", "2", "--seeds", "2") == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "resuming after epoch 1/2"
    assert compare(small, fresh, "--epochs", "2", "--seeds", "2", "--quiet") == 0
    assert rows(longer) == rows(fresh)  # the same numbers as a longer run from the start
    document = json.loads((longer / "config.json").read_text())
    assert document["config"]["epochs"] == 2
    assert document["continued"][0]["from_epochs"] == 1
    capsys.readouterr()
    assert compare(small, longer, "--epochs", "1", "--seeds", "2") == 2  # fewer: refused
    assert "different study (epochs 2 there, 1 asked)" in capsys.readouterr().err


def test_a_depth_study_is_not_continued_with_more_epochs(small, tmp_path, capsys):
    run = tmp_path / "depths"
    assert compare(small, run, "--epochs", "1", "--depths", "1,2", "--quiet") == 0
    assert compare(small, run, "--epochs", "2", "--depths", "1,2", "--quiet") == 2
    assert "cannot be continued with more --epochs" in capsys.readouterr().err


def test_ctrl_c_says_how_to_resume(small, tmp_path, capsys, monkeypatch):
    import actlab.study.driver

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(actlab.study.driver, "run_study", interrupted)
    assert compare(small, tmp_path / "r", "--epochs", "1", "--quiet") == 130
    err = capsys.readouterr().err
    assert err.startswith("actlab: interrupted; the run directory ")
    assert "rerun the same command to resume" in err and err.count("\n") == 1


def test_plot_says_where_it_wrote_and_takes_jpg_and_pdf(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["plot", "swish", "relu", "--derivatives", "0"]) == 0
    assert capsys.readouterr().out == "wrote activations.png (choose the file with -o FILE)\n"
    for suffix, magic in ((".jpg", b"\xff\xd8"), (".pdf", b"%PDF")):
        target = tmp_path / f"act{suffix}"
        assert main(["plot", "relu", "--derivatives", "0", "-o", str(target)]) == 0
        assert capsys.readouterr().out == f"wrote {target}\n"
        assert target.read_bytes().startswith(magic)
    assert main(["plot", "relu", "-o", str(tmp_path / "act.gif")]) == 2


def test_dir_lists_the_public_api():
    names = [name for name in dir(actlab) if not name.startswith("_")]
    assert {"get", "get_fn", "register", "compare", "load_dataset", "ExperimentConfig"} <= set(
        names
    )
    assert "importlib" not in names and "annotations" not in names


def test_keras_parameter_names_are_translated_or_refused_with_the_torch_spec():
    assert actlab.get("leaky_relu(alpha=0.2)").negative_slope == 0.2
    assert actlab.get("gelu(approximate=True)").approximate == "tanh"
    assert actlab.get("gelu(approximate=False)").approximate == "none"
    with pytest.raises(SpecError, match="Keras' relu\\(max_value=6\\) is 'relu6' here"):
        actlab.get("relu(max_value=6)")
    with pytest.raises(SpecError, match="'hardtanh\\(min_val=0, max_val=3\\)'"):
        actlab.get("relu(max_value=3)")
    with pytest.raises(SpecError, match="'expr:x \\* sigmoid\\(2.0 \\* x\\)'"):
        actlab.get("silu(beta=2.0)")
    with pytest.raises(SpecError, match="its parameters are inplace$"):
        actlab.get("relu(foo=1)")
    # and the suggested specs resolve
    actlab.get("hardtanh(min_val=0, max_val=3)")
    actlab.get("expr:x * sigmoid(2.0 * x)")


def test_keras_names_compute_what_keras_computes():
    keras = pytest.importorskip("keras")
    x = np.linspace(-8, 8, 161, dtype=np.float32)
    pairs = [
        ("leaky_relu(alpha=0.2)", lambda v: keras.activations.leaky_relu(v, negative_slope=0.2)),
        ("gelu(approximate=True)", lambda v: keras.activations.gelu(v, approximate=True)),
        ("relu6", lambda v: keras.activations.relu(v, max_value=6.0)),
        ("hardtanh(min_val=0, max_val=3)", lambda v: keras.activations.relu(v, max_value=3.0)),
    ]
    for spec, oracle in pairs:
        expected = keras.ops.convert_to_numpy(oracle(keras.ops.convert_to_tensor(x)))
        ours = actlab.get_fn(spec)(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(ours, expected, atol=1e-6, err_msg=spec)


def test_softmax_needs_dim_everywhere(small, tmp_path, capsys):
    for call in (lambda: actlab.get("softmax"), lambda: actlab.get_fn("softmax")):
        with pytest.raises(SpecError, match="softmax needs dim"):
            call()
    assert main(["plot", "softmax", "-o", str(tmp_path / "s.png")]) == 2
    assert compare(small, tmp_path / "s", "--activations", "softmax") == 2
    errors = capsys.readouterr().err.splitlines()
    assert errors == ["actlab: error: softmax needs dim, e.g. 'softmax(dim=-1)'"] * 2
    assert main(["show", "softmax"]) == 0
    assert "needs dim everywhere (get, get_fn, plot, --activations)" in capsys.readouterr().out
    assert actlab.get("softmax(dim=-1)")(torch.zeros(2, 4)).sum().item() == pytest.approx(2.0)


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """A machine with fashion-mnist in a system folder, mnist nowhere, no network."""
    from fixtures.data import make_idx_folder

    system = tmp_path / "system"
    make_idx_folder(system / "fashion-mnist", gz=True)
    monkeypatch.setattr(locate, "SYSTEM_DIRS", [str(system)])
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    for var in ("ACTLAB_DATA", "ACTLAB_VERIFY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("ACTLAB_MIRRORS", "http://127.0.0.1:9/")  # nothing listens there
    return tmp_path


def test_mnist_offline_suggests_what_is_here_and_leaves_no_folder(offline):
    with pytest.raises(DataError) as error:
        data.load_dataset("mnist", progress=False)
    message = str(error.value)
    assert "\n" not in message and "the download failed" in message
    assert message.endswith(
        f"; fashion-mnist is on this machine ({offline / 'system' / 'fashion-mnist'}): "
        "--dataset fashion-mnist runs offline"
    )
    assert not (offline / "cache" / "actlab").exists()  # no empty cache folder left behind


def test_a_system_file_with_a_bad_checksum_is_not_for_deleting(offline, monkeypatch):
    monkeypatch.setitem(
        dl.CHECKSUMS, "fashion-mnist", dict.fromkeys(dl.CHECKSUMS["fashion-mnist"], "0" * 32)
    )
    with pytest.raises(DataError) as error:
        data.load_dataset("fashion-mnist", progress=False)
    message = str(error.value)
    assert "checksum does not match" in message and "delete it" not in message
    assert "reinstall the package that provides it" in message
