"""Tests for npconv.data.datasets: the real MNIST, lookup, verification, downloads.

No test touches the network: downloads come from file:// URLs or a server on 127.0.0.1.
"""

import functools
import gzip
import hashlib
import http.server
import threading
from pathlib import Path

import numpy as np
import pytest
from dependencies import require_that

import npconv.data.datasets as datasets_module
from npconv.data import DATASETS, load_dataset, pixel_stats, read_idx, to_float, write_idx
from npconv.data.datasets import PARTS, cache_dir, default_search_dirs, download_files
from npconv.errors import DataError

VENDORED_MNIST = Path(datasets_module.__file__).resolve().parent / "mnist"
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
FILE_NAMES = [DATASETS["mnist"].files[part] for part in PARTS]

MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@pytest.fixture(scope="module")
def mnist():
    return load_dataset("mnist")  # how long this takes: benchmarks/budgets.py


def write_small_dataset(directory, n_train=12, n_test=5, size=(28, 28), gz=True, seed=0):
    """Write a tiny random dataset in the MNIST layout; return its arrays by part."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train_images": rng.integers(0, 256, (n_train, *size), dtype=np.uint8),
        "train_labels": rng.integers(0, 10, n_train, dtype=np.uint8),
        "test_images": rng.integers(0, 256, (n_test, *size), dtype=np.uint8),
        "test_labels": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    for part, array in arrays.items():
        name = DATASETS["mnist"].files[part]
        write_idx(directory / (f"{name}.gz" if gz else name), array)
    return arrays


def sha256_of_content(path):
    return hashlib.sha256(gzip.decompress(path.read_bytes())).hexdigest()


def one_line_error(excinfo):
    message = str(excinfo.value)
    assert "\n" not in message, f"message is not one line: {message!r}"
    return message


# --- the real MNIST ---------------------------------------------------------------------------


def test_mnist_shapes_and_types(mnist):
    assert mnist.name == "mnist"
    assert mnist.train_images.shape == (60000, 28, 28)
    assert mnist.train_labels.shape == (60000,)
    assert mnist.test_images.shape == (10000, 28, 28)
    assert mnist.test_labels.shape == (10000,)
    for array in (mnist.train_images, mnist.train_labels, mnist.test_images, mnist.test_labels):
        assert array.dtype == np.uint8
    assert mnist.classes == [str(d) for d in range(10)]
    assert mnist.num_classes == 10
    assert Path(mnist.source) == VENDORED_MNIST


def test_mnist_label_counts(mnist):
    train = np.bincount(mnist.train_labels, minlength=10).tolist()
    test = np.bincount(mnist.test_labels, minlength=10).tolist()
    assert train == MNIST_TRAIN_COUNTS, f"train counts {train} != {MNIST_TRAIN_COUNTS}"
    assert test == MNIST_TEST_COUNTS, f"test counts {test} != {MNIST_TEST_COUNTS}"


def test_mnist_pixel_statistics(mnist):
    mean, std = pixel_stats(mnist.train_images)
    assert round(mean, 4) == 0.1307, f"mean {mean}"
    assert round(std, 4) == 0.3081, f"std {std}"


def test_mnist_standardized_has_zero_mean_unit_std(mnist):
    x = to_float(mnist.train_images[:10000], mean=0.1307, std=0.3081)
    assert x.shape == (10000, 1, 28, 28) and x.dtype == np.float32
    assert abs(x.mean()) < 0.02 and abs(x.std() - 1) < 0.02, f"mean {x.mean()}, std {x.std()}"


def test_mnist_digests(mnist):
    info = DATASETS["mnist"]
    assert mnist.file_sha256 == info.sha256
    combined = hashlib.sha256(b"".join(bytes.fromhex(info.sha256[n]) for n in FILE_NAMES)).hexdigest()
    assert mnist.sha256 == combined


def test_registry():
    assert set(DATASETS) == {"mnist", "fashion-mnist"}
    fashion = DATASETS["fashion-mnist"]
    assert fashion.classes == (
        "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
        "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
    )
    for info in DATASETS.values():
        assert set(info.sha256) == set(info.files.values())
        assert all(len(d) == 64 for d in info.sha256.values())
        assert info.mirrors and info.licence


def test_fashion_mnist_loads_from_the_debian_package():
    require_that(FASHION_DIR.is_dir(), f"no {FASHION_DIR} (apt-get install dataset-fashion-mnist)")
    fashion = load_dataset("fashion-mnist")
    assert Path(fashion.source) == FASHION_DIR
    assert fashion.train_images.shape == (60000, 28, 28)
    assert fashion.test_images.shape == (10000, 28, 28)
    assert np.bincount(fashion.train_labels).tolist() == [6000] * 10
    assert np.bincount(fashion.test_labels).tolist() == [1000] * 10
    assert fashion.classes[9] == "Ankle boot"


def test_unknown_dataset_name():
    with pytest.raises(DataError, match="unknown dataset 'cifar'.*fashion-mnist, mnist"):
        load_dataset("cifar")


# --- a user's data directory: structure enforced, checksums not ------------------------------


def test_data_dir_with_any_idx_dataset(tmp_path):
    arrays = write_small_dataset(tmp_path, gz=False)
    dataset = load_dataset("mnist", data_dir=tmp_path)
    np.testing.assert_array_equal(dataset.train_images, arrays["train_images"])
    np.testing.assert_array_equal(dataset.test_labels, arrays["test_labels"])
    assert dataset.source == str(tmp_path)
    assert len(dataset.sha256) == 64


def test_inside_keep_loaded_a_dataset_is_read_once_and_again_when_a_file_changes(tmp_path, monkeypatch):
    write_small_dataset(tmp_path, seed=0)
    reads = []
    real = datasets_module._read_from
    monkeypatch.setattr(datasets_module, "_read_from", lambda *a: reads.append(1) or real(*a))
    monkeypatch.setattr(datasets_module, "_keeping", 0)  # outside the session's keep_loaded block
    monkeypatch.setattr(datasets_module, "_LOADED", {})
    load_dataset("mnist", data_dir=tmp_path), load_dataset("mnist", data_dir=tmp_path)
    assert len(reads) == 2, "outside keep_loaded every load reads the files"
    with datasets_module.keep_loaded():
        first, again = load_dataset("mnist", data_dir=tmp_path), load_dataset("mnist", data_dir=tmp_path)
        assert len(reads) == 3 and again.train_images is first.train_images
        with pytest.raises(ValueError, match="read-only"):
            first.train_images[0, 0, 0] = 1  # shared by every caller: nobody may change it
        arrays = write_small_dataset(tmp_path, seed=1)  # rewritten: read again
        changed = load_dataset("mnist", data_dir=tmp_path)
        assert len(reads) == 4
        np.testing.assert_array_equal(changed.train_images, arrays["train_images"])
    assert datasets_module._LOADED == {}, "nothing kept after the block"


def test_data_dir_mixes_raw_and_gzip_and_other_image_sizes(tmp_path):
    write_small_dataset(tmp_path, size=(8, 6), gz=True)
    name = DATASETS["mnist"].files["train_labels"]
    labels = read_idx(tmp_path / f"{name}.gz")
    (tmp_path / f"{name}.gz").unlink()
    write_idx(tmp_path / name, labels)
    dataset = load_dataset("fashion-mnist", data_dir=tmp_path)
    assert dataset.train_images.shape == (12, 8, 6)
    assert dataset.classes[0] == "T-shirt/top"


def test_data_dir_missing(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError) as excinfo:
        load_dataset("mnist", data_dir=missing)
    message = one_line_error(excinfo)
    assert message.startswith(f"{missing}: directory does not exist")
    for name in FILE_NAMES:
        assert name in message, f"{name} not listed in {message!r}"


def test_data_dir_missing_one_file(tmp_path):
    write_small_dataset(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError) as excinfo:
        load_dataset("mnist", data_dir=tmp_path)
    message = one_line_error(excinfo)
    assert message.startswith(f"{tmp_path}: missing t10k-labels-idx1-ubyte;"), message
    for name in FILE_NAMES:
        assert name in message


def test_count_mismatch_between_images_and_labels(tmp_path):
    write_small_dataset(tmp_path)
    labels_path = tmp_path / "train-labels-idx1-ubyte.gz"
    write_idx(labels_path, np.zeros(11, dtype=np.uint8))
    with pytest.raises(DataError) as excinfo:
        load_dataset("mnist", data_dir=tmp_path)
    assert one_line_error(excinfo).startswith(f"{labels_path}: 11 labels but")


def test_label_out_of_range(tmp_path):
    write_small_dataset(tmp_path)
    labels_path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    write_idx(labels_path, np.array([0, 1, 10, 3, 4], dtype=np.uint8))
    with pytest.raises(DataError) as excinfo:
        load_dataset("mnist", data_dir=tmp_path)
    assert one_line_error(excinfo).startswith(f"{labels_path}: label 10 at index 2 is not a class")


@pytest.mark.parametrize(
    "part, array, match",
    [
        ("train_images", np.zeros((12, 784), dtype=np.uint8), "expected uint8 images of shape (N, H, W)"),
        ("train_images", np.zeros((12, 28, 28), dtype=np.float32), "expected uint8 images"),
        ("test_labels", np.zeros((5, 1), dtype=np.uint8), "expected uint8 labels of shape (N,)"),
        ("test_labels", np.zeros(5, dtype=np.int32), "expected uint8 labels"),
        ("test_images", np.zeros((5, 27, 28), dtype=np.uint8), "test images are (27, 28) pixels"),
    ],
)
def test_wrong_structure(tmp_path, part, array, match):
    write_small_dataset(tmp_path)
    path = tmp_path / f"{DATASETS['mnist'].files[part]}.gz"
    write_idx(path, array)
    with pytest.raises(DataError) as excinfo:
        load_dataset("mnist", data_dir=tmp_path)
    message = one_line_error(excinfo)
    assert message.startswith(f"{path}: ") and match in message, message


def test_malformed_file_in_data_dir_names_the_file(tmp_path):
    write_small_dataset(tmp_path)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(DataError, match=f"^{path}: corrupt or truncated gzip"):
        load_dataset("mnist", data_dir=tmp_path)


# --- built-in sources: checksums enforced -----------------------------------------------------


@pytest.fixture()
def corrupted_mnist_copy(tmp_path):
    """The vendored MNIST in a temporary folder, with one decompressed label byte changed."""
    copy = tmp_path / "mnist"
    copy.mkdir()
    for name in FILE_NAMES:
        if name != "train-labels-idx1-ubyte":
            (copy / f"{name}.gz").symlink_to(VENDORED_MNIST / f"{name}.gz")
    content = bytearray(gzip.decompress((VENDORED_MNIST / "train-labels-idx1-ubyte.gz").read_bytes()))
    content[8] = (content[8] + 1) % 10  # still a valid label, so only the checksum can tell
    (copy / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(bytes(content), mtime=0))
    return copy


def test_checksum_mismatch_is_detected(corrupted_mnist_copy):
    path = corrupted_mnist_copy / "train-labels-idx1-ubyte.gz"
    expected = DATASETS["mnist"].sha256["train-labels-idx1-ubyte"]
    got = sha256_of_content(path)
    with pytest.raises(DataError) as excinfo:
        load_dataset("mnist", search_dirs=[corrupted_mnist_copy])
    message = one_line_error(excinfo)
    assert message.startswith(f"{path}: SHA-256"), message
    assert expected in message and got in message, message


def test_checksum_not_enforced_with_verify_false_or_data_dir(corrupted_mnist_copy, mnist):
    for dataset in (
        load_dataset("mnist", search_dirs=[corrupted_mnist_copy], verify=False),
        load_dataset("mnist", data_dir=corrupted_mnist_copy),
    ):
        assert dataset.train_labels[0] != mnist.train_labels[0]
        assert dataset.sha256 != mnist.sha256, "the content digest tells the copies apart"


def test_search_order_takes_the_first_complete_directory(tmp_path):
    incomplete = tmp_path / "incomplete"
    incomplete.mkdir()
    (incomplete / "train-images-idx3-ubyte.gz").symlink_to(VENDORED_MNIST / "train-images-idx3-ubyte.gz")
    first, second = tmp_path / "first", tmp_path / "second"
    write_small_dataset(first, seed=1)
    write_small_dataset(second, seed=2)
    dataset = load_dataset("mnist", search_dirs=[tmp_path / "none", incomplete, first, second], verify=False)
    assert dataset.source == str(first)


def test_default_search_dirs(monkeypatch, tmp_path):
    monkeypatch.setenv("NPCONV_DATA_DIR", str(tmp_path))
    assert default_search_dirs(DATASETS["mnist"]) == [VENDORED_MNIST.parent / "mnist", tmp_path / "mnist"]
    assert default_search_dirs(DATASETS["fashion-mnist"]) == [
        VENDORED_MNIST.parent / "fashion-mnist", FASHION_DIR, tmp_path / "fashion-mnist",
    ]


def test_cache_dir_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("NPCONV_DATA_DIR", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert cache_dir("mnist") == tmp_path / "home" / ".cache" / "npconv" / "mnist"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir("mnist") == tmp_path / "xdg" / "npconv" / "mnist"
    monkeypatch.setenv("NPCONV_DATA_DIR", str(tmp_path / "data"))
    assert cache_dir("mnist") == tmp_path / "data" / "mnist"


# --- downloads (file:// and 127.0.0.1 only) ---------------------------------------------------


@pytest.fixture()
def mirror(tmp_path):
    """A directory of small dataset .gz files and their content digests."""
    directory = tmp_path / "mirror"
    write_small_dataset(directory)
    digests = {name: sha256_of_content(directory / f"{name}.gz") for name in FILE_NAMES}
    return directory, digests


@pytest.fixture()
def http_mirror(mirror):
    """Serve the mirror directory over HTTP on 127.0.0.1; yields its base URL."""
    directory, _ = mirror
    handler = functools.partial(QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def test_download_from_file_url(tmp_path, mirror):
    directory, digests = mirror
    dest = tmp_path / "cache" / "deeper"
    paths = download_files(FILE_NAMES, [directory.as_uri()], dest, sha256=digests)
    assert paths == [dest / f"{name}.gz" for name in FILE_NAMES]
    for name in FILE_NAMES:
        assert (dest / f"{name}.gz").read_bytes() == (directory / f"{name}.gz").read_bytes()
    assert sorted(p.name for p in dest.iterdir()) == sorted(f"{n}.gz" for n in FILE_NAMES), "no temp files"


def test_download_over_http_falls_back_to_the_next_mirror(tmp_path, mirror, http_mirror):
    _, digests = mirror
    dead = (tmp_path / "no-such-mirror").as_uri()
    missing_path = http_mirror + "missing/"  # 404 on the same server
    paths = download_files(FILE_NAMES, [dead, missing_path, http_mirror], tmp_path / "cache", sha256=digests)
    assert all(p.is_file() for p in paths)


def test_download_skips_files_already_present(tmp_path, mirror):
    directory, digests = mirror
    dest = tmp_path / "cache"
    dest.mkdir()
    (dest / FILE_NAMES[0]).write_bytes(b"already here")  # raw name counts as present
    paths = download_files(FILE_NAMES, [directory.as_uri()], dest, sha256=digests)
    assert paths[0] == dest / FILE_NAMES[0]
    assert (dest / FILE_NAMES[0]).read_bytes() == b"already here"


def test_failed_download_is_a_clear_data_error(tmp_path, http_mirror):
    dead = (tmp_path / "no-such-mirror").as_uri()
    dest = tmp_path / "cache"
    with pytest.raises(DataError) as excinfo:
        download_files(FILE_NAMES, [dead, http_mirror + "missing/"], dest)
    message = one_line_error(excinfo)
    first = FILE_NAMES[0]
    assert message.startswith(f"{dest / first}.gz: could not download from any mirror"), message
    assert f"{dead}/{first}.gz" in message and "404" in message, message
    assert list(dest.iterdir()) == [], "nothing half-written is left behind"


def test_download_with_wrong_checksum_is_rejected_and_not_kept(tmp_path, mirror):
    directory, digests = mirror
    wrong = dict(digests, **{FILE_NAMES[0]: "0" * 64})
    dest = tmp_path / "cache"
    with pytest.raises(DataError, match="SHA-256 of decompressed content is [0-9a-f]{64}, expected 0{64}"):
        download_files(FILE_NAMES, [directory.as_uri()], dest, sha256=wrong)
    assert list(dest.iterdir()) == []


def test_download_of_a_non_idx_file_is_rejected(tmp_path):
    source = tmp_path / "source"
    source.mkdir()
    (source / f"{FILE_NAMES[0]}.gz").write_bytes(b"<html>not found</html>")
    with pytest.raises(DataError, match="downloaded data: not an IDX file"):
        download_files(FILE_NAMES[:1], [source.as_uri()], tmp_path / "cache")


def test_load_dataset_downloads_into_the_last_search_dir(tmp_path, mnist):
    # The vendored folder doubles as a mirror, so the real checksums are checked.
    cache = tmp_path / "cache"
    dataset = load_dataset("mnist", search_dirs=[tmp_path / "empty", cache], mirrors=[VENDORED_MNIST.as_uri()])
    assert dataset.source == str(cache)
    assert dataset.sha256 == mnist.sha256
    assert sorted(p.name for p in cache.iterdir()) == sorted(f"{n}.gz" for n in FILE_NAMES)


def test_load_dataset_without_files_or_network(tmp_path):
    cache = tmp_path / "cache"
    dead = (tmp_path / "offline").as_uri()
    with pytest.raises(DataError) as excinfo:
        load_dataset("mnist", search_dirs=[tmp_path / "a", cache], mirrors=[dead])
    message = one_line_error(excinfo)
    assert message.startswith(f"{cache}: mnist not found (searched {tmp_path / 'a'}, {cache})"), message
    assert "download failed" in message
    assert "put " + ", ".join(f"{n}.gz" for n in FILE_NAMES) + " there" in message, message


def test_load_dataset_with_download_off(tmp_path):
    with pytest.raises(DataError, match="downloading is off; put train-images-idx3-ubyte.gz"):
        load_dataset("mnist", search_dirs=[tmp_path], download=False)
    assert list(tmp_path.iterdir()) == []

