"""Tests for npconv.data.idx: IDX round trips and every way a file can be wrong."""

import gzip
import os
import tracemalloc

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from npconv.data.idx import IDX_DTYPES, MAX_PAYLOAD_BYTES, read_idx, write_idx
from npconv.io import atomic_write
from npconv.errors import DataError


def idx_header(type_code, dims):
    """The IDX header bytes for ``dims`` elements of ``type_code``."""
    return bytes([0, 0, type_code, len(dims)]) + b"".join(d.to_bytes(4, "big") for d in dims)


def write_bytes(path, data, compress=False):
    path.write_bytes(gzip.compress(data, mtime=0) if compress else data)
    return path


def assert_data_error(path, match=None):
    """Reading ``path`` raises a one-line DataError that starts with the path."""
    with pytest.raises(DataError) as info:
        read_idx(path)
    message = str(info.value)
    assert message.startswith(f"{path}: "), f"message does not start with the path: {message!r}"
    assert "\n" not in message, f"message is not one line: {message!r}"
    if match is not None:
        assert match in message, f"expected {match!r} in {message!r}"
    return message


# --- round trips ------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_round_trip_every_type(tmp_path, dtype, suffix):
    rng = np.random.default_rng(0)
    array = (rng.standard_normal((3, 4, 5)) * 100).astype(dtype)
    path = tmp_path / f"a.idx{suffix}"
    write_idx(path, array)
    back = read_idx(path)
    assert back.dtype == np.dtype(dtype), f"dtype {back.dtype} != {np.dtype(dtype)}"
    assert back.dtype.isnative, "arrays come back in native byte order"
    assert back.flags.writeable
    np.testing.assert_array_equal(back, array)


@pytest.mark.parametrize("shape", [(7,), (2, 3), (2, 3, 4), (1, 2, 3, 4)])
def test_round_trip_every_ndim(tmp_path, shape):
    array = np.arange(np.prod(shape), dtype=np.uint8).reshape(shape)
    write_idx(tmp_path / "a", array)
    np.testing.assert_array_equal(read_idx(tmp_path / "a"), array)


def test_file_layout_is_the_idx_format(tmp_path):
    write_idx(tmp_path / "a", np.array([[1, 2, 3], [4, 5, 6]], dtype=">i2"))
    expected = idx_header(0x0B, (2, 3)) + np.array([1, 2, 3, 4, 5, 6], dtype=">i2").tobytes()
    assert (tmp_path / "a").read_bytes() == expected


def test_gzip_is_detected_by_content_not_extension(tmp_path):
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "packed.gz", array)
    os.rename(tmp_path / "packed.gz", tmp_path / "packed")  # gzip without .gz
    write_idx(tmp_path / "plain", array)
    os.rename(tmp_path / "plain", tmp_path / "plain.gz")  # raw with .gz
    np.testing.assert_array_equal(read_idx(tmp_path / "packed"), array)
    np.testing.assert_array_equal(read_idx(tmp_path / "plain.gz"), array)


def test_gzip_output_is_deterministic(tmp_path):
    write_idx(tmp_path / "a.gz", np.arange(100, dtype=np.uint8))
    header = (tmp_path / "a.gz").read_bytes()[:10]
    assert header[3] == 0, "no file name or other optional fields in the gzip header"
    assert header[4:8] == bytes(4), "no timestamp in the gzip header"


def test_write_leaves_no_temporary_files(tmp_path):
    write_idx(tmp_path / "a.gz", np.zeros(5, dtype=np.uint8))
    write_idx(tmp_path / "a.gz", np.ones(5, dtype=np.uint8))  # overwrite
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.gz"]


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "a"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_write(path) as f:
            f.write(b"half of the new")
            raise RuntimeError("interrupted")
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]


@pytest.mark.parametrize(
    "array, match",
    [
        (np.zeros(3, dtype=np.int64), "dtype"),
        (np.zeros(3, dtype=np.bool_), "dtype"),
        (np.zeros((), dtype=np.uint8), "dimensions"),
        (np.zeros((1, 1, 1, 1, 1), dtype=np.uint8), "dimensions"),
        (np.zeros((0, 3), dtype=np.uint8), "dimensions"),
    ],
)
def test_write_rejects_what_idx_cannot_store(tmp_path, array, match):
    with pytest.raises(ValueError, match=match):
        write_idx(tmp_path / "a", array)
    assert not list(tmp_path.iterdir()), "nothing is written"


# --- malformed files --------------------------------------------------------------------------


def test_missing_file(tmp_path):
    assert_data_error(tmp_path / "nope", "cannot open")


def test_directory_instead_of_file(tmp_path):
    assert_data_error(tmp_path, "cannot open")


@pytest.mark.parametrize("compress", [False, True])
def test_empty_and_short_files(tmp_path, compress):
    for i, data in enumerate([b"", b"\x00\x00", b"\x00\x00\x08\x03\x00\x00"]):
        path = write_bytes(tmp_path / f"short{i}", data, compress)
        assert_data_error(path, "too short")


@pytest.mark.parametrize("compress", [False, True])
def test_wrong_magic(tmp_path, compress):
    data = b"\x12\x34" + idx_header(0x08, (2,))[2:] + b"\x00\x00"
    assert_data_error(write_bytes(tmp_path / "a", data, compress), "not an IDX file")


@pytest.mark.parametrize("type_code", [0x00, 0x07, 0x0A, 0x0F, 0xFF])
def test_bad_type_code(tmp_path, type_code):
    data = idx_header(type_code, (2,)) + b"\x00\x00"
    assert_data_error(write_bytes(tmp_path / "a", data), "unknown IDX type code")


@pytest.mark.parametrize("ndim", [0, 5, 255])
def test_bad_number_of_dimensions(tmp_path, ndim):
    data = bytes([0, 0, 0x08, ndim]) + b"\x00\x00\x00\x01" * ndim + b"\x00"
    assert_data_error(write_bytes(tmp_path / "a", data), "dimensions")


@pytest.mark.parametrize("compress", [False, True])
def test_zero_dimension(tmp_path, compress):
    data = idx_header(0x08, (3, 0, 28))
    assert_data_error(write_bytes(tmp_path / "a", data, compress), "size 0")


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize(
    "type_code, dims",
    [
        (0x08, (10**6, 10**6)),  # 10**12 items
        (0x0E, (2**32 - 1, 2**32 - 1, 2**32 - 1, 2**32 - 1)),  # about 2**131 bytes
        (0x08, (MAX_PAYLOAD_BYTES + 1,)),  # just over the cap
    ],
)
def test_absurd_header_fails_fast_without_allocating(tmp_path, compress, type_code, dims):
    path = write_bytes(tmp_path / "a", idx_header(type_code, dims) + b"\x00" * 100, compress)
    tracemalloc.start()  # the header is refused before anything is allocated (the time it takes: benchmarks/budgets.py)
    try:
        message = assert_data_error(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 10 * 2**20, f"allocated {peak} bytes for an absurd header"
    assert "bytes of data" in message


def test_gzip_too_small_for_its_header_fails_fast(tmp_path):
    # 10**8 bytes is under the cap, but a ~40-byte gzip file cannot hold it.
    path = write_bytes(tmp_path / "a", idx_header(0x08, (10**4, 10**4)) + b"\x00" * 10, True)
    tracemalloc.start()
    try:
        assert_data_error(path, "more than a file of this size can hold")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 10 * 2**20, f"allocated {peak} bytes"


def test_truncated_raw_file(tmp_path):
    data = idx_header(0x08, (4, 5)) + bytes(19)
    assert_data_error(write_bytes(tmp_path / "a", data), "truncated")


def test_raw_file_with_extra_bytes(tmp_path):
    data = idx_header(0x08, (4, 5)) + bytes(21)
    assert_data_error(write_bytes(tmp_path / "a", data), "extra bytes")


def test_truncated_multibyte_payload(tmp_path):
    data = idx_header(0x0C, (3,)) + bytes(11)  # three int32 need 12 bytes
    assert_data_error(write_bytes(tmp_path / "a", data), "truncated")


def test_gzip_with_short_payload(tmp_path):
    data = idx_header(0x08, (4, 5)) + bytes(19)
    assert_data_error(write_bytes(tmp_path / "a.gz", data, compress=True), "truncated")


def test_gzip_with_extra_payload(tmp_path):
    data = idx_header(0x08, (4, 5)) + bytes(21)
    assert_data_error(write_bytes(tmp_path / "a.gz", data, compress=True), "extra bytes")


def test_truncated_gzip_stream(tmp_path):
    rng = np.random.default_rng(0)
    write_idx(tmp_path / "a.gz", rng.integers(0, 256, (50, 28, 28), dtype=np.uint8))
    compressed = (tmp_path / "a.gz").read_bytes()
    for cut in [len(compressed) // 2, len(compressed) - 4, len(compressed) - 1]:
        path = write_bytes(tmp_path / f"cut{cut}.gz", compressed[:cut])
        assert_data_error(path, "gzip")


def test_corrupt_gzip_stream(tmp_path):
    rng = np.random.default_rng(0)
    write_idx(tmp_path / "a.gz", rng.integers(0, 256, (50, 28, 28), dtype=np.uint8))
    compressed = bytearray((tmp_path / "a.gz").read_bytes())
    compressed[len(compressed) // 2] ^= 0xFF
    assert_data_error(write_bytes(tmp_path / "bad.gz", bytes(compressed)))


def test_gzip_with_bad_crc(tmp_path):
    write_idx(tmp_path / "a.gz", np.arange(100, dtype=np.uint8))
    compressed = bytearray((tmp_path / "a.gz").read_bytes())
    compressed[-8] ^= 0xFF  # the CRC-32 in the gzip trailer
    assert_data_error(write_bytes(tmp_path / "bad.gz", bytes(compressed)), "gzip")


def test_gzip_with_trailing_garbage(tmp_path):
    write_idx(tmp_path / "a.gz", np.arange(100, dtype=np.uint8))
    data = (tmp_path / "a.gz").read_bytes() + b"garbage!"
    assert_data_error(write_bytes(tmp_path / "bad.gz", data), "gzip")


# --- fuzzing: whatever the bytes, the only failure is a DataError -----------------------------

_VALID = idx_header(0x0B, (2, 3)) + np.arange(6, dtype=">i2").tobytes()
_fuzz_settings = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def _read_or_data_error(path):
    try:
        array = read_idx(path)
    except DataError as e:
        assert str(e).startswith(f"{path}: ")
        return None
    assert isinstance(array, np.ndarray)
    return array


@_fuzz_settings
@given(data=st.binary(max_size=64), compress=st.booleans())
def test_fuzz_random_bytes(tmp_path, data, compress):
    _read_or_data_error(write_bytes(tmp_path / "fuzz", data, compress))


@_fuzz_settings
@given(
    position=st.integers(0, len(_VALID) - 1),
    value=st.integers(0, 255),
    cut=st.integers(0, len(_VALID) + 3),
    compress=st.booleans(),
)
def test_fuzz_mutated_valid_file(tmp_path, position, value, cut, compress):
    data = bytearray(_VALID + b"\x01\x02\x03")
    data[position] = value
    array = _read_or_data_error(write_bytes(tmp_path / "fuzz", bytes(data[:cut]), compress))
    if array is not None:
        assert array.nbytes == cut - (4 + 4 * array.ndim), "payload length matches exactly"


@_fuzz_settings
@given(position=st.integers(0, 200), value=st.integers(0, 255), cut=st.integers(0, 400))
def test_fuzz_mutated_gzip_bytes(tmp_path, position, value, cut):
    compressed = bytearray(gzip.compress(_VALID * 3, mtime=0))
    compressed[position % len(compressed)] = value
    _read_or_data_error(write_bytes(tmp_path / "fuzz", bytes(compressed[:cut])))


def test_dtype_table_is_big_endian():
    for code, dtype in IDX_DTYPES.items():
        assert dtype.itemsize == 1 or dtype.byteorder == ">", f"type 0x{code:02X} must be big-endian"
