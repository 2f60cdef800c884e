"""Model files are untrusted: every way one can be wrong gives one clear ModelFileError, never a crash.

Also fuzzes the loader (and the checkpoint loader, which shares its reader) with
random and mutated files: the only failure allowed is npconv's own error type.
"""

import io
import json
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from npconv.train.checkpoint import load_checkpoint
from npconv.cli import main
from npconv.errors import CheckpointError, ModelFileError
from npconv.models import build_model
from npconv.io.npz import MAX_NPZ_BYTES
from npconv.train.modelfile import CONFIG_KEY, FORMAT, load_model, save_model

MODEL_CONFIG = {"model": "mlp", "dropout": 0.0, "dropout_at": "before-fc", "dtype": "float32", "num_classes": 10,
                "classes": [str(i) for i in range(10)], "dataset": "mnist", "normalize_mean": 0.1307,
                "normalize_std": 0.3081}


def mlp_arrays(dtype=np.float32):
    model = build_model("mlp", rng=np.random.default_rng(0), dtype=dtype)
    return {name: a.copy() for name, a in model.state_dict().items()}


def write_npz(path, arrays, config=MODEL_CONFIG):
    """An npz like save_model's, from raw arrays and a config (None: no config entry)."""
    arrays = dict(arrays)
    if config is not None:
        arrays[CONFIG_KEY] = np.array(json.dumps({"format": FORMAT, **config}))
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    return path


def assert_model_file_error(path, match):
    with pytest.raises(ModelFileError) as info:
        load_model(path)
    message = str(info.value)
    assert message.startswith(f"{path}: "), f"message does not name the file: {message!r}"
    assert "\n" not in message, f"message is not one line: {message!r}"
    assert match in message, f"expected {match!r} in {message!r}"
    return message


@pytest.fixture
def good_file(tmp_path):
    model = build_model("mlp", rng=np.random.default_rng(0))
    save_model(tmp_path / "good.npz", model, MODEL_CONFIG)
    return tmp_path / "good.npz"


def test_round_trip(good_file):
    model, config = load_model(good_file)
    assert config["model"] == "mlp" and config["num_classes"] == 10
    np.testing.assert_array_equal(model.state_dict()["1.weight"], mlp_arrays()["1.weight"])


def _object_array_file(path):
    arrays = mlp_arrays()
    arrays["1.bias"] = np.array([{"evil": "payload"}], dtype=object)  # would need pickle to load
    return write_npz(path, arrays)


def _big_header_file(path):
    """A valid zip whose npy header claims 10^12 float32 elements but holds 8 bytes."""
    header = "{'descr': '<f4', 'fortran_order': False, 'shape': (1000000000000,), }"
    header = header + " " * (118 - len(header)) + "\n"
    npy = b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode() + b"\0" * 8
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("1.weight.npy", npy)
    path.write_bytes(buf.getvalue())
    return path


def _raw(data):
    def make(path):
        path.write_bytes(data)
        return path
    return make


def _npy_file(path):
    buf = io.BytesIO()
    np.save(buf, np.zeros(3))
    path.write_bytes(buf.getvalue())
    return path


def _with(arrays=None, config=None, drop=(), **changes):
    def make(path):
        a = mlp_arrays() if arrays is None else arrays
        a = {k: v for k, v in {**a, **changes}.items() if k not in drop}
        return write_npz(path, a, MODEL_CONFIG if config is None else config)
    return make


@pytest.mark.parametrize(
    "make, match",
    [
        (_raw(b""), "not an npz model file"),
        (_raw(b"hello, I am text"), "not an npz model file"),
        (_npy_file, "not an npz model file"),
        (_object_array_file, "holds Python objects"),
        (_big_header_file, "implies 4000000000000 bytes"),
        (_with(drop=["3.bias"]), "missing ['3.bias']"),
        (_with(extra=np.zeros(3, np.float32)), "unexpected ['extra']"),
        (_with(**{"1.weight": np.zeros((128, 100), np.float32)}), "shape (128, 100)"),
        (_with(arrays=mlp_arrays(np.float64)), "dtype float64"),
        (_with(arrays=mlp_arrays(), config={**MODEL_CONFIG, "model": "cnn"}), "do not fit the cnn architecture"),
        (_with(config={**MODEL_CONFIG, "model": "resnet"}), "'model' must be one of cnn, mlp"),
        (_with(config={**MODEL_CONFIG, "num_classes": 10**12}), "'num_classes' must be an integer"),
        (_with(config={**MODEL_CONFIG, "num_classes": 7}), "shape (10, 128) does not fit"),
        (_with(config={**MODEL_CONFIG, "dtype": "int8"}), "'dtype' must be one of float32, float64"),
        (_with(config={**MODEL_CONFIG, "dropout": 2}), "'dropout' must be in [0, 1)"),
        (_with(config={**MODEL_CONFIG, "dropout_at": ["x"]}), "'dropout_at' must be one of"),
        (_with(config={**MODEL_CONFIG, "normalize_std": 0}), "'normalize_std' must be"),
        (_with(config={**MODEL_CONFIG, "classes": "0123456789"}), "'classes' must be a list"),
        (_with(config={**MODEL_CONFIG, "dataset": ["mnist"]}), "'dataset' must be a dataset name"),
        (lambda p: write_npz(p, mlp_arrays(), None), "no __config__ entry"),
        (lambda p: write_npz(p, {**mlp_arrays(), CONFIG_KEY: np.array("not json {")}, None), "not valid JSON"),
        (lambda p: write_npz(p, {**mlp_arrays(), CONFIG_KEY: np.array("[1, 2]")}, None), "not a JSON object"),
        (lambda p: write_npz(p, {**mlp_arrays(), CONFIG_KEY: np.arange(3)}, None), "not a JSON string"),
        (lambda p: write_npz(p, {**mlp_arrays(), CONFIG_KEY: np.array("[" * 100000)}, None), "not valid JSON"),
        (lambda p: write_npz(p, mlp_arrays(), {**MODEL_CONFIG, "format": "pickle-1"}), "unknown model file format"),
    ],
    ids=["empty", "text", "npy-not-npz", "object-array", "header-claims-1e12", "missing-array", "extra-array",
         "wrong-shape", "wrong-dtype", "other-architecture", "unknown-model", "absurd-num-classes",
         "num-classes-mismatch", "bad-dtype", "bad-dropout", "bad-dropout-at", "bad-normalize", "bad-classes",
         "bad-dataset", "no-config", "config-not-json", "config-not-object", "config-not-string",
         "config-deeply-nested", "unknown-format"],
)
def test_bad_model_files(tmp_path, make, match):
    path = make(tmp_path / "model.npz")
    assert_model_file_error(path, match)


def test_truncated_model_file(good_file):
    data = good_file.read_bytes()
    for cut in (10, 100, len(data) // 2, len(data) - 30, len(data) - 1):
        good_file.write_bytes(data[:cut])
        assert_model_file_error(good_file, "damaged or not an npz")


def test_flipped_byte_in_weights_is_caught_by_the_crc(good_file):
    data = bytearray(good_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    good_file.write_bytes(bytes(data))
    assert_model_file_error(good_file, "Bad CRC-32")


def test_missing_file_and_directory(tmp_path):
    assert_model_file_error(tmp_path / "nope.npz", "no such file")
    assert_model_file_error(tmp_path, "is a directory")


def test_total_size_cap_is_checked_before_reading(tmp_path, monkeypatch):
    import npconv.io.npz as serialization

    monkeypatch.setattr(serialization, "MAX_NPZ_BYTES", 1000)
    path = write_npz(tmp_path / "m.npz", mlp_arrays())
    assert_model_file_error(path, "more than the limit of 1000")
    assert MAX_NPZ_BYTES >= 1 << 28


def test_cli_reports_each_bad_model_file_in_one_line(tmp_path, capsys):
    path = _object_array_file(tmp_path / "model.npz")
    assert main(["evaluate", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("npconv: error: ") and "holds Python objects" in err


# --- fuzzing: whatever the bytes, the only failure is a ModelFileError ----------------------


def _valid_model_bytes():
    buf = io.BytesIO()
    arrays = {"0.weight": np.arange(6, dtype=np.float32).reshape(2, 3)}
    arrays[CONFIG_KEY] = np.array(json.dumps({"format": FORMAT, **MODEL_CONFIG}))
    np.savez(buf, **arrays)
    return buf.getvalue()


_VALID = _valid_model_bytes()
_fuzz_settings = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _load_or_model_file_error(path):
    try:
        load_model(path)
    except ModelFileError as e:
        assert str(e).startswith(f"{path}: ") and "\n" not in str(e), str(e)


@_fuzz_settings
@given(data=st.binary(max_size=200), zip_magic=st.booleans())
def test_fuzz_random_bytes(tmp_path, data, zip_magic):
    path = tmp_path / "fuzz.npz"
    path.write_bytes((b"PK\x03\x04" if zip_magic else b"") + data)
    _load_or_model_file_error(path)


@_fuzz_settings
@given(
    mutations=st.lists(st.tuples(st.integers(0, len(_VALID) - 1), st.integers(0, 255)), min_size=1, max_size=4),
    cut=st.integers(0, len(_VALID) + 8),
)
def test_fuzz_mutated_model_file(tmp_path, mutations, cut):
    data = bytearray(_VALID + b"\0" * 8)
    for position, value in mutations:
        data[position] = value
    path = tmp_path / "fuzz.npz"
    path.write_bytes(bytes(data[:cut]))
    _load_or_model_file_error(path)


_dtypes = st.sampled_from(["<f4", "<f8", ">f4", "<i8", "|u1", "|b1", "<U5", "|O", "|V4", "<c8", "<M8[s]"])
_shapes = st.lists(st.integers(0, 5), max_size=3).map(tuple)


@_fuzz_settings
@given(
    header_dtype=_dtypes, header_shape=st.one_of(_shapes, st.just((10**12,)), st.just((-1,))),
    payload=st.binary(max_size=64), name=st.sampled_from(["0.weight.npy", "__config__.npy", "x.txt", "../evil.npy"]),
)
def test_fuzz_npy_headers(tmp_path, header_dtype, header_shape, payload, name):
    """Hand-made npy entries with any dtype (objects included) and any shape, true or not."""
    header = repr({"descr": header_dtype, "fortran_order": False, "shape": header_shape})
    header = header + " " * (-(len(header) + 11) % 64) + "\n"
    npy = b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode() + payload
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr(name, npy)
    path = tmp_path / "fuzz.npz"
    path.write_bytes(buf.getvalue())
    _load_or_model_file_error(path)
    try:
        load_checkpoint(path)
    except CheckpointError as e:
        assert str(e).startswith(f"{path}: ")


# --- buffers and models described by layers ------------------------------------------------------

BN_CONFIG = {**MODEL_CONFIG, "model": "cnn-bn"}
NET_LAYERS = [{"type": "flatten"}, {"type": "linear", "out_features": 16}, {"type": "batchnorm1d"},
              {"type": "relu"}, {"type": "linear", "out_features": 10}]
NET_CONFIG = {**MODEL_CONFIG, "model": "nets/small.toml", "model_layers": NET_LAYERS}


def trained_bn_model(name="cnn-bn", layers=None):
    """A model whose running statistics have moved away from their start (a few training-mode forwards)."""
    rng = np.random.default_rng(0)
    model = build_model(name, layers=layers, rng=rng)
    for _ in range(3):
        model(rng.standard_normal((8, 1, 28, 28)).astype(np.float32) * 2 + 0.5)
    return model


def bn_arrays(**changes):
    return {**{k: v.copy() for k, v in trained_bn_model().state_dict().items()}, **changes}


def test_buffers_round_trip_and_the_loaded_model_predicts_the_same(tmp_path, rng):
    model = trained_bn_model()
    save_model(tmp_path / "bn.npz", model, BN_CONFIG)
    loaded, config = load_model(tmp_path / "bn.npz")
    assert config["format"] == FORMAT == "npconv-model-2"
    for name, value in model.state_dict().items():
        np.testing.assert_array_equal(loaded.state_dict()[name], value, err_msg=name)
    assert int(loaded.state_dict()["1.num_batches_tracked"]) == 3
    x = rng.standard_normal((4, 1, 28, 28)).astype(np.float32)
    np.testing.assert_array_equal(loaded.eval()(x), model.eval()(x))


def test_an_architecture_file_model_is_rebuilt_from_its_recorded_layers_alone(tmp_path, rng):
    """The .toml named in the config does not exist: the layers recorded in the file are all it takes."""
    model = trained_bn_model(NET_CONFIG["model"], NET_LAYERS)
    save_model(tmp_path / "net.npz", model, NET_CONFIG)
    loaded, config = load_model(tmp_path / "net.npz")
    assert config["model_layers"] == NET_LAYERS
    x = rng.standard_normal((4, 1, 28, 28)).astype(np.float32)
    np.testing.assert_array_equal(loaded.eval()(x), model.eval()(x))


def test_a_file_of_the_first_format_still_loads(tmp_path):
    arrays = {**mlp_arrays(), CONFIG_KEY: np.array(json.dumps({"format": "npconv-model-1", **MODEL_CONFIG}))}
    with open(tmp_path / "old.npz", "wb") as f:
        np.savez(f, **arrays)
    model, config = load_model(tmp_path / "old.npz")
    assert config["model"] == "mlp"
    np.testing.assert_array_equal(model.state_dict()["3.weight"], mlp_arrays()["3.weight"])


def _bn(config=BN_CONFIG, drop=(), **changes):
    def make(path):
        return write_npz(path, {k: v for k, v in bn_arrays(**changes).items() if k not in drop}, config)
    return make


def _net(config):
    def make(path):
        model = build_model("net.toml", layers=NET_LAYERS, rng=np.random.default_rng(0))
        return write_npz(path, {k: v.copy() for k, v in model.state_dict().items()}, config)
    return make


@pytest.mark.parametrize(
    "make, match",
    [
        (_bn(**{"1.running_mean": np.zeros(32, np.float32)}), "1.running_mean: shape (32,) does not fit"),
        (_bn(**{"1.running_var": np.ones(16, np.float64)}), "1.running_var: dtype float64 does not fit"),
        (_bn(**{"1.num_batches_tracked": np.array(3.0, np.float32)}), "1.num_batches_tracked: dtype float32"),
        (_bn(**{"1.num_batches_tracked": np.array([3], np.int64)}), "1.num_batches_tracked: shape (1,)"),
        (_bn(**{"5.running_var": -np.ones(32, np.float32)}), "5.running_var must hold finite values >= 0"),
        (_bn(**{"10.running_mean": np.full(128, np.nan, np.float32)}), "10.running_mean holds a value that is not"),
        (_bn(**{"1.num_batches_tracked": np.array(-1, np.int64)}), "num_batches_tracked must be >= 0"),
        (_bn(drop=["5.running_var"]), "missing ['5.running_var']"),
        (_bn(**{"1.running_mean": np.array(["x"] * 16)}), "1.running_mean: dtype <U1 does not fit"),
        (_net({**NET_CONFIG, "model_layers": None}), "its layers ('model_layers') are not recorded"),
        (_net({**MODEL_CONFIG, "model_layers": NET_LAYERS}),
         "'model_layers' is for a model described by an architecture file"),
        (_net({**NET_CONFIG, "model_layers": [{"type": "flatten"}, {"type": "linear", "out_features": 100_000},
                                              {"type": "linear", "out_features": 10}]}),
         "its layers declare 79500010 parameters, but the file holds only"),
        (_net({**NET_CONFIG, "model_layers": [{"type": "linear", "out_features": 10}]}),
         "its recorded layers do not work: layer 0 (linear): needs flat input"),
        (_net({**NET_CONFIG, "model_layers": "flatten"}), "its recorded layers do not work"),
        (_net({**NET_CONFIG, "model_layers": [{"type": "flatten"}, {"type": "linear", "out_features": 10}]}),
         "unexpected ['2.bias', '2.num_batches_tracked'"),
    ],
    ids=["buffer-shape", "buffer-dtype", "count-float", "count-shape", "negative-var", "nan-mean", "negative-count",
         "missing-buffer", "string-buffer", "layers-not-recorded", "layers-for-a-preset", "layers-declare-too-much",
         "layers-do-not-work", "layers-not-a-list", "layers-do-not-fit-arrays"],
)
def test_bad_buffers_and_bad_recorded_layers_are_refused(tmp_path, make, match):
    assert_model_file_error(make(tmp_path / "model.npz"), match)
