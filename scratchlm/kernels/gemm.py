r"""Matrix multiplication: ``out (+)= a @ b``, a BLIS-style GEMM in Numba with a SIMD micro-kernel.

    a (M, K) @ b (K, N) -> out (M, N)        out[i, j] = sum_p a[i, p] b[p, j]

The NumPy twin is ``np.matmul`` (BLAS). The Numba route exists because NumPy's OpenBLAS is the
speed limit of every convolution here, and on this project's machines it runs a Haswell (AVX2)
kernel while the CPU has AVX-512: a register-tiled kernel written for the host's vector width
does more multiply-adds per cycle. The structure is Goto & van de Geijn (2008), "Anatomy of
High-Performance Matrix Multiplication", as laid out by BLIS (Van Zee & van de Geijn 2015):

.. code-block:: text

    for pc in 0..K step KC:                      # a K-slab: rank-KC update of all of out
        pack b[pc:pc+KC, :]     -> bp  (slivers of NR columns, row by row: bp[s][p][0:NR])
        for ic in 0..M step MC:
            pack a[ic:ic+MC, pc:pc+KC] -> ap  (slivers of MR rows, column by column: ap[r][p][0:MR])
            for s in slivers of bp:              # bp[s] (KC x NR) stays in L1/L2
                for r in slivers of ap:
                    out[MR x NR tile] (+)= sum_p outer(ap[r][p], bp[s][p])     # the micro-kernel

The micro-kernel keeps the whole ``MR x NR`` tile of ``out`` in vector registers for the K loop
(``MR * NR / W`` accumulators of ``W`` lanes; float32: 8 x 32 = 16 registers of 16 lanes,
float64: 8 x 16 = 16 registers of 8 lanes) and per
step ``p`` loads ``NR / W`` vectors of ``bp``, broadcasts ``MR`` scalars of ``ap`` and issues
``MR * NR / W`` fused multiply-adds. LLVM does not find this schedule in plain loops (it spills
the tile to memory: about 7 GFLOP/s measured), so the kernel is written as LLVM IR vector
operations through a Numba ``@intrinsic``; everything around it (packing, edges, blocking) is
ordinary Numba. On the benchmark VM (AMD EPYC, Zen 5) the micro-kernel alone runs at about
245 GFLOP/s on one core in float32, and a whole (128, 640) @ (640, 256) product including the
packing at about 180 -- as fast as NumPy's OpenBLAS on *both* cores (about 205). The vectors are
LLVM's: on a machine without AVX-512 they are split into the registers it has (correct, slower).

Edge tiles (``M`` or ``N`` not a multiple of ``MR``/``NR``) are computed into a scratch tile whose
valid corner is then copied out; the packed slivers are zero-padded, so the kernel never reads
past an operand.

The kernel is serial; callers that want both cores split their work (the convolution splits its
batch, see ``scratchlm.functional.conv``). :func:`matmul_numba` checks shapes, dtypes and
``out``'s unit column stride before the kernel. ``out`` must not overlap ``a`` or ``b`` (a
later K-slab would read what an earlier one wrote; ``np.matmul`` copies, this does not).
"""

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from . import dispatch

_u = np.uint64   # an unsigned index: Numba skips the negative-index wrap test

#: micro-tile rows (broadcast scalars of ``a`` per step)
MR = 8
#: micro-tile columns per dtype: two vectors of AVX-512's lane count (16 x float32, 8 x float64).
#: 8 x 32 and 6 x 64 tiles ran equally fast alone (~250 GFLOP/s); 8 x 32 wastes less on the
#: thin products of convolutions (32 or 144 columns) and keeps a KC x NR sliver of ``b`` in L1.
NR_F32, NR_F64 = 32, 16
#: K-slab depth and M-block height (a KC x MC block of ``a`` packed is ~100-200 KB: L2-sized)
KC, MC = 256, 96


def _micro_kernel(accumulate):
    """Build the intrinsic ``micro(ap, a_off, bp, b_off, out, i0, j0, kc)``:

    ``out[i0:i0+MR, j0:j0+NR] (+)= sum_{p<kc} outer(ap[a_off + p*MR : +MR], bp[b_off + p*NR : +NR])``

    ``ap``/``bp`` are the flat packed buffers, ``out`` a 2-D array with a unit column stride (its
    row stride is read from the array). ``accumulate`` adds to ``out``; otherwise it is
    overwritten.
    """

    @intrinsic
    def micro(typingctx, ap, a_off, bp, b_off, out, i0, j0, kc):
        sig = types.void(ap, a_off, bp, b_off, out, i0, j0, kc)
        dtype = ap.dtype

        def codegen(context, builder, signature, args):
            scalar = context.get_value_type(dtype)
            lanes = 16 if dtype == types.float32 else 8
            nr = NR_F32 if dtype == types.float32 else NR_F64
            nv = nr // lanes                                          # vectors per tile row
            vec = ir.VectorType(scalar, lanes)
            i64 = ir.IntType(64)

            def c64(v):
                return ir.Constant(i64, v)

            def as_i64(k):
                return context.cast(builder, args[k], signature.args[k], types.int64)

            a_ptr = builder.gep(context.make_array(signature.args[0])(context, builder, args[0]).data,
                                [as_i64(1)])
            b_ptr = builder.gep(context.make_array(signature.args[2])(context, builder, args[2]).data,
                                [as_i64(3)])
            out_arr = context.make_array(signature.args[4])(context, builder, args[4])
            itemsize = c64(context.get_abi_sizeof(scalar))
            ld_out = builder.sdiv(builder.extract_value(out_arr.strides, 0), itemsize)   # row stride
            c_ptr = builder.gep(out_arr.data, [builder.add(builder.mul(as_i64(5), ld_out), as_i64(6))])
            fma = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(vec, [vec] * 3),
                f"llvm.fma.v{lanes}{'f32' if dtype == types.float32 else 'f64'}")
            with builder.goto_entry_block():                  # the tile: MR x nv vector registers
                acc = [builder.alloca(vec) for _ in range(MR * nv)]
            for a in acc:
                builder.store(ir.Constant(vec, [0.0] * lanes), a)
            splat = ir.Constant(ir.VectorType(ir.IntType(32), lanes), [0] * lanes)
            with cgutils.for_range(builder, as_i64(7)) as loop:           # for p in range(kc):
                b_row = builder.gep(b_ptr, [builder.mul(loop.index, c64(nr))])
                b = [builder.load(builder.bitcast(builder.gep(b_row, [c64(v * lanes)]),
                                                  vec.as_pointer()), align=4)
                     for v in range(nv)]                                     # bp[p, :] (nv vectors)
                a_row = builder.gep(a_ptr, [builder.mul(loop.index, c64(MR))])
                for i in range(MR):
                    a = builder.load(builder.gep(a_row, [c64(i)]))                        # ap[p, i]
                    a = builder.shuffle_vector(
                        builder.insert_element(ir.Constant(vec, ir.Undefined), a,
                                               ir.Constant(ir.IntType(32), 0)),
                        ir.Constant(vec, ir.Undefined), splat)                   # broadcast
                    for v in range(nv):                      # acc[i, v] += ap[p, i] * bp[p, v]
                        cell = acc[i * nv + v]
                        builder.store(builder.call(fma, [a, b[v], builder.load(cell)]), cell)
            for i in range(MR):                                               # write the tile
                c_row = builder.gep(c_ptr, [builder.mul(c64(i), ld_out)])
                for v in range(nv):
                    ptr = builder.bitcast(builder.gep(c_row, [c64(v * lanes)]), vec.as_pointer())
                    value = builder.load(acc[i * nv + v])
                    if accumulate:
                        value = builder.fadd(builder.load(ptr, align=4), value)
                    builder.store(value, ptr, align=4)
            return context.get_dummy_value()

        return sig, codegen

    return micro


_micro_set = _micro_kernel(accumulate=False)
_micro_add = _micro_kernel(accumulate=True)


@njit(cache=True, nogil=True, inline="always")
def _pack_b(b, pc, kc, nr, bp):
    """b[pc:pc+kc, :] -> bp: sliver ``s`` holds columns ``s*nr ...`` row by row, zero-padded.
    Reads run along b's unit-stride axis (rows of a C-ordered b, columns of a transposed one)."""
    N = b.shape[1]
    by_rows = b.strides[1] == b.itemsize or b.strides[0] != b.itemsize
    for s in range((N + nr - 1) // nr):
        j0 = s * nr
        width = min(nr, N - j0)
        src = b[pc:pc + kc, j0:j0 + width]               # one view per sliver, not per row
        base = _u(s * kc * nr)
        if by_rows:
            for p in range(kc):
                for j in range(width):
                    bp[base + _u(p * nr + j)] = src[p, j]
        else:
            for j in range(width):
                for p in range(kc):
                    bp[base + _u(p * nr + j)] = src[p, j]
        for p in range(kc):
            for j in range(width, nr):
                bp[base + _u(p * nr + j)] = 0.0


@njit(cache=True, nogil=True, inline="always")
def _pack_a(a, ic, mc, pc, kc, ap):
    """a[ic:ic+mc, pc:pc+kc] -> ap: sliver ``r`` holds rows ``ic + r*MR ...`` column by column,
    zero-padded -- exactly :func:`_pack_b` of the transposed block, with slivers MR wide."""
    _pack_b(a[ic:ic + mc, :].T, pc, kc, MR, ap)


@njit(cache=True, nogil=True)
def _gemm(a, b, out, accumulate):
    # a (M, K) any strides, b (K, N) any strides, out (M, N) unit column stride
    M, K = a.shape
    N = b.shape[1]
    nr = NR_F32 if out.itemsize == 4 else NR_F64
    n_slivers = (N + nr - 1) // nr
    bp = np.empty(n_slivers * nr * KC, out.dtype)
    ap = np.empty(((MC + MR - 1) // MR) * MR * KC, out.dtype)
    tile = np.empty((MR, nr), out.dtype)
    if K == 0 and not accumulate:
        out[:, :] = 0.0
    for pc in range(0, K, KC):
        kc = min(KC, K - pc)
        _pack_b(b, pc, kc, nr, bp)
        overwrite = pc == 0 and not accumulate       # the first slab writes, the others add
        for ic in range(0, M, MC):
            mc = min(MC, M - ic)
            _pack_a(a, ic, mc, pc, kc, ap)
            for s in range(n_slivers):
                j0 = s * nr
                for r in range((mc + MR - 1) // MR):
                    i0 = ic + r * MR
                    if i0 + MR <= M and j0 + nr <= N:                       # a full tile
                        if overwrite:
                            _micro_set(ap, r * kc * MR, bp, s * kc * nr, out, i0, j0, kc)
                        else:
                            _micro_add(ap, r * kc * MR, bp, s * kc * nr, out, i0, j0, kc)
                    else:                                   # an edge tile: via the scratch tile
                        _micro_set(ap, r * kc * MR, bp, s * kc * nr, tile, 0, 0, kc)
                        for ii in range(min(MR, M - i0)):
                            for jj in range(min(nr, N - j0)):
                                if overwrite:
                                    out[i0 + ii, j0 + jj] = tile[ii, jj]
                                else:
                                    out[i0 + ii, j0 + jj] += tile[ii, jj]


def matmul_numpy(a, b, out, accumulate):
    """``out = a @ b`` (``accumulate=False``) or ``out += a @ b``: a ``(M, K)``, b ``(K, N)``,
    out ``(M, N)``, one float dtype. Returns ``out``."""
    if accumulate:
        out += a @ b
    else:
        np.matmul(a, b, out=out)
    return out


def matmul_numba(a, b, out, accumulate):
    """The Numba route of :func:`matmul_numpy` (same arguments; ``a`` and ``b`` may be any
    strided views, ``out`` needs a unit column stride). The shapes are checked here, before the
    kernel, which would read past the arrays otherwise."""
    if not (a.ndim == b.ndim == out.ndim == 2 and a.shape[1] == b.shape[0]
            and out.shape == (a.shape[0], b.shape[1])):
        raise ValueError(f"matmul needs a (M, K), b (K, N) and out (M, N), got a {a.shape}, "
                         f"b {b.shape}, out {out.shape}")
    if not (a.dtype == b.dtype == out.dtype and out.dtype in (np.float32, np.float64)):
        raise TypeError(f"matmul needs one float dtype, got {a.dtype}, {b.dtype}, {out.dtype}")
    if out.size and out.shape[1] > 1 and out.strides[1] != out.itemsize:
        raise ValueError(f"out must have a unit column stride, got strides {out.strides}")
    _gemm(a, b, out, bool(accumulate))
    return out


matmul = dispatch(matmul_numba, matmul_numpy)
