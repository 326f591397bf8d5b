// model.conv_impl=onednn: a 2-D convolution (NHWC input, HWIO kernel, float32 or bfloat16; any
// kernel size, stride and padding, attributes stride_h, stride_w, pad_top, pad_bottom, pad_left,
// pad_right) by oneDNN, the library under PyTorch's CPU convolutions, as three XLA FFI handlers
// per dtype: forward, input gradient, weight gradient (bfloat16 ones named ...BF16; oneDNN
// accumulates in float32 and, on CPUs with AMX, runs them on its tile units).
// jaxseg/models/onednn.py compiles it on first use and registers the handlers; XLA's CPU
// convolutions ran the UNet's layers 1.2-2.8x slower
// (BUILD.md performance notes). Primitives are built once per shape and cached. XLA may run
// two of these calls at once (independent instructions; one per device with several CPU
// devices), so each call passes its own scratchpad: oneDNN's library-managed one is shared
// between primitives.
#include <array>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using tag = dnnl::memory::format_tag;
using dt = dnnl::memory::data_type;

namespace {
dnnl::engine& Engine() {
  static dnnl::engine e(dnnl::engine::kind::cpu, 0);
  return e;
}

struct Conv {
  dnnl::memory::desc src, dst, w_user;
  dnnl::convolution_forward::primitive_desc fwd_pd;
  dnnl::convolution_forward fwd;
  dnnl::convolution_backward_data::primitive_desc bwd_data_pd;
  dnnl::convolution_backward_data bwd_data;
  dnnl::convolution_backward_weights::primitive_desc bwd_w_pd;
  dnnl::convolution_backward_weights bwd_w;
};

// This thread's scratchpad for a primitive (a thread runs one call at a time).
dnnl::memory Scratchpad(const dnnl::memory::desc& want) {
  thread_local std::vector<uint8_t> buffer;
  if (buffer.size() < want.get_size()) buffer.resize(want.get_size());
  return dnnl::memory(want, Engine(), buffer.data());
}

// Stride and padding, from the handlers' attributes.
struct Geometry {
  int64_t sh, sw, pt, pb, pl, pr;
};

Conv& Get(dt type, int64_t n, int64_t h, int64_t w, int64_t ci, int64_t co, int64_t kh,
          int64_t kw, const Geometry& g) {
  static std::map<std::array<int64_t, 14>, std::unique_ptr<Conv>> cache;
  static std::mutex mu;
  std::lock_guard<std::mutex> lock(mu);
  std::array<int64_t, 14> key{static_cast<int64_t>(type), n, h, w, ci, co, kh, kw,
                              g.sh, g.sw, g.pt, g.pb, g.pl, g.pr};
  auto it = cache.find(key);
  if (it != cache.end()) return *it->second;
  int64_t oh = (h + g.pt + g.pb - kh) / g.sh + 1, ow = (w + g.pl + g.pr - kw) / g.sw + 1;
  dnnl::memory::desc src({n, ci, h, w}, type, tag::nhwc);
  dnnl::memory::desc dst({n, co, oh, ow}, type, tag::nhwc);
  dnnl::memory::desc w_any({co, ci, kh, kw}, type, tag::any);
  dnnl::memory::desc w_user({co, ci, kh, kw}, type, tag::hwio);
  dnnl::memory::dims strides{g.sh, g.sw}, pad_l{g.pt, g.pl}, pad_r{g.pb, g.pr};
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  auto fwd_pd = dnnl::convolution_forward::primitive_desc(
      Engine(), dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct, src,
      w_any, dst, strides, pad_l, pad_r, attr);
  auto bwd_data_pd = dnnl::convolution_backward_data::primitive_desc(
      Engine(), dnnl::algorithm::convolution_direct, src, w_any, dst, strides, pad_l, pad_r,
      fwd_pd, attr);
  auto bwd_w_pd = dnnl::convolution_backward_weights::primitive_desc(
      Engine(), dnnl::algorithm::convolution_direct, src, w_any, dst, strides, pad_l, pad_r,
      fwd_pd, attr);
  auto c = std::unique_ptr<Conv>(new Conv{src, dst, w_user, fwd_pd,
                                          dnnl::convolution_forward(fwd_pd), bwd_data_pd,
                                          dnnl::convolution_backward_data(bwd_data_pd), bwd_w_pd,
                                          dnnl::convolution_backward_weights(bwd_w_pd)});
  auto& ref = *c;
  cache.emplace(key, std::move(c));
  return ref;
}

// The user's HWIO kernel in the layout a primitive wants (a reorder when they differ).
dnnl::memory Weights(const dnnl::memory::desc& want, const dnnl::memory& user, dnnl::stream& s) {
  if (want == user.get_desc()) return user;
  dnnl::memory m(want, Engine());
  dnnl::reorder(user, m).execute(s, const_cast<dnnl::memory&>(user), m);
  return m;
}

// Runs a primitive that reads the user's HWIO kernel `w` (forward, input gradient): the kernel
// in the layout the primitive wants, then `args` and this call's scratchpad.
ffi::Error RunWithKernel(const dnnl::primitive& p, const dnnl::memory::desc& want,
                         const dnnl::memory::desc& scratchpad, const Conv& c, void* w,
                         std::unordered_map<int, dnnl::memory> args) {
  dnnl::stream s(Engine());
  args[DNNL_ARG_WEIGHTS] = Weights(want, dnnl::memory(c.w_user, Engine(), w), s);
  args[DNNL_ARG_SCRATCHPAD] = Scratchpad(scratchpad);
  p.execute(s, args);
  s.wait();
  return ffi::Error::Success();
}

template <ffi::DataType T>
constexpr dt Dnnl() {
  static_assert(T == ffi::F32 || T == ffi::BF16);
  return T == ffi::F32 ? dt::f32 : dt::bf16;
}

template <ffi::DataType T>
ffi::Error FwdImpl(ffi::Buffer<T> x, ffi::Buffer<T> w, ffi::ResultBuffer<T> y, int64_t sh,
                   int64_t sw, int64_t pt, int64_t pb, int64_t pl, int64_t pr) {
  auto xd = x.dimensions(), wd = w.dimensions();
  Conv& c = Get(Dnnl<T>(), xd[0], xd[1], xd[2], xd[3], wd[3], wd[0], wd[1],
                {sh, sw, pt, pb, pl, pr});
  return RunWithKernel(c.fwd, c.fwd_pd.weights_desc(), c.fwd_pd.scratchpad_desc(), c,
                       w.untyped_data(),
                       {{DNNL_ARG_SRC, dnnl::memory(c.src, Engine(), x.untyped_data())},
                        {DNNL_ARG_DST, dnnl::memory(c.dst, Engine(), y->untyped_data())}});
}

template <ffi::DataType T>
ffi::Error BwdDataImpl(ffi::Buffer<T> g, ffi::Buffer<T> w, ffi::ResultBuffer<T> dx, int64_t sh,
                       int64_t sw, int64_t pt, int64_t pb, int64_t pl, int64_t pr) {
  auto xd = dx->dimensions(), wd = w.dimensions();
  Conv& c = Get(Dnnl<T>(), xd[0], xd[1], xd[2], xd[3], wd[3], wd[0], wd[1],
                {sh, sw, pt, pb, pl, pr});
  return RunWithKernel(c.bwd_data, c.bwd_data_pd.weights_desc(),
                       c.bwd_data_pd.scratchpad_desc(), c, w.untyped_data(),
                       {{DNNL_ARG_DIFF_DST, dnnl::memory(c.dst, Engine(), g.untyped_data())},
                        {DNNL_ARG_DIFF_SRC, dnnl::memory(c.src, Engine(), dx->untyped_data())}});
}

template <ffi::DataType T>
ffi::Error WgradImpl(ffi::Buffer<T> x, ffi::Buffer<T> g, ffi::ResultBuffer<T> dw, int64_t sh,
                     int64_t sw, int64_t pt, int64_t pb, int64_t pl, int64_t pr) {
  auto xd = x.dimensions(), wd = dw->dimensions();
  Conv& c = Get(Dnnl<T>(), xd[0], xd[1], xd[2], xd[3], wd[3], wd[0], wd[1],
                {sh, sw, pt, pb, pl, pr});
  dnnl::stream s(Engine());
  dnnl::memory src(c.src, Engine(), x.untyped_data()), ddst(c.dst, Engine(), g.untyped_data());
  dnnl::memory wu(c.w_user, Engine(), dw->untyped_data());
  bool reorder = c.bwd_w_pd.diff_weights_desc() != c.w_user;
  dnnl::memory wm = reorder ? dnnl::memory(c.bwd_w_pd.diff_weights_desc(), Engine()) : wu;
  c.bwd_w.execute(s, {{DNNL_ARG_SRC, src}, {DNNL_ARG_DIFF_DST, ddst},
                      {DNNL_ARG_DIFF_WEIGHTS, wm},
                      {DNNL_ARG_SCRATCHPAD, Scratchpad(c.bwd_w_pd.scratchpad_desc())}});
  if (reorder) dnnl::reorder(wm, wu).execute(s, wm, wu);
  s.wait();
  return ffi::Error::Success();
}
}  // namespace

#define BIND(T)                                                                      \
  ffi::Ffi::Bind()                                                                   \
      .Arg<ffi::Buffer<T>>()                                                         \
      .Arg<ffi::Buffer<T>>()                                                         \
      .Ret<ffi::Buffer<T>>()                                                         \
      .Attr<int64_t>("stride_h")                                                     \
      .Attr<int64_t>("stride_w")                                                     \
      .Attr<int64_t>("pad_top")                                                      \
      .Attr<int64_t>("pad_bottom")                                                   \
      .Attr<int64_t>("pad_left")                                                     \
      .Attr<int64_t>("pad_right")
XLA_FFI_DEFINE_HANDLER_SYMBOL(ConvFwd, FwdImpl<ffi::F32>, BIND(ffi::F32));
XLA_FFI_DEFINE_HANDLER_SYMBOL(ConvBwdData, BwdDataImpl<ffi::F32>, BIND(ffi::F32));
XLA_FFI_DEFINE_HANDLER_SYMBOL(ConvWgrad, WgradImpl<ffi::F32>, BIND(ffi::F32));
XLA_FFI_DEFINE_HANDLER_SYMBOL(ConvFwdBF16, FwdImpl<ffi::BF16>, BIND(ffi::BF16));
XLA_FFI_DEFINE_HANDLER_SYMBOL(ConvBwdDataBF16, BwdDataImpl<ffi::BF16>, BIND(ffi::BF16));
XLA_FFI_DEFINE_HANDLER_SYMBOL(ConvWgradBF16, WgradImpl<ffi::BF16>, BIND(ffi::BF16));
