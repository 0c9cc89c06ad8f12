// Scalar dtype helpers shared by the VM, the codegen and the reference.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#include "dvm/dvm.h"

namespace dvm {

inline bool IsFloat(DType t) {
  return t == DType::kFloat32 || t == DType::kFloat16 || t == DType::kBFloat16;
}

inline uint32_t F32Bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
inline float BitsF32(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// Round-to-nearest-even f32 -> bf16 bits (NaN stays NaN).
inline uint16_t F32ToBF16(float f) {
  uint32_t u = F32Bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}
inline float BF16ToF32(uint16_t h) { return BitsF32(uint32_t(h) << 16); }

// Round-to-nearest-even f32 -> IEEE half bits (via the F16C-compatible path).
inline uint16_t F32ToF16(float f) {
  uint32_t x = F32Bits(f);
  uint32_t sign = (x >> 16) & 0x8000u;
  uint32_t ax = x & 0x7fffffffu;
  if (ax > 0x7f800000u) return static_cast<uint16_t>(sign | 0x7e00u);  // NaN
  if (ax >= 0x47800000u) return static_cast<uint16_t>(sign | 0x7c00u); // overflow -> inf
  if (ax < 0x38800000u) {  // subnormal or zero in half
    // value = ax as float; half subnormal unit is 2^-24.
    float v = BitsF32(ax) * 16777216.0f;  // exact scaling by 2^24
    uint32_t m = static_cast<uint32_t>(std::nearbyint(v));
    return static_cast<uint16_t>(sign | m);
  }
  uint32_t e = ((ax >> 23) - 112u) << 10;
  uint32_t m = ax & 0x7fffffu;
  uint32_t h = e | (m >> 13);
  uint32_t rem = m & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;
  return static_cast<uint16_t>(sign | h);
}
inline float F16ToF32(uint16_t h) {
  uint32_t sign = uint32_t(h & 0x8000u) << 16;
  uint32_t e = (h >> 10) & 0x1fu;
  uint32_t m = h & 0x3ffu;
  if (e == 0) {
    float v = static_cast<float>(m) * (1.0f / 16777216.0f);
    return sign ? -v : v;
  }
  if (e == 31) return BitsF32(sign | 0x7f800000u | (m << 13));
  return BitsF32(sign | ((e + 112u) << 23) | (m << 13));
}

// float -> i32 as DVM defines it: NaN -> 0, saturating, truncating.
inline int32_t SatF32ToI32(double v) {
  if (std::isnan(v)) return 0;
  if (v >= 2147483647.0) return std::numeric_limits<int32_t>::max();
  if (v <= -2147483648.0) return std::numeric_limits<int32_t>::min();
  return static_cast<int32_t>(v);
}
inline int32_t WrapI8(int32_t v) { return static_cast<int8_t>(static_cast<uint8_t>(v & 0xff)); }

}  // namespace dvm
