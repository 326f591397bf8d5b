// Per-channel full-resolution reductions on CPUs as XLA FFI handlers, each one pass over its
// inputs: batch norm's (jaxseg/models/batch_norm.py) and the bias gradients of bfloat16 layers
// (models/conv.py: add_bias), through jaxseg/models/native_sums.py where this builds; the
// element-wise passes stay XLA's fusions. XLA's CPU backend took the forward pass's two sums, and
// the backward pass's sums of the gradient and of the gradient times the centred input, as
// separate reductions, each reading the full-resolution tensors again, and first wrote bfloat16
// inputs out again in float32 (BUILD.md performance notes).
//
// Inputs are float32 or bfloat16, sums float32. Every input is read as [rows, channels]
// (channels last). Each thread sums blocks of rows into float partial sums per channel,
// vectorised along the channels, and adds each block's partial sums into double totals: float32
// rounding over at most kBlock rows, whatever the batch size.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {
constexpr int64_t kBlock = 64;

// One vectorised copy per x86-64 instruction set, picked at load time; elsewhere the
// compiler's default target.
#if defined(__x86_64__)
#define JAXSEG_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define JAXSEG_CLONES
#endif

// The activation after the batch norm (native_sums.ACTIVATIONS' order), whose derivative at its
// input y multiplies the output gradient.
enum Act : int64_t { kNone = 0, kRelu = 1, kSilu = 2 };

// An input element as float: float32 as is, bfloat16 (XLA FFI's uint16_t) as the top half of
// a float32's bits.
inline float Load(float v) { return v; }
inline float Load(uint16_t v) {
  uint32_t bits = static_cast<uint32_t>(v) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

// One block of rows [begin, end), added to the float partial sums s0, s1 (zeroed by the
// caller) of two per-element terms:
//   StatsRows:     z, z * z
//   GradientRows:  dy, dy * (z - mean), with dy = act'(y) * g and y = (z - mean) * mul + bias.
// __restrict: the sums never alias the inputs (without it GCC versions each loop on run-time
// overlap checks, and the gradient's seven pointers took its scalar path: 49 ms for what now
// takes 4, 8 x 256^2 x 32). The templates are instantiated inside the cloned functions below,
// one vectorised copy per instruction set. Clones, not -march=native: the cached library may
// be shared by machines with different CPUs.
template <typename T>
inline void StatsRows(const T* __restrict z, int64_t begin, int64_t end, int64_t c,
                      float* __restrict s0, float* __restrict s1) {
  for (int64_t r = begin; r < end; ++r) {
    const T* row = z + r * c;
    for (int64_t k = 0; k < c; ++k) {
      float v = Load(row[k]);
      s0[k] += v;
      s1[k] += v * v;
    }
  }
}

template <int64_t kAct, typename T>
inline void GradientRows(const T* __restrict z, const T* __restrict g,
                         const float* __restrict mean, const float* __restrict mul,
                         const float* __restrict bias, int64_t begin, int64_t end, int64_t c,
                         float* __restrict s0, float* __restrict s1) {
  for (int64_t r = begin; r < end; ++r) {
    const T* zr = z + r * c;
    const T* gr = g + r * c;
    for (int64_t k = 0; k < c; ++k) {
      float centred = Load(zr[k]) - mean[k];
      float dy = Load(gr[k]);
      if constexpr (kAct == kRelu) {
        dy = centred * mul[k] + bias[k] > 0.0f ? dy : 0.0f;
      } else if constexpr (kAct == kSilu) {
        float y = centred * mul[k] + bias[k];
        float s = 1.0f / (1.0f + std::exp(-y));
        dy *= s * (1.0f + y * (1.0f - s));
      }
      s0[k] += dy;
      s1[k] += dy * centred;
    }
  }
}

template <typename T>
inline void GradientSwitch(const T* __restrict z, const T* __restrict g,
                           const float* __restrict mean, const float* __restrict mul,
                           const float* __restrict bias, int64_t act, int64_t begin,
                           int64_t end, int64_t c, float* __restrict s0, float* __restrict s1) {
  // One loop per activation, so that each vectorises without a branch per element.
  if (act == kRelu) {
    GradientRows<kRelu>(z, g, mean, mul, bias, begin, end, c, s0, s1);
  } else if (act == kSilu) {
    GradientRows<kSilu>(z, g, mean, mul, bias, begin, end, c, s0, s1);
  } else {
    GradientRows<kNone>(z, g, mean, mul, bias, begin, end, c, s0, s1);
  }
}

// The cloned entry points, one per input type (GCC clones functions, not templates).
#define JAXSEG_BLOCKS(T)                                                                      \
  JAXSEG_CLONES void StatsBlock(const T* z, int64_t begin, int64_t end, int64_t c, float* s0, \
                                float* s1) {                                                  \
    StatsRows(z, begin, end, c, s0, s1);                                                      \
  }                                                                                           \
  JAXSEG_CLONES void GradientBlock(const T* z, const T* g, const float* mean,                 \
                                   const float* mul, const float* bias, int64_t act,          \
                                   int64_t begin, int64_t end, int64_t c, float* s0,          \
                                   float* s1) {                                               \
    GradientSwitch(z, g, mean, mul, bias, act, begin, end, c, s0, s1);                        \
  }
JAXSEG_BLOCKS(float)
JAXSEG_BLOCKS(uint16_t)
#undef JAXSEG_BLOCKS

// What the threads of one call share. Held by shared_ptr: a helper task that XLA's pool starts
// only after the call has returned finds no blocks left and touches nothing else.
struct Shared {
  explicit Shared(int64_t c) : t0(c, 0.0), t1(c, 0.0) {}
  std::atomic<int64_t> next{0};  // the next block to take
  std::mutex mu;
  std::condition_variable all_done;
  int64_t finished = 0;  // blocks summed into t0, t1
  std::vector<double> t0, t1;
};

// Runs `block(begin, end, s0, s1)` over all rows in kBlock-row blocks, on this thread and on
// XLA's own CPU thread pool (not OpenMP's: its threads spin between parallel regions, taking a
// core from the XLA kernels that run next), and writes the two totals per channel.
template <typename Block>
void Reduce(ffi::ThreadPool& pool, int64_t rows, int64_t c, float* out0, float* out1,
            Block block) {
  int64_t blocks = (rows + kBlock - 1) / kBlock;
  auto shared = std::make_shared<Shared>(c);
  auto work = [shared, blocks, rows, c, block]() {
    std::vector<double> d0(c, 0.0), d1(c, 0.0);
    std::vector<float> s0(c), s1(c);
    int64_t mine = 0;
    for (int64_t b; (b = shared->next.fetch_add(1)) < blocks; ++mine) {
      std::fill(s0.begin(), s0.end(), 0.0f);
      std::fill(s1.begin(), s1.end(), 0.0f);
      block(b * kBlock, std::min(rows, (b + 1) * kBlock), s0.data(), s1.data());
      for (int64_t k = 0; k < c; ++k) {
        d0[k] += s0[k];
        d1[k] += s1[k];
      }
    }
    if (mine == 0) return;
    std::lock_guard<std::mutex> lock(shared->mu);
    for (int64_t k = 0; k < c; ++k) {
      shared->t0[k] += d0[k];
      shared->t1[k] += d1[k];
    }
    shared->finished += mine;
    if (shared->finished == blocks) shared->all_done.notify_all();
  };
  int64_t helpers = std::min(pool.num_threads(), blocks) - 1;
  for (int64_t i = 0; i < helpers; ++i) pool.Schedule([work] { work(); });
  work();
  std::unique_lock<std::mutex> lock(shared->mu);
  shared->all_done.wait(lock, [&] { return shared->finished == blocks; });
  for (int64_t k = 0; k < c; ++k) {
    out0[k] = static_cast<float>(shared->t0[k]);
    out1[k] = static_cast<float>(shared->t1[k]);
  }
}

int64_t Channels(const ffi::AnyBuffer::Dimensions& d) { return d.size() == 0 ? 1 : d.back(); }

template <ffi::DataType T>
ffi::Error StatsImpl(ffi::ThreadPool pool, ffi::Buffer<T> z, ffi::ResultBuffer<ffi::F32> sum,
                     ffi::ResultBuffer<ffi::F32> sum_sq) {
  int64_t c = Channels(z.dimensions()), rows = z.element_count() / c;
  const auto* zp = z.typed_data();
  Reduce(pool, rows, c, sum->typed_data(), sum_sq->typed_data(),
         [=](int64_t b, int64_t e, float* s0, float* s1) { StatsBlock(zp, b, e, c, s0, s1); });
  return ffi::Error::Success();
}

template <ffi::DataType T>
ffi::Error GradientImpl(ffi::ThreadPool pool, ffi::Buffer<T> z, ffi::Buffer<T> g,
                        ffi::Buffer<ffi::F32> mean, ffi::Buffer<ffi::F32> mul,
                        ffi::Buffer<ffi::F32> bias, ffi::ResultBuffer<ffi::F32> sum_dy,
                        ffi::ResultBuffer<ffi::F32> sum_dy_centred, int64_t act) {
  if (act != kNone && act != kRelu && act != kSilu) {
    return ffi::Error(ffi::ErrorCode::kInvalidArgument, "batch norm sums: unknown activation");
  }
  int64_t c = Channels(z.dimensions()), rows = z.element_count() / c;
  const auto *zp = z.typed_data(), *gp = g.typed_data();
  const float *mp = mean.typed_data(), *up = mul.typed_data(), *bp = bias.typed_data();
  Reduce(pool, rows, c, sum_dy->typed_data(), sum_dy_centred->typed_data(),
         [=](int64_t b, int64_t e, float* s0, float* s1) {
           GradientBlock(zp, gp, mp, up, bp, act, b, e, c, s0, s1);
         });
  return ffi::Error::Success();
}
}  // namespace

// float32 inputs (BatchNormStats, BatchNormGradientSums) and bfloat16 ones (...BF16); the sums,
// and the per-channel vectors, are float32 either way.
#define STATS_BIND(T)               \
  ffi::Ffi::Bind()                  \
      .Ctx<ffi::ThreadPool>()       \
      .Arg<ffi::Buffer<T>>()        \
      .Ret<ffi::Buffer<ffi::F32>>() \
      .Ret<ffi::Buffer<ffi::F32>>()
#define GRADIENT_BIND(T)            \
  ffi::Ffi::Bind()                  \
      .Ctx<ffi::ThreadPool>()       \
      .Arg<ffi::Buffer<T>>()        \
      .Arg<ffi::Buffer<T>>()        \
      .Arg<ffi::Buffer<ffi::F32>>() \
      .Arg<ffi::Buffer<ffi::F32>>() \
      .Arg<ffi::Buffer<ffi::F32>>() \
      .Ret<ffi::Buffer<ffi::F32>>() \
      .Ret<ffi::Buffer<ffi::F32>>() \
      .Attr<int64_t>("act")
XLA_FFI_DEFINE_HANDLER_SYMBOL(BatchNormStats, StatsImpl<ffi::F32>, STATS_BIND(ffi::F32));
XLA_FFI_DEFINE_HANDLER_SYMBOL(BatchNormGradientSums, GradientImpl<ffi::F32>,
                              GRADIENT_BIND(ffi::F32));
XLA_FFI_DEFINE_HANDLER_SYMBOL(BatchNormStatsBF16, StatsImpl<ffi::BF16>, STATS_BIND(ffi::BF16));
XLA_FFI_DEFINE_HANDLER_SYMBOL(BatchNormGradientSumsBF16, GradientImpl<ffi::BF16>,
                              GRADIENT_BIND(ffi::BF16));
