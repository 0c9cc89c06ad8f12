// Library ops: the non-fusible ops a transformer graph needs, run by plain
// C++ kernels (not bytecode). Each checks its arguments first and throws
// dvm::Error naming the op and the offending values before anything is
// written; outputs never alias inputs.
#pragma once

#include <cstdint>
#include <span>

#include "dvm/dvm.h"

namespace dvm::lib {

// Embedding lookup / gather along axis 0: out[i..., :] = table[ids[i...], :].
// table: [V, d1, ...] of `dt`; ids: int32 of shape `ids_shape`; out:
// ids_shape ++ [d1, ...]. An id outside [0, V) throws naming its position
// and value.
void Gather(const void* table, const Shape& table_shape, DType dt, const int32_t* ids,
            const Shape& ids_shape, void* out);

// Concatenation along `axis` (negative counts from the end). All inputs have
// `dt` and the same rank and dims except along `axis`.
void Concat(std::span<const void* const> ins, std::span<const Shape> shapes, DType dt,
            int64_t axis, void* out);

// Split along `axis` into pieces of `sizes` (summing to the dim).
void Split(const void* in, const Shape& shape, DType dt, int64_t axis,
           std::span<const int64_t> sizes, std::span<void* const> outs);

// out[i] = start + i * step for i in [0, n), in `dt` (f32, f16, bf16, i32, i8).
void Iota(int64_t n, DType dt, double start, double step, void* out);

// Causal attention mask [q, kv] for the last q positions of a kv-long
// sequence: element (i, j) is allowed when j <= i + (kv - q). f32/f16/bf16:
// 0 where allowed, -inf elsewhere; bool: true where allowed. Requires
// 0 <= q <= kv.
void CausalMask(int64_t q, int64_t kv, DType dt, void* out);

}  // namespace dvm::lib
