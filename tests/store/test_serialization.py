"""Round trips of values through the object store: ``put``/``get`` and an identity task.

Properties (hypothesis): whatever goes in comes back with the same type, dtype, shape and
bytes -- numpy arrays of every common dtype, zero-size and 0-d arrays, Fortran order,
non-contiguous views (step slices, transposes, reversed and broadcast views), byte sizes
that are not page multiples on both sides of the ~100 KiB inline threshold, object dtype
(pickled normally), nested containers mixing arrays and scalars, and Arrow arrays, chunked
arrays, record batches and tables.  Each value takes three paths:

1. ``get(put(x))``
2. ``get(identity.remote(x))``  -- x pickled into the task, result stored by the worker
3. ``get(identity.remote(put(x)))``  -- a top-level ref argument resolved in the worker
"""

from __future__ import annotations

import datetime
import math
import os

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import repartir

#: REPARTIR_HYPOTHESIS_SCALE=10 searches ten times longer (a nightly run, a bug hunt).
SCALE = int(os.environ.get("REPARTIR_HYPOTHESIS_SCALE", "1"))
PAGE = 4096
INLINE_LIMIT = 100 * 1024
#: An array this large is certainly in the arena, whatever the exact threshold ("~100 KiB").
SURELY_IN_ARENA = 160 * 1024

DTYPES = [
    np.dtype(np.bool_),
    np.dtype(np.int8),
    np.dtype(np.int16),
    np.dtype(np.int32),
    np.dtype(np.int64),
    np.dtype(np.uint8),
    np.dtype(np.uint16),
    np.dtype(np.uint32),
    np.dtype(np.uint64),
    np.dtype(np.float16),
    np.dtype(np.float32),
    np.dtype(np.float64),
    np.dtype(np.complex64),
    np.dtype(np.complex128),
    np.dtype("datetime64[ns]"),
    np.dtype("datetime64[D]"),
    np.dtype("timedelta64[ms]"),
    np.dtype("U7"),
    np.dtype("S5"),
    np.dtype(">f8"),  # non-native byte order must survive too
    np.dtype(">i4"),
]


@repartir.remote
def identity(x):
    return x


# --------------------------------------------------------------------------- building arrays


def random_array(dtype: np.dtype, n: int, seed: int) -> np.ndarray:
    """A 1-d array of ``n`` elements of ``dtype`` with pseudo-random contents."""
    rng = np.random.default_rng(seed)
    if dtype.kind == "b":
        return rng.integers(0, 2, n).astype(bool)
    if dtype.kind == "U":
        alphabet = np.array(list("aé€𝄞xyz "), dtype="U1")
        chars = rng.choice(alphabet, size=(n, dtype.itemsize // 4))
        if not n:
            return np.empty(0, dtype)
        return np.array(["".join(row).rstrip() for row in chars], dtype=dtype)
    # Every bit pattern is a valid value of the remaining kinds (NaNs and NaT included).
    raw = rng.integers(0, 256, n * dtype.itemsize, dtype=np.uint8)
    return raw.view(dtype) if n else np.empty(0, dtype)


LAYOUTS = ["C", "F", "step", "transpose", "reversed", "block", "broadcast"]


@st.composite
def arrays(draw, max_bytes: int = 1_200_000, dtypes=DTYPES) -> np.ndarray:
    """Arrays of any dtype of ``dtypes`` and any layout; byte sizes from 0 to ``max_bytes``,
    biased towards sizes next to page multiples and next to the inline threshold."""
    dtype = draw(st.sampled_from(dtypes))
    layout = draw(st.sampled_from(LAYOUTS))
    seed = draw(st.integers(0, 2**32 - 1))
    ndim = draw(st.sampled_from([0, 1, 2, 3]))
    if ndim == 0:
        return random_array(dtype, 1, seed).reshape(())
    near = [INLINE_LIMIT, PAGE * 3, PAGE * 40, 1 << 20]
    target = draw(
        st.one_of(
            st.just(0),
            st.integers(1, 512),
            st.builds(lambda b, d: b + d, st.sampled_from(near), st.integers(-97, 97)),
            st.integers(0, max_bytes),
        )
    )
    target = min(max(target, 0), max_bytes)
    n = target // dtype.itemsize
    if n == 0:
        shape: tuple[int, ...] = draw(st.sampled_from([(0,), (0, 3), (3, 0), (2, 0, 5)]))
    elif ndim == 1:
        shape = (n,)
    elif ndim == 2:
        first = draw(st.integers(1, 7))
        shape = (first, max(n // first, 1))
    else:
        first = draw(st.integers(1, 5))
        shape = (first, 2, max(n // (2 * first), 1))
    base = random_array(dtype, int(np.prod(shape)), seed).reshape(shape)
    if layout == "C":
        return base
    if layout == "F":
        return np.asfortranarray(base)
    if layout == "step":
        index = tuple(slice(None, None, draw(st.integers(2, 3))) for _ in base.shape)
        return base[index]
    if layout == "transpose":
        return base.T
    if layout == "reversed":
        return base[::-1]
    if layout == "block":
        index = tuple(slice(min(1, d), None) for d in base.shape)
        return base[index]
    # broadcast: zero strides along a new leading axis (read-only in the input already)
    return np.broadcast_to(base, (2, *base.shape))


def contiguous_bytes(a: np.ndarray) -> bytes:
    return np.ascontiguousarray(a).tobytes()


def assert_same_array(out, expected: np.ndarray) -> None:
    assert type(out) is np.ndarray, f"expected ndarray, got {type(out)!r}"
    fortran = expected.flags.f_contiguous and not expected.flags.c_contiguous
    if out.dtype != expected.dtype and not expected.dtype.isnative:
        # numpy's own pickle (the in-band path, taken by non-contiguous arrays) turns a
        # non-native byte order into the native one, keeping the values; accept that.
        assert out.dtype == expected.dtype.newbyteorder("="), (out.dtype, expected.dtype)
        expected = expected.astype(out.dtype)
    assert out.dtype == expected.dtype, (out.dtype, expected.dtype)
    assert out.shape == expected.shape
    if expected.dtype.hasobject:
        assert out.size == expected.size
        for x, y in zip(out.ravel(order="K").tolist(), expected.ravel(order="K").tolist()):
            assert_same(x, y)
        return
    assert contiguous_bytes(out) == contiguous_bytes(expected)
    if fortran:
        assert out.flags.f_contiguous, "Fortran order was lost"


def assert_same(out, expected) -> None:
    """Deep equality that also checks container and scalar types and array bytes."""
    if isinstance(expected, np.ndarray):
        assert_same_array(out, expected)
    elif isinstance(expected, (pa.Array, pa.ChunkedArray, pa.RecordBatch, pa.Table)):
        assert type(out) is type(expected)
        if isinstance(expected, (pa.Array, pa.ChunkedArray)):
            assert out.type == expected.type
        else:
            assert out.schema == expected.schema
        assert out.equals(expected)
    elif isinstance(expected, dict):
        assert type(out) is type(expected)
        assert list(out.keys()) == list(expected.keys())
        for k in expected:
            assert_same(out[k], expected[k])
    elif isinstance(expected, (list, tuple)):
        assert type(out) is type(expected)
        assert len(out) == len(expected)
        for x, y in zip(out, expected):
            assert_same(x, y)
    elif isinstance(expected, float) and math.isnan(expected):
        assert type(out) is float and math.isnan(out)
    else:
        assert type(out) is type(expected), (type(out), type(expected))
        assert out == expected


def round_trips(value):
    """The value back through the three paths, in order."""
    ref = repartir.put(value)
    return [
        repartir.get(ref),
        repartir.get(identity.remote(value)),
        repartir.get(identity.remote(ref)),
    ]


def check_round_trips(value) -> None:
    for path, out in zip(("put/get", "task arg", "task ref arg"), round_trips(value)):
        try:
            assert_same(out, value)
        except AssertionError as exc:
            raise AssertionError(f"{path}: {exc}") from exc


# --------------------------------------------------------------------------- numpy properties


@given(arrays())
@settings(max_examples=50 * SCALE)
def test_numpy_round_trip(rt, a):
    check_round_trips(a)


def check_large_views(dtype: np.dtype, seed: int, order: str) -> None:
    n = (SURELY_IN_ARENA + 12_345) // dtype.itemsize
    a = random_array(dtype, n, seed)
    a = np.asarray(a.reshape(3, -1) if n % 3 == 0 else a, order=order)
    for path, out in zip(("put/get", "task arg", "task ref arg"), round_trips(a)):
        assert_same_array(out, a)
        assert out.flags.writeable is False, f"{path}: {dtype} array from get is writeable"


TIME_DTYPES = [d for d in DTYPES if d.kind in "mM"]


@given(
    st.sampled_from([d for d in DTYPES if d not in TIME_DTYPES]),
    st.integers(0, 2**32 - 1),
    st.sampled_from(["C", "F"]),
)
@settings(max_examples=25 * SCALE)
def test_large_contiguous_arrays_come_back_as_read_only_views(rt, dtype, seed, order):
    check_large_views(dtype, seed, order)


@pytest.mark.parametrize("dtype", TIME_DTYPES, ids=str)
def test_large_datetime_arrays_come_back_as_read_only_views(rt, dtype):
    """numpy's protocol-5 reducer gives no out-of-band buffer for datetime64/timedelta64,
    so the store must handle these dtypes itself (e.g. through an int64 view)."""
    check_large_views(dtype, 7, "C")


@given(
    st.lists(
        st.one_of(
            st.integers(-(2**70), 2**70),
            st.text(max_size=8),
            st.none(),
            st.floats(allow_nan=False),
            st.tuples(st.integers(), st.text(max_size=3)),
            st.dictionaries(st.text(max_size=3), st.integers(), max_size=3),
        ),
        max_size=40,
    ),
    st.integers(0, 30_000),
)
@settings(max_examples=25 * SCALE)
def test_object_dtype_round_trip(rt, items, padding):
    a = np.empty(len(items) + padding, dtype=object)
    a[: len(items)] = [None] * len(items)
    for i, item in enumerate(items):
        a[i] = item
    a[len(items):] = list(range(padding))  # large object arrays (> 100 KiB of pointers) too
    check_round_trips(a)


SCALARS = st.one_of(
    st.integers(-(2**63), 2**63),
    st.floats(),
    st.complex_numbers(allow_nan=False),
    st.text(max_size=20),
    st.binary(max_size=20),
    st.booleans(),
    st.none(),
    st.builds(np.float32, st.floats(width=32, allow_nan=False)),
    st.builds(np.int64, st.integers(-(2**63), 2**63 - 1)),
    st.builds(np.uint8, st.integers(0, 255)),
    st.builds(np.datetime64, st.datetimes(), st.just("us")),
    st.dates(),
    st.timedeltas(),
)

NESTED = st.recursive(
    st.one_of(SCALARS, arrays(max_bytes=300_000)),
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.tuples(children, children),
        st.dictionaries(st.text(max_size=5), children, max_size=4),
    ),
    max_leaves=8,
)


@given(NESTED)
@settings(max_examples=40 * SCALE)
def test_nested_containers_round_trip(rt, value):
    check_round_trips(value)


# --------------------------------------------------------------------------- explicit edge cases


@pytest.mark.parametrize(
    "nbytes",
    [
        0,
        1,
        PAGE - 1,
        PAGE + 1,
        INLINE_LIMIT - 1,
        INLINE_LIMIT,
        INLINE_LIMIT + 1,
        25 * PAGE + 1,
        26 * PAGE - 1,
        (1 << 20) + 1,
        (4 << 20) - 7,
    ],
)
def test_byte_sizes_around_page_and_inline_boundaries(rt, nbytes):
    a = random_array(np.dtype(np.uint8), nbytes, seed=nbytes)
    check_round_trips(a)
    # the same bytes as a float64 array whose size is not a page multiple either
    b = random_array(np.dtype(np.float64), nbytes // 8, seed=nbytes)
    check_round_trips(b)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_zero_d_and_zero_size_arrays(rt, dtype):
    for a in (
        random_array(dtype, 1, seed=1).reshape(()),
        np.empty((0,), dtype),
        np.empty((4, 0, 3), dtype),
        np.asfortranarray(np.empty((0, 5), dtype)),
    ):
        check_round_trips(a)


@pytest.mark.parametrize("big", [False, True], ids=["small", "big"])
def test_structured_dtype_round_trip(rt, big):
    dtype = np.dtype([("a", "<i4"), ("b", "<f8"), ("c", "S3")])
    n = 20_000 if big else 10
    a = np.zeros(n, dtype)
    a["a"] = np.arange(n)
    a["b"] = np.linspace(0, 1, n)
    a["c"] = b"xyz"
    check_round_trips(a)
    check_round_trips(a[::3])


def test_numpy_scalars_and_python_values(rt):
    for value in [
        np.float16(1.5),
        np.complex64(1 + 2j),
        np.datetime64("2024-01-02T03:04:05.123456789"),
        np.bool_(True),
        0,
        -1,
        2**100,
        "é€𝄞",
        b"\x00\xff",
        None,
        float("inf"),
        datetime.date(2024, 2, 29),
        {"a": (1, [2, {3}])},
        frozenset({1, 2}),
    ]:
        check_round_trips(value)


# --------------------------------------------------------------------------- pyarrow


ARROW_TYPES = {
    "int64": (pa.int64(), lambda rng, n: rng.integers(-1000, 1000, n).tolist()),
    "float64": (pa.float64(), lambda rng, n: rng.random(n).tolist()),
    "bool": (pa.bool_(), lambda rng, n: (rng.random(n) > 0.5).tolist()),
    "string": (pa.string(), lambda rng, n: [f"s{i}é" * (i % 4) for i in rng.integers(0, 50, n)]),
    "binary": (pa.binary(),
               lambda rng, n: [bytes([i % 256]) * (i % 5) for i in rng.integers(0, 999, n)]),
    "list<int32>": (pa.list_(pa.int32()), lambda rng, n: [list(range(i % 4)) for i in range(n)]),
    "timestamp": (pa.timestamp("us"), lambda rng, n: rng.integers(0, 2**50, n).tolist()),
}


@st.composite
def arrow_arrays(draw):
    name = draw(st.sampled_from(sorted(ARROW_TYPES)))
    typ, make = ARROW_TYPES[name]
    n = draw(st.one_of(st.just(0), st.integers(1, 100), st.integers(13_000, 40_000)))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    values = make(rng, n)
    if draw(st.booleans()) and n:
        for i in rng.integers(0, n, max(n // 7, 1)):
            values[i] = None
    arr = pa.array(values, type=typ)
    if draw(st.booleans()) and n > 2:
        offset = draw(st.integers(1, n - 1))
        arr = arr.slice(offset, draw(st.integers(0, n - offset)))
    return arr


@given(arrow_arrays())
@settings(max_examples=30 * SCALE)
def test_arrow_array_round_trip(rt, arr):
    check_round_trips(arr)


@given(st.lists(arrow_arrays(), min_size=1, max_size=3))
@settings(max_examples=15 * SCALE)
def test_arrow_tables_and_chunked_arrays_round_trip(rt, columns):
    same_type = [c for c in columns if c.type == columns[0].type]
    check_round_trips(pa.chunked_array(same_type, type=columns[0].type))
    length = len(columns[0])
    columns = [c for c in columns if len(c) == length]
    names = [f"c{i}" for i in range(len(columns))]
    check_round_trips(pa.RecordBatch.from_arrays(columns, names=names))
    check_round_trips(pa.Table.from_arrays(columns, names=names))


def test_large_arrow_table(rt):
    n = 200_000
    table = pa.table(
        {
            "x": pa.array(np.arange(n, dtype=np.int64)),
            "y": pa.array(np.linspace(0, 1, n)),
            "s": pa.array([str(i) for i in range(n)]),
        }
    )
    check_round_trips(table)
    check_round_trips(table.slice(1234, 100_000))
