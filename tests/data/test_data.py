"""Dataset registry, lookup order, verification and splits, on generated files."""

import gzip
import hashlib
import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures.data import make_idx_folder

from actlab.cli.main import main
from actlab.data import datasets as data
from actlab.data import download as dl
from actlab.data import locate, registry
from actlab.data.dataset import Dataset
from actlab.data.datasets import dataset_info, list_datasets, load_dataset
from actlab.data.idx import write_cifar_batch, write_idx
from actlab.errors import DataError

N_TRAIN, N_TEST = 50, 20


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """No system folders, a private cache, no env overrides, no network mirrors."""
    monkeypatch.setattr(locate, "SYSTEM_DIRS", [])
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    for var in ("ACTLAB_DATA", "ACTLAB_MIRRORS", "ACTLAB_VERIFY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(dl, "MIRRORS", {})
    return tmp_path


# --- loading ---------------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [False, True])
def test_idx_dir_loads_exact_tensors(isolated, gz):
    arrays = make_idx_folder(isolated / "d", gz=gz)
    ds = load_dataset(f"idx:{isolated / 'd'}")
    assert isinstance(ds, Dataset)
    assert ds.x_train.dtype == torch.uint8 and ds.y_train.dtype == torch.int64
    assert ds.x_train.shape == (N_TRAIN, 1, 28, 28)
    assert ds.x_test.shape == (N_TEST, 1, 28, 28)
    assert ds.x_val.shape == (0, 1, 28, 28) and ds.y_val.shape == (0,)
    assert ds.input_shape == (1, 28, 28)
    np.testing.assert_array_equal(ds.x_train[:, 0].numpy(), arrays["train-images-idx3-ubyte"])
    np.testing.assert_array_equal(ds.y_test.numpy(), arrays["t10k-labels-idx1-ubyte"])
    assert ds.num_classes == 1 + max(
        arrays["train-labels-idx1-ubyte"].max(), arrays["t10k-labels-idx1-ubyte"].max()
    )
    assert ds.source == str(isolated / "d")


def test_registered_name_from_data_dir_raw_files_have_unknown_checksum(isolated):
    make_idx_folder(isolated / "d", gz=False)
    ds = load_dataset("kmnist", data_dir=str(isolated / "d"))  # no published raw sums
    assert ds.name == "kmnist" and ds.num_classes == 10
    assert set(ds.checksums.values()) == {"unknown"}


def test_raw_files_with_known_content_sums_are_verified(isolated):
    make_idx_folder(isolated / "d", gz=False)
    with pytest.raises(DataError, match=r"d/train-images-idx3-ubyte: checksum does not match"):
        load_dataset("mnist", data_dir=str(isolated / "d"))


def test_gz_files_that_do_not_match_the_published_sums_are_refused(isolated):
    make_idx_folder(isolated / "d", gz=True)
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte.gz: checksum does not match"):
        load_dataset("mnist", data_dir=str(isolated / "d"))
    ds = load_dataset("mnist", data_dir=str(isolated / "d"), verify=False)
    assert ds.train_size == N_TRAIN


def test_verification_can_be_skipped_by_environment(isolated, monkeypatch):
    make_idx_folder(isolated / "d", gz=True)
    monkeypatch.setenv("ACTLAB_VERIFY", "0")
    assert load_dataset("mnist", data_dir=str(isolated / "d")).train_size == N_TRAIN


def test_files_matching_known_sums_are_ok(isolated, monkeypatch):
    folder = isolated / "d"
    make_idx_folder(folder, gz=True)
    sums = {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in folder.iterdir()}
    monkeypatch.setitem(dl.CHECKSUMS, "mnist", sums)
    ds = load_dataset("mnist", data_dir=str(folder))
    assert set(ds.checksums.values()) == {"ok"}


def test_recompressed_files_match_by_content_sum(isolated, monkeypatch):
    folder = isolated / "d"
    arrays = make_idx_folder(folder, gz=False)
    content_sums = {n: hashlib.md5((folder / n).read_bytes()).hexdigest() for n in arrays}
    for name in arrays:  # a different gzip of the same bytes
        raw = (folder / name).read_bytes()
        (folder / name).unlink()
        (folder / (name + ".gz")).write_bytes(gzip.compress(raw, compresslevel=1, mtime=12345))
    monkeypatch.setitem(dl.CHECKSUMS, "kmnist", {n + ".gz": "0" * 32 for n in arrays})
    monkeypatch.setitem(dl.CONTENT_CHECKSUMS, "kmnist", content_sums)
    assert set(load_dataset("kmnist", data_dir=str(folder)).checksums.values()) == {"ok"}


def test_lookup_order_data_dir_then_env_then_cache_then_system(isolated, monkeypatch):
    def folder_with_seed(path, seed):
        make_idx_folder(path, gz=False, seed=seed)
        return path

    system = folder_with_seed(isolated / "sys" / "kmnist", 1)
    monkeypatch.setattr(locate, "SYSTEM_DIRS", [str(isolated / "sys")])
    assert load_dataset("kmnist").source == str(system)

    cache = folder_with_seed(isolated / "cache" / "actlab" / "kmnist", 2)
    assert load_dataset("kmnist").source == str(cache)

    env = folder_with_seed(isolated / "env" / "kmnist", 3)
    monkeypatch.setenv("ACTLAB_DATA", str(isolated / "env"))
    assert load_dataset("kmnist").source == str(env)

    given = folder_with_seed(isolated / "given", 4)
    ds = load_dataset("kmnist", data_dir=str(given))
    assert ds.source == str(given)
    expected = np.random.default_rng(4).integers(0, 256, (N_TRAIN, 28, 28), dtype=np.uint8)
    np.testing.assert_array_equal(ds.x_train[:, 0].numpy(), expected)


def test_torchvision_layout_is_found(isolated):
    make_idx_folder(isolated / "root" / "KMNIST" / "raw", gz=False)
    assert load_dataset("kmnist", data_dir=str(isolated / "root")).source.endswith("KMNIST/raw")


def test_incomplete_folder_is_skipped(isolated):
    make_idx_folder(isolated / "given", gz=False)
    (isolated / "given" / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError, match="mnist not found in"):
        load_dataset("mnist", data_dir=str(isolated / "given"), download=False)


# --- bad input -------------------------------------------------------------------------------


def test_size_mismatch_between_images_and_labels(isolated):
    folder = isolated / "d"
    make_idx_folder(folder, gz=False)
    write_idx(folder / "train-labels-idx1-ubyte", np.zeros(N_TRAIN - 1, dtype=np.uint8))
    with pytest.raises(DataError, match=rf"train-images-idx3-ubyte: {N_TRAIN} images but"):
        load_dataset("mnist", data_dir=str(folder))


def test_truncated_file_through_load_dataset(isolated):
    folder = isolated / "d"
    make_idx_folder(folder, gz=False)
    path = folder / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte: truncated IDX file"):
        load_dataset("mnist", data_dir=str(folder))


def test_wrong_magic_through_load_dataset(isolated):
    folder = isolated / "d"
    make_idx_folder(folder, gz=False)
    path = folder / "train-labels-idx1-ubyte"
    path.write_bytes(b"\x01" + path.read_bytes()[1:])
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte: wrong magic number"):
        load_dataset("mnist", data_dir=str(folder))


def test_wrong_image_size_for_a_registered_dataset(isolated):
    folder = isolated / "d"
    make_idx_folder(folder, gz=False)
    write_idx(folder / "train-images-idx3-ubyte", np.zeros((N_TRAIN, 8, 8), dtype=np.uint8))
    write_idx(folder / "t10k-images-idx3-ubyte", np.zeros((N_TEST, 8, 8), dtype=np.uint8))
    with pytest.raises(DataError, match=r"shape \(1, 8, 8\), expected \(1, 28, 28\)"):
        load_dataset("kmnist", data_dir=str(folder))


def test_missing_dataset_without_download_says_how_to_get_it(isolated):
    with pytest.raises(DataError) as info:
        load_dataset("fashion-mnist", download=False)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("fashion-mnist not found in [")
    assert str(isolated / "cache" / "actlab" / "fashion-mnist") in message
    assert "apt-get install dataset-fashion-mnist" in message
    assert "--data-dir" in message


def test_missing_dataset_with_no_mirror_reachable(isolated, monkeypatch):
    monkeypatch.setenv("ACTLAB_MIRRORS", "http://127.0.0.1:9/")  # discard port: refused
    with pytest.raises(DataError, match=r"mnist not found in .* and the download failed"):
        load_dataset("mnist", progress=False)
    assert not any((isolated / "cache" / "actlab" / "mnist").glob("*"))


def test_unknown_name_suggests_the_nearest():
    with pytest.raises(
        DataError, match=r"unknown dataset 'fashon-mnist'; did you mean 'fashion-mnist'"
    ):
        load_dataset("fashon-mnist")


def test_aliases_resolve():
    assert registry.resolve_name("Fashion_MNIST") == "fashion-mnist"
    assert registry.resolve_name("CIFAR-10") == "cifar10"


def test_cli_turns_data_errors_into_exit_code_2(isolated, capsys, monkeypatch):
    def listing_that_loads(data_dir=None):
        return [load_dataset("kmnist", download=False)]

    monkeypatch.setattr(data, "list_datasets", listing_that_loads)
    assert main(["datasets"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("actlab: error: kmnist not found in [")
    assert err.count("\n") == 1


# --- splits ----------------------------------------------------------------------------------


def test_val_split_is_fixed_disjoint_and_independent_of_torch_seed(isolated):
    make_idx_folder(isolated / "d", gz=False)
    name = f"idx:{isolated / 'd'}"
    full = load_dataset(name)
    torch.manual_seed(123)
    np.random.seed(123)
    a = load_dataset(name, val_size=10)
    torch.manual_seed(7)
    np.random.seed(7)
    b = load_dataset(name, val_size=10)
    assert torch.equal(a.x_val, b.x_val) and torch.equal(a.x_train, b.x_train)
    assert a.x_val.shape[0] == 10 and a.x_train.shape[0] == N_TRAIN - 10
    # Together they are exactly the original train split, each sample once.
    rows = torch.cat([a.x_train, a.x_val]).reshape(N_TRAIN, -1)
    original = full.x_train.reshape(N_TRAIN, -1)
    assert sorted(map(bytes, rows.numpy())) == sorted(map(bytes, original.numpy()))
    # The val split is not simply the head or the tail of train.
    assert not torch.equal(a.x_val, full.x_train[:10])
    assert not torch.equal(a.x_val, full.x_train[-10:])
    assert torch.equal(a.x_test, full.x_test)


def test_val_size_may_be_a_fraction_of_train(isolated):
    make_idx_folder(isolated / "d", gz=False)
    name = f"idx:{isolated / 'd'}"
    by_fraction = load_dataset(name, val_size=0.1)
    by_count = load_dataset(name, val_size=round(0.1 * N_TRAIN))
    assert torch.equal(by_fraction.x_val, by_count.x_val)
    assert torch.equal(by_fraction.x_train, by_count.x_train)


def test_limits_take_prefixes_after_the_val_split(isolated):
    make_idx_folder(isolated / "d", gz=False)
    name = f"idx:{isolated / 'd'}"
    with_val = load_dataset(name, val_size=10)
    limited = load_dataset(name, val_size=10, limit_train=7, limit_test=5)
    assert torch.equal(limited.x_train, with_val.x_train[:7])
    assert torch.equal(limited.x_val, with_val.x_val)
    assert torch.equal(limited.y_test, with_val.y_test[:5])
    assert load_dataset(name, limit_train=10_000).train_size == N_TRAIN


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"val_size": N_TRAIN}, "leaves no training data"),
        ({"val_size": -1}, "--val-size"),
        ({"limit_train": 0}, "--limit-train must be a positive integer"),
        ({"limit_test": -3}, "--limit-test must be a positive integer"),
    ],
)
def test_bad_split_arguments(isolated, kwargs, match):
    make_idx_folder(isolated / "d", gz=False)
    with pytest.raises(DataError, match=match):
        load_dataset(f"idx:{isolated / 'd'}", **kwargs)


def test_float_inputs_default_scaling_and_standardize(isolated):
    make_idx_folder(isolated / "d", gz=False)
    name = f"idx:{isolated / 'd'}"
    plain = load_dataset(name)
    assert plain.mean is None and plain.std is None
    x = plain.float_inputs(plain.x_train)
    assert x.dtype == torch.float32
    torch.testing.assert_close(x, plain.x_train.double().div(255).float())

    std = load_dataset(name, val_size=10, standardize=True)
    reference = std.x_train.double() / 255
    assert std.mean == pytest.approx(reference.mean().item(), rel=1e-12)
    assert std.std == pytest.approx(reference.std(unbiased=False).item(), rel=1e-12)
    z = std.float_inputs(std.x_train)
    assert z.mean().item() == pytest.approx(0.0, abs=1e-5)
    assert z.std(unbiased=False).item() == pytest.approx(1.0, abs=1e-5)
    # Statistics come from train only: the test split is not centred exactly.
    assert std.float_inputs(std.x_test).mean().item() != pytest.approx(0.0, abs=1e-6)


def test_summary_matches_the_run_directory_contract(isolated):
    make_idx_folder(isolated / "d", gz=False)
    summary = load_dataset(f"idx:{isolated / 'd'}", val_size=5).summary()
    assert summary["input_shape"] == [1, 28, 28]
    assert (summary["train_size"], summary["val_size"], summary["test_size"]) == (45, 5, N_TEST)
    assert summary["source"] == str(isolated / "d")


# --- other formats ---------------------------------------------------------------------------


@pytest.mark.slow  # importing scikit-learn takes seconds on a busy machine
def test_digits_from_sklearn_with_fixed_split():
    pytest.importorskip("sklearn")
    a = load_dataset("digits")
    b = load_dataset("digits")
    assert a.x_train.shape == (1438, 1, 8, 8) and a.x_test.shape == (359, 1, 8, 8)
    assert a.x_train.dtype == torch.uint8 and int(a.x_train.max()) == 16
    assert torch.equal(a.x_test, b.x_test) and torch.equal(a.y_train, b.y_train)
    assert a.num_classes == 10 and a.source == "sklearn"
    assert a.float_inputs(a.x_train).max().item() == 1.0


def make_cifar_batches(folder: Path, per_batch: int = 4):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(5)
    written = {}
    for name in (*registry.CIFAR_TRAIN_BATCHES, registry.CIFAR_TEST_BATCH):
        images = rng.integers(0, 256, (per_batch, 3, 32, 32), dtype=np.uint8)
        labels = rng.integers(0, 10, per_batch)
        if name == registry.CIFAR_TEST_BATCH:  # classes the train batches hold (actlab checks)
            seen = np.concatenate([written[b][1] for b in registry.CIFAR_TRAIN_BATCHES])
            labels = rng.choice(np.unique(seen), per_batch)
        write_cifar_batch(folder / name, images, labels)
        written[name] = (images, labels)
    return written


def test_cifar10_from_batch_files(isolated):
    written = make_cifar_batches(isolated / "d" / "cifar-10-batches-bin")
    ds = load_dataset("cifar10", data_dir=str(isolated / "d"))
    assert ds.x_train.shape == (20, 3, 32, 32) and ds.x_test.shape == (4, 3, 32, 32)
    assert ds.input_shape == (3, 32, 32)
    np.testing.assert_array_equal(ds.x_train[4:8].numpy(), written["data_batch_2.bin"][0])
    np.testing.assert_array_equal(ds.y_test.numpy(), written["test_batch.bin"][1])


def test_cifar10_from_the_binary_archive_with_checksum(isolated, monkeypatch):
    written = make_cifar_batches(isolated / "src" / "cifar-10-batches-bin")
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(isolated / "src" / "cifar-10-batches-bin", arcname="cifar-10-batches-bin")
    archive = isolated / "d" / "cifar-10-binary.tar.gz"
    archive.parent.mkdir()
    archive.write_bytes(buffer.getvalue())
    with pytest.raises(DataError, match="cifar-10-binary.tar.gz: checksum does not match"):
        load_dataset("cifar10", data_dir=str(isolated / "d"))
    monkeypatch.setitem(
        dl.CHECKSUMS, "cifar10", {archive.name: hashlib.md5(buffer.getvalue()).hexdigest()}
    )
    ds = load_dataset("cifar10", data_dir=str(isolated / "d"))
    assert ds.checksums == {archive.name: "ok"}
    np.testing.assert_array_equal(ds.x_test.numpy(), written["test_batch.bin"][0])


def save_npz(path, **arrays):
    np.savez(path, **arrays)
    return f"npz:{path}"


@pytest.mark.parametrize(
    "x_shape, expected",
    [
        ((6, 5, 7), (1, 5, 7)),
        ((6, 5, 7, 3), (3, 5, 7)),
        ((6, 5, 7, 1), (1, 5, 7)),
        ((6, 3, 5, 7), (3, 5, 7)),
        ((6, 11), (1, 1, 11)),
    ],
)
def test_npz_layouts(tmp_path, x_shape, expected):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, x_shape, dtype=np.uint8)
    name = save_npz(
        tmp_path / "d.npz", x_train=x, y_train=np.arange(6) % 4, x_test=x[:2], y_test=[0, 3]
    )
    ds = load_dataset(name)
    assert ds.input_shape == expected
    assert ds.x_train.shape == (6, *expected) and ds.x_train.dtype == torch.uint8
    assert ds.num_classes == 4
    if len(x_shape) == 4 and x_shape[-1] == 3:
        assert ds.x_train[1, 2, 3, 4].item() == x[1, 3, 4, 2]


def test_npz_float_inputs_are_not_rescaled(tmp_path):
    x = np.linspace(-1, 1, 4 * 3 * 3, dtype=np.float64).reshape(4, 3, 3)
    ds = load_dataset(
        save_npz(tmp_path / "f.npz", x_train=x, y_train=[0, 1, 0, 1], x_test=x, y_test=[1, 1, 0, 0])
    )
    assert ds.x_train.dtype == torch.float32
    torch.testing.assert_close(ds.float_inputs(ds.x_train)[:, 0], torch.from_numpy(x).float())


@pytest.mark.parametrize(
    "arrays, match",
    [
        (
            {"x_train": np.zeros((3, 2, 2)), "y_train": [0, 1, 2], "x_test": np.zeros((1, 2, 2))},
            "missing arrays \\['y_test'\\]",
        ),
        (
            {
                "x_train": np.zeros((3, 2, 2)),
                "y_train": [0, 1],
                "x_test": np.zeros((1, 2, 2)),
                "y_test": [0],
            },
            "x_train has 3 samples but y_train has 2",
        ),
        (
            {
                "x_train": np.zeros((3, 2, 2)),
                "y_train": [0.5, 1, 2],
                "x_test": np.zeros((1, 2, 2)),
                "y_test": [0],
            },
            "integer class labels",
        ),
        (
            {
                "x_train": np.zeros((3, 2, 2)),
                "y_train": [0, 1, 2],
                "x_test": np.zeros((1, 3, 3)),
                "y_test": [0],
            },
            "x_test samples are",
        ),
        (
            {
                "x_train": np.full((1, 2, 2), 300),
                "y_train": [0],
                "x_test": np.zeros((1, 2, 2), int),
                "y_test": [0],
            },
            "outside 0..255",
        ),
    ],
)
def test_npz_bad_input(tmp_path, arrays, match):
    name = save_npz(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DataError, match=match):
        load_dataset(name)


def test_npz_not_a_zip_and_missing_file(tmp_path):
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="junk.npz: not a readable .npz"):
        load_dataset(f"npz:{tmp_path / 'junk.npz'}")
    with pytest.raises(DataError, match="nope.npz: file not found"):
        load_dataset(f"npz:{tmp_path / 'nope.npz'}")


def test_idx_dir_errors(tmp_path):
    with pytest.raises(DataError, match="not a folder"):
        load_dataset(f"idx:{tmp_path / 'absent'}")
    make_idx_folder(tmp_path / "d", gz=False)
    (tmp_path / "d" / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError, match=r"no t10k-labels\* file"):
        load_dataset(f"idx:{tmp_path / 'd'}")


# --- listing ---------------------------------------------------------------------------------


def test_list_datasets_reports_found_missing_and_checksums(isolated, monkeypatch):
    folder = isolated / "given"
    make_idx_folder(folder, gz=True, n_train=30, n_test=12)
    rows = {row["name"]: row for row in list_datasets(str(folder))}
    # every image classifier, then the regression set and the offline text corpus
    assert set(rows) == set(registry.REGISTRY) | {"diabetes", "text:stdlib"}
    assert rows["diabetes"]["task"] == "regress" and rows["diabetes"]["found"]
    assert (rows["diabetes"]["train_size"], rows["diabetes"]["test_size"]) == (354, 88)
    assert rows["text:stdlib"]["task"] == "lm" and rows["text:stdlib"]["num_classes"] == 256
    # The generated gz files sit where mnist, fashion-mnist and kmnist are looked for.
    assert rows["mnist"]["found"] and rows["mnist"]["where"] == str(folder)
    assert (rows["mnist"]["train_size"], rows["mnist"]["test_size"]) == (30, 12)
    assert rows["mnist"]["checksum"].startswith("mismatch")
    assert not rows["cifar10"]["found"] and rows["cifar10"]["checksum"] == "-"
    sums = {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in folder.iterdir()}
    monkeypatch.setitem(dl.CHECKSUMS, "mnist", sums)
    assert dataset_info("mnist", str(folder))["checksum"] == "ok"


def test_actlab_datasets_command(isolated, capsys):
    make_idx_folder(isolated / "given" / "kmnist", gz=False)
    assert main(["datasets", "--data-dir", str(isolated / "given")]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line for line in out.splitlines()[1:-1]}
    assert set(lines) == set(registry.REGISTRY) | {"diabetes", "text:stdlib"}
    assert "regress" in lines["diabetes"] and "lm" in lines["text:stdlib"]
    assert "text:PATH" in out.splitlines()[-1]
    assert "found" in lines["kmnist"] and str(isolated / "given" / "kmnist") in lines["kmnist"]
    assert "unknown" in lines["kmnist"] and "1x28x28" in lines["kmnist"]
    assert "missing" in lines["mnist"] and "--data-dir" in lines["mnist"]
