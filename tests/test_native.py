"""The native CPU kernels of the csr backend (dst.kernels.native): results against dense
references on shapes that hit every tile/tail path, and the build, cache and fallback rules."""

import os
import shutil
import warnings

import pytest
import torch

from dst.kernels import CSRStructure, csr_linear, native

HAS_CC = shutil.which(os.environ.get("CC", "cc")) is not None


@pytest.fixture
def fresh_library(monkeypatch, tmp_path):
    """A private cache folder and a library that is looked up again (restored afterwards)."""
    monkeypatch.setenv("DST_CACHE_DIR", str(tmp_path / "cache"))
    native._library.cache_clear()
    yield tmp_path / "cache"
    native._library.cache_clear()


def _structure(rows, cols, density, seed):
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(rows, cols, generator=g) < density
    mask[1] = False  # an empty row
    mask[:, 2] = False  # an empty column
    return mask, CSRStructure.from_mask(mask), g


@pytest.mark.skipif(not HAS_CC, reason="no C compiler: the csr backend uses PyTorch's kernels")
def test_compiles_and_loads_where_a_compiler_exists():
    assert native.available()


needs_native = pytest.mark.skipif(not native.available(), reason="native kernels unavailable")


@needs_native
@pytest.mark.parametrize("m", [1, 7, 8, 63, 64, 65, 130, 200])
@pytest.mark.parametrize("batch", [None, 3])
def test_spmm_and_transpose_match_dense(m, batch):
    mask, s, g = _structure(37, 29, 0.3, seed=m)
    w = torch.randn(37, 29, generator=g) * mask
    values = s.gather(w)
    lead = () if batch is None else (batch,)
    # b is a column slice of a wider tensor: row stride != m exercises ldb
    b = torch.randn(*lead, 29, m + 5, generator=g)[..., 2 : m + 2]
    y = native.spmm(s.crow_indices, s.col_indices, values, b)
    torch.testing.assert_close(y, w @ b, rtol=1e-5, atol=1e-5)
    assert y.is_contiguous()
    gt = torch.randn(*lead, 37, m, generator=g)
    yt = native.spmm(s.t_crow_indices, s.t_col_indices, values, gt, perm=s.perm)
    torch.testing.assert_close(yt, w.t() @ gt, rtol=1e-5, atol=1e-5)


@needs_native
@pytest.mark.parametrize("m", [1, 9, 64, 70, 200])
@pytest.mark.parametrize("batch", [None, 4])
@pytest.mark.parametrize("density", [0.25, 1.0])  # 1.0: rows of > 256 entries (chunked)
def test_sddmm_matches_dense(m, batch, density):
    mask, s, g = _structure(23, 300, density, seed=m)
    lead = () if batch is None else (batch,)
    a = torch.randn(*lead, 23, m, generator=g)
    b = torch.randn(*lead, 300, m + 3, generator=g)[..., :m]
    full = a @ b.transpose(-1, -2)
    if batch is not None:
        full = full.sum(0)
    out = native.sddmm(s.crow_indices, s.col_indices, a, b)
    torch.testing.assert_close(out, s.gather(full), rtol=1e-5, atol=1e-4)
    shuffle = torch.randperm(s.nnz, generator=g)  # write entry k at shuffle[k]
    scattered = native.sddmm(s.crow_indices, s.col_indices, a, b, out_perm=shuffle)
    torch.testing.assert_close(scattered[shuffle], out)
    with pytest.raises(ValueError, match="do not match"):
        native.sddmm(s.crow_indices, s.col_indices, a, b[..., : max(m - 1, 0)])


@needs_native
def test_usable_only_for_cpu_float32_int32():
    _, s, _ = _structure(4, 5, 0.5, 0)
    f32 = torch.zeros(3)
    assert native.usable(s.col_indices, f32)
    assert not native.usable(s.col_indices, f32.double())
    assert not native.usable(s.col_indices.long(), f32)


@needs_native
def test_csr_linear_uses_native_kernels(monkeypatch):
    """The csr backend's float32 CPU path runs the native kernels (counted through a spy)."""
    calls = []
    for name in ("spmm", "sddmm"):
        fn = getattr(native, name)
        monkeypatch.setattr(native, name, lambda *a, _f=fn, _n=name, **k: calls.append(_n)
                            or _f(*a, **k))
    mask, s, g = _structure(16, 12, 0.5, 0)
    values = s.gather(torch.randn(16, 12, generator=g)).requires_grad_(True)
    x = torch.randn(5, 12, requires_grad=True)
    csr_linear(x, values, s).sum().backward()
    assert calls == ["spmm", "spmm", "sddmm"]


@pytest.mark.skipif(not HAS_CC, reason="needs a C compiler")
def test_build_is_cached(fresh_library):
    path = native.build()
    assert path.parent == fresh_library and path.exists()
    stamp = path.stat().st_mtime_ns
    assert native.build() == path and path.stat().st_mtime_ns == stamp  # not rebuilt
    assert [p.name for p in fresh_library.iterdir()] == [path.name]  # no temporaries left


def test_missing_compiler_warns_once_and_falls_back(fresh_library, monkeypatch):
    monkeypatch.setenv("CC", str(fresh_library / "no-such-cc"))
    with pytest.raises(native.NativeBuildError, match="Install a C compiler"):
        native.build()
    assert not any(fresh_library.glob(".build-*"))
    with pytest.warns(UserWarning, match="native CSR kernels unavailable"):
        assert not native.available()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not native.available()  # warned once, not at every call
    mask, s, g = _structure(8, 6, 0.5, 0)
    w = torch.randn(8, 6, generator=g) * mask
    x = torch.randn(3, 6, generator=g)
    torch.testing.assert_close(csr_linear(x, s.gather(w), s), x @ w.t())  # PyTorch's kernels


def test_switched_off_by_environment(fresh_library, monkeypatch):
    monkeypatch.setenv("DST_NATIVE", "0")
    assert not native.available()
    assert not fresh_library.exists()  # nothing compiled


@pytest.mark.skipif(not HAS_CC, reason="needs a C compiler")
def test_a_build_for_one_cpu_is_never_loaded_on_another(fresh_library, monkeypatch):
    monkeypatch.setattr(native, "_cpu_id", lambda: "x86_64 | vendor_id: AuthenticAMD | "
                        "flags: fpu sse2 avx fma")
    epyc = native.build()
    monkeypatch.setattr(native, "_cpu_id", lambda: "x86_64 | vendor_id: GenuineIntel | "
                        "flags: fpu sse2 avx avx2 avx512f")
    xeon = native.build()
    assert epyc != xeon and epyc.exists() and xeon.exists()  # a shared cache holds both
    monkeypatch.setattr(native, "_cpu_id", lambda: "x86_64 | vendor_id: AuthenticAMD | "
                        "flags: fpu sse2 avx fma")
    assert native.build() == epyc


@pytest.mark.skipif(not os.path.isfile("/proc/cpuinfo"), reason="Linux /proc/cpuinfo only")
def test_the_cpu_id_names_vendor_model_and_flags():
    cpu = native._cpu_id()
    with open("/proc/cpuinfo") as f:
        x86 = "vendor_id" in f.read()
    if x86:
        assert "vendor_id: " in cpu and "model name: " in cpu and "flags: " in cpu


@needs_native
@pytest.mark.parametrize("threads", [1, 2])
def test_flat_nonzero_finds_set_bytes_across_chunk_edges(threads):
    n = 5 * 65536 + 7  # six chunks of 64 Ki bytes: the parallel path and a short last chunk
    mask = torch.zeros(n, dtype=torch.bool)
    where = [0, 65535, 65536, 131071, 4 * 65536 + 3, n - 1]
    mask[where] = True
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        assert native.flat_nonzero(mask).tolist() == where
        mask[n - 1] = False  # trailing zeros after a chunk's last set byte
        assert native.flat_nonzero(mask).tolist() == where[:-1]
        assert native.flat_nonzero(torch.zeros(n, dtype=torch.bool)).numel() == 0
        assert native.flat_nonzero(torch.ones(n, dtype=torch.bool)).tolist() == list(range(n))
        g = torch.Generator().manual_seed(0)
        for density in (0.001, 0.1, 0.5, 0.97):
            m = torch.rand(n, generator=g) < density
            assert torch.equal(native.flat_nonzero(m), m.nonzero().squeeze(1))
    finally:
        torch.set_num_threads(old)


@needs_native
def test_flat_nonzero_reads_any_non_zero_byte_as_true():
    # bytes other than 1 (a uint8 tensor viewed as bool): each bit of a byte must count,
    # in whole 64-byte blocks and in the byte-wise tail alike
    raw = torch.zeros(4096 + 70, dtype=torch.uint8)
    where = [3, 64, 65, 127, 1000, 4096 + 2, 4096 + 69]
    raw[where] = torch.tensor([2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8)
    assert native.flat_nonzero(raw.view(torch.bool)).tolist() == where


def test_unique_unblocked_by_hand():
    # draws 5, 3, 5, 9, 0, 3, 7, 63, 64, 127, 64 over 130 positions with 3 and 7 blocked:
    # the distinct free ones, ascending (63 / 64 / 127 sit on either side of a 64-bit word)
    blocked = torch.zeros(130, dtype=torch.bool)
    blocked[[3, 7]] = True
    draws = torch.tensor([5, 3, 5, 9, 0, 3, 7, 63, 64, 127, 64])
    assert native.unique_unblocked(draws, blocked).tolist() == [0, 5, 9, 63, 64, 127]
    assert native.unique_unblocked(torch.tensor([3, 7, 3]), blocked).numel() == 0
    if native.available():
        with pytest.raises(IndexError, match=r"outside \[0, 130\)"):
            native.unique_unblocked(torch.tensor([1, 130]), blocked)


def test_index_fill_sets_values_and_moves_the_version():
    w = torch.arange(1.0, 100_001.0)
    m = torch.zeros(100_000, dtype=torch.bool)
    idx = torch.tensor([0, 5, 5, 99_999])  # a repeated index sets the same value twice
    v = m._version
    native.index_fill_(w, idx, 0.0)
    native.index_fill_(m, idx, True)
    assert w[[0, 1, 5, 6, 99_998, 99_999]].tolist() == [0.0, 2.0, 0.0, 7.0, 99_999.0, 0.0]
    assert m.nonzero().squeeze(1).tolist() == [0, 5, 99_999]
    assert m._version > v  # caches keyed by (data_ptr, _version) see the change
    native.index_fill_(m, torch.tensor([5]), False)
    assert m.nonzero().squeeze(1).tolist() == [0, 99_999]
    with pytest.raises(IndexError):
        native.index_fill_(w, torch.tensor([100_000]), 0.0)
    assert w[99_999] == 0.0 and w[99_998] == 99_999.0  # nothing written on a bad index
    many = torch.randint(100_000, (50_000,), generator=torch.Generator().manual_seed(0))
    expect = w.clone().index_fill_(0, many, -1.0)  # above the threads' cut-off: in parallel
    assert torch.equal(native.index_fill_(w, many, -1.0), expect)


def test_flat_nonzero_is_row_major_for_any_layout_and_dtype():
    mask = torch.zeros(8, 16, 8, 8, dtype=torch.bool)  # 8192 entries: above the native cut-off
    mask[0, 0, 0, 1] = mask[3, 5, 2, 7] = mask[7, 15, 7, 7] = True
    expect = [1, 3 * 1024 + 5 * 64 + 2 * 8 + 7, 8191]
    assert native.flat_nonzero(mask.to(memory_format=torch.channels_last)).tolist() == expect
    assert native.flat_nonzero(mask).tolist() == expect
    assert native.flat_nonzero(mask[:1, :1]).tolist() == [1]  # small: torch's nonzero
