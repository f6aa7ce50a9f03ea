"""native.similarity: every kernel against a float64 numpy reference (X @ q, then sort)."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

# numba reads its cache folder when first imported; kernels compiled once are reused by later runs.
os.environ.setdefault("NUMBA_CACHE_DIR", str(Path(__file__).resolve().parents[2] / ".cache" / "numba"))

from native import similarity
from native.similarity import TopK, quantize_int8, search, search_batch

DTYPES = ["float32", "float16", "int8"]
FILTERS = ["none", "any", "want"]  # no labels; labels with want=None; labels with want=1


@pytest.fixture(scope="module", autouse=True)
def _compiled() -> None:
    similarity.warm_up()


class Stored:
    """A matrix in one storage type, with what the reference needs to judge a search of it."""

    def __init__(self, rows: npt.NDArray[np.float32], dtype: str) -> None:
        self.scales: npt.NDArray[np.float32] | None = None
        if dtype == "int8":
            self.matrix: npt.NDArray[np.generic]
            self.matrix, self.scales = quantize_int8(rows)
            self.exact_rows = self.matrix.astype(np.float64) * self.scales[:, None]
        else:
            self.matrix = np.ascontiguousarray(rows.astype(dtype))
            self.exact_rows = self.matrix.astype(np.float64)
        self.dtype = dtype

    def exact(self, query: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
        return self.exact_rows @ query.astype(np.float64)

    def tolerance(self, query: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
        """Per row: float32 accumulation error, plus the int16 query quantisation for int8 rows."""
        magnitude = np.abs(self.exact_rows) @ np.abs(query.astype(np.float64))
        tol = 1e-5 * magnitude + 1e-6
        if self.dtype == "int8":
            d = query.shape[0]
            q_step = float(np.abs(query).max()) / min(32767, (2**31 - 1) // (128 * d))
            tol += np.abs(self.exact_rows).sum(axis=1) * q_step / 2 * 1.001
        return tol


def candidates(n: int, labels: npt.NDArray[np.int64] | None, want: int | None) -> npt.NDArray[np.bool_]:
    if labels is None:
        return np.ones(n, dtype=bool)
    return (labels >= 0) & ((labels == want) if want is not None else True)


def assert_top_k(
    found: TopK, stored: Stored, query: npt.NDArray[np.float32], mask: npt.NDArray[np.bool_], k: int
) -> None:
    """`found` holds k best candidates (up to score tolerance), best first, padded with (-1, -inf)."""
    indices, scores = found
    assert indices.dtype == np.int64 and scores.dtype == np.float32
    assert indices.shape == scores.shape == (k,)
    exact, tol = stored.exact(query), stored.tolerance(query)
    count = min(k, int(mask.sum()))
    assert (indices[count:] == -1).all() and np.isneginf(scores[count:]).all()
    top = indices[:count]
    assert len(set(top.tolist())) == count and mask[top].all()
    assert (np.diff(scores[:count]) <= 0).all()  # best first
    ties = np.flatnonzero(np.diff(scores[:count]) == 0)
    assert (top[ties] < top[ties + 1]).all()  # equal scores: the lower row first
    assert (np.abs(scores[:count].astype(np.float64) - exact[top]) <= tol[top]).all()
    left_out = mask.copy()
    left_out[top] = False
    if count and left_out.any():  # nothing better was left out (scores compared, not row numbers)
        best_left = np.flatnonzero(left_out)[np.argmax(exact[left_out])]
        assert exact[best_left] <= exact[top].min() + tol[best_left] + tol[top].max()


def make_rows(rng: np.random.Generator, n: int, d: int) -> npt.NDArray[np.float32]:
    return rng.standard_normal((n, d)).astype(np.float32)


# -- every kernel against the reference --------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("filtering", FILTERS)
@pytest.mark.parametrize(("n", "d", "k"), [(0, 7, 3), (1, 7, 5), (50, 7, 10), (2000, 384, 10), (777, 33, 1)])
def test_search_matches_reference(dtype: str, filtering: str, n: int, d: int, k: int) -> None:
    rng = np.random.default_rng(n * 1000 + d)
    stored = Stored(make_rows(rng, n, d), dtype)
    labels = rng.integers(-1, 3, n).astype(np.int64) if filtering != "none" else None
    want = 1 if filtering == "want" else None
    mask = candidates(n, labels, want)
    queries = make_rows(rng, 5, d)
    batch = search_batch(stored.matrix, queries, k, labels=labels, want=want, scales=stored.scales)
    assert batch.indices.shape == batch.scores.shape == (5, k)
    for i, query in enumerate(queries):
        single = search(stored.matrix, query, k, labels=labels, want=want, scales=stored.scales)
        assert_top_k(single, stored, query, mask, k)
        assert_top_k(TopK(batch.indices[i], batch.scores[i]), stored, query, mask, k)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(0, 2000),
    d=st.sampled_from([1, 7, 16, 33, 384]),
    k=st.integers(1, 20),
    m=st.integers(1, 9),
    dtype=st.sampled_from(DTYPES),
    filtering=st.sampled_from(FILTERS),
    duplicates=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_search_matches_reference_for_any_shape(
    n: int, d: int, k: int, m: int, dtype: str, filtering: str, duplicates: bool, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    rows = make_rows(rng, n, d)
    if duplicates and n:  # ties: many copies of a few rows
        rows = rows[rng.integers(0, max(1, n // 50), n)]
    stored = Stored(rows, dtype)
    labels = rng.integers(-1, 4, n).astype(np.int64) if filtering != "none" else None
    want = int(rng.integers(0, 4)) if filtering == "want" else None
    mask = candidates(n, labels, want)
    queries = make_rows(rng, m, d)
    batch = search_batch(stored.matrix, queries, k, labels=labels, want=want, scales=stored.scales)
    for i in range(m):
        assert_top_k(TopK(batch.indices[i], batch.scores[i]), stored, queries[i], mask, k)
    single = search(stored.matrix, queries[0], k, labels=labels, want=want, scales=stored.scales)
    assert_top_k(single, stored, queries[0], mask, k)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("chunks", [2, 3, 7, 64])
def test_parallel_chunks_merge_to_the_serial_answer(dtype: str, chunks: int) -> None:
    # The parallel drivers (chunks > 1) split the rows, keep a top-k per chunk and merge; more
    # chunks than rows leaves some empty. Called directly: the public API only goes parallel for
    # scans of tens of MiB.
    rng = np.random.default_rng(chunks)
    stored = Stored(make_rows(rng, 61, 16), dtype)
    labels = rng.integers(-1, 2, 61).astype(np.int64)
    queries = make_rows(rng, 6, 16)
    for single in (True, False):
        serial = similarity._run(
            stored.matrix, queries[:1] if single else queries, 8, labels, 0, stored.scales, single, 1
        )
        parallel = similarity._run(
            stored.matrix, queries[:1] if single else queries, 8, labels, 0, stored.scales, single, chunks
        )
        np.testing.assert_array_equal(parallel.indices, serial.indices)
        np.testing.assert_array_equal(parallel.scores, serial.scores)
        for i in range(len(serial.indices)):
            row = TopK(parallel.indices[i], parallel.scores[i])
            assert_top_k(row, stored, queries[i], candidates(61, labels, 0), 8)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_exact_ties_go_to_the_lower_row_whatever_the_chunking(dtype: str) -> None:
    rows = np.tile(np.array([[1, 2, 0, -1], [0, 1, 1, 1], [2, 2, 2, 2]], np.float32), (20, 1))  # 60 rows
    stored = Stored(rows, dtype)
    query = np.array([1, 1, 1, 1], np.float32)  # scores 2, 3, 8, 2, 3, 8, ...: exact in both types
    expected = [2, 5, 8, 11, 14]
    for chunks in (1, 2, 7):
        found = similarity._run(stored.matrix, query[None, :], 5, None, None, None, True, chunks)
        assert found.indices[0].tolist() == expected
        assert found.scores[0].tolist() == [8.0] * 5
    assert search_batch(stored.matrix, np.stack([query] * 5), 5).indices.tolist() == [expected] * 5


# -- filters, padding ----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_deleted_rows_never_match_and_missing_candidates_are_padded(dtype: str) -> None:
    rng = np.random.default_rng(3)
    rows = make_rows(rng, 10, 8)
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)  # each row is its own best match
    stored = Stored(rows, dtype)
    labels = np.array([0, 1, 1, -1, 2, -1, 1, 0, -1, 1], np.int64)
    query = rows[3]  # the best match is a deleted row
    found = search(stored.matrix, query, 6, labels=labels, want=1, scales=stored.scales)
    assert sorted(found.indices[:4].tolist()) == [1, 2, 6, 9]
    assert found.indices[4:].tolist() == [-1, -1] and np.isneginf(found.scores[4:]).all()
    anyone = search(stored.matrix, query, 10, labels=labels, scales=stored.scales)
    assert sorted(anyone.indices[:7].tolist()) == [0, 1, 2, 4, 6, 7, 9]
    assert (anyone.indices[7:] == -1).all()
    nobody = search(stored.matrix, query, 3, labels=labels, want=7, scales=stored.scales)
    assert nobody.indices.tolist() == [-1, -1, -1] and np.isneginf(nobody.scores).all()
    unfiltered = search(stored.matrix, query, 1, scales=stored.scales)
    assert unfiltered.indices.tolist() == [3]


@pytest.mark.parametrize("dtype", DTYPES)
def test_read_only_inputs_are_searched_in_place(dtype: str) -> None:
    rng = np.random.default_rng(4)
    stored = Stored(make_rows(rng, 300, 24), dtype)
    labels = rng.integers(0, 2, 300).astype(np.int64)
    query = make_rows(rng, 1, 24)[0]
    expected = search(stored.matrix, query, 5, labels=labels, want=1, scales=stored.scales)
    for array in (stored.matrix, stored.scales, labels, query):
        if array is not None:
            array.flags.writeable = False
    found = search(stored.matrix, query, 5, labels=labels, want=1, scales=stored.scales)
    np.testing.assert_array_equal(found.indices, expected.indices)
    batch = search_batch(stored.matrix, query[None, :], 5, labels=labels, want=1, scales=stored.scales)
    assert_top_k(TopK(batch.indices[0], batch.scores[0]), stored, query, candidates(300, labels, 1), 5)


def test_an_empty_batch_and_an_empty_matrix() -> None:
    rows = np.zeros((0, 5), np.float32)
    found = search(rows, np.ones(5, np.float32), 2)
    assert found.indices.tolist() == [-1, -1]
    batch = search_batch(np.ones((4, 5), np.float32), np.zeros((0, 5), np.float32), 3)
    assert batch.indices.shape == batch.scores.shape == (0, 3)


# -- int8 quantisation --------------------------------------------------------------------------


@settings(max_examples=50, deadline=None)
@given(n=st.integers(0, 300), d=st.integers(1, 400), spread=st.floats(1e-3, 1e3), seed=st.integers(0, 2**32 - 1))
def test_int8_round_trip_error_is_at_most_half_a_step(n: int, d: int, spread: float, seed: int) -> None:
    rows = (np.random.default_rng(seed).standard_normal((n, d)) * spread).astype(np.float32)
    quantised, scales = quantize_int8(rows)
    assert quantised.dtype == np.int8 and scales.dtype == np.float32
    assert quantised.shape == rows.shape and scales.shape == (n,)
    assert quantised.flags.c_contiguous and (np.abs(quantised.astype(np.int16)) <= 127).all()
    error = np.abs(quantised * scales[:, None].astype(np.float64) - rows)
    assert (error <= scales[:, None] * 0.5 * (1 + 1e-5) + 1e-30).all()
    if n:
        np.testing.assert_allclose(scales, np.abs(rows).max(axis=1) / 127, rtol=1e-6)


def test_int8_of_a_zero_row_is_zero() -> None:
    quantised, scales = quantize_int8(np.zeros((2, 3), np.float32))
    assert (quantised == 0).all() and (scales == 0).all()
    found = search(quantised, np.ones(3, np.float32), 2, scales=scales)
    assert found.indices.tolist() == [0, 1] and found.scores.tolist() == [0.0, 0.0]


def test_int8_keeps_the_nearest_neighbour_of_noisy_unit_vectors() -> None:
    rng = np.random.default_rng(11)
    rows = make_rows(rng, 3000, 384)
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    quantised, scales = quantize_int8(rows)
    picked = rng.choice(3000, 50, replace=False)
    noise = make_rows(rng, 50, 384)
    queries = rows[picked] + 0.3 * noise / np.linalg.norm(noise, axis=1, keepdims=True)
    queries = np.ascontiguousarray(queries / np.linalg.norm(queries, axis=1, keepdims=True), dtype=np.float32)
    found = search_batch(quantised, queries, 1, scales=scales)
    assert found.indices[:, 0].tolist() == picked.tolist()


# -- bad input ------------------------------------------------------------------------------------

_ROWS = np.ones((4, 3), np.float32)
_QUERY = np.ones(3, np.float32)
_I8, _SCALES = quantize_int8(_ROWS)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"matrix": _ROWS.astype(np.float64)}, "dtype"),
        ({"matrix": np.ones(3, np.float32)}, "2-D"),
        ({"matrix": np.asfortranarray(np.ones((4, 3), np.float32))}, "C-contiguous"),
        ({"matrix": np.ones((4, 6), np.float32)[:, ::2]}, "C-contiguous"),
        ({"matrix": np.ones((4, 0), np.float32), "query": np.ones(0, np.float32)}, "d == 0"),
        ({"query": _QUERY.astype(np.float64)}, "float32"),
        ({"query": np.ones(4, np.float32)}, "dimension"),
        ({"query": np.ones(6, np.float32)[::2]}, "C-contiguous"),
        ({"query": np.array([1, np.nan, 0], np.float32)}, "NaN"),
        ({"query": np.ones((1, 3), np.float32)}, "1-D"),
        ({"k": 0}, "k must"),
        ({"k": True}, "k must"),
        ({"k": 1.5}, "k must"),
        ({"matrix": _I8}, "scales"),
        ({"matrix": _I8, "scales": _SCALES.astype(np.float64)}, "float32"),
        ({"matrix": _I8, "scales": _SCALES[:3]}, "one entry per row"),
        ({"scales": _SCALES}, "only apply to int8"),
        ({"labels": np.zeros(4, np.int32)}, "int64"),
        ({"labels": np.zeros(5, np.int64)}, "one entry per row"),
        ({"labels": np.zeros(8, np.int64)[::2]}, "C-contiguous"),
        ({"want": 1}, "want needs labels"),
        ({"labels": np.zeros(4, np.int64), "want": -1}, "non-negative"),
    ],
)
def test_bad_input_raises_value_error(kwargs: dict[str, object], message: str) -> None:
    call = {"matrix": _ROWS, "query": _QUERY, "k": 2} | kwargs
    with pytest.raises(ValueError, match=message):
        search(call.pop("matrix"), call.pop("query"), call.pop("k"), **call)  # type: ignore[arg-type]


def test_bad_batches_raise_value_error() -> None:
    with pytest.raises(ValueError, match="2-D"):
        search_batch(_ROWS, _QUERY, 2)
    with pytest.raises(ValueError, match="C-contiguous"):
        search_batch(_ROWS, np.ones((3, 2), np.float32).T, 2)
    with pytest.raises(ValueError, match="2-D"):
        quantize_int8(np.ones(3, np.float32))
    with pytest.raises(ValueError, match="NaN"):
        quantize_int8(np.array([[np.inf]], np.float32))


# -- compilation and threads --------------------------------------------------------------------


def test_warm_up_compiles_each_kernel_for_its_one_signature() -> None:
    similarity.warm_up()
    for name in similarity._SEARCH_KERNELS:
        dispatcher, _ = similarity._SIGNATURES[name]
        assert len(dispatcher.signatures) == 1, name


@pytest.mark.parametrize("shape", [(0,), (7,), (1000, 384), (3, 5)])
def test_read_through_sums_every_whole_word(shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(9)
    array = rng.integers(-128, 128, shape, dtype=np.int8)
    raw = array.reshape(-1).view(np.uint8)
    words = raw[: raw.size // 8 * 8].view(np.uint64)
    expected = int(words.sum(dtype=np.uint64)) if words.size else 0
    assert similarity.read_through(array) == expected
    with pytest.raises(ValueError, match="C-contiguous"):
        similarity.read_through(np.ones((4, 4))[:, ::2])


def test_concurrent_searches_agree_with_sequential_ones() -> None:
    rng = np.random.default_rng(5)
    stored = Stored(make_rows(rng, 3000, 64), "float16")
    queries = make_rows(rng, 16, 64)
    expected = [search(stored.matrix, q, 5).indices.tolist() for q in queries]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda q: search(stored.matrix, q, 5).indices.tolist(), queries))
    assert got == expected
