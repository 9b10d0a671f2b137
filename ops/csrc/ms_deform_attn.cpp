// Multi-scale deformable attention: CPU forward and backward, registered as torch custom ops.
//
//   out[b, q, h, :] = sum_{l, p} a[b, q, h, l, p] * bilinear(value[b, level l, h, :], loc[b, q, h, l, p])
//
// Bilinear sampling with zero padding, identical to F.grid_sample(mode="bilinear",
// padding_mode="zeros", align_corners=False) on grid = 2 * loc - 1: pixel (i, j) of a level of
// size (H_l, W_l) has its centre at ((j + 0.5) / W_l, (i + 0.5) / H_l) in location units.
//
// Layouts (all contiguous): value [B, S, H, D] with the levels flattened row-major and concatenated
// along S; spatial_shapes int64 [L, 2] as (H_l, W_l); level_start_index int64 [L];
// sampling_loc [B, Q, H, L, P, 2] as (x, y); attn_weight [B, Q, H, L, P]; output [B, Q, H * D].
//
// Nothing of size [.., L * P, D] is materialised: each (b, q, h) accumulates its D outputs directly.
// The backward is race-free without atomics: the work is split over (b, h, l), and each such unit
// owns grad_value[b, level l, h, :] and grad_loc / grad_attn[b, :, h, l, :], so its results do not
// depend on the thread count.
//
// Threads: both loops run on torch's intra-op threads through at::parallel_for, a header template
// that only runs in parallel when this file is compiled with OpenMP, so the build
// (detrlab/models/msda_build.py) adds -fopenmp and links torch's own OpenMP runtime. The threads take
// chunks of work from a shared counter (parallel_chunks) instead of one fixed range each: a thread
// whose core is slower or busy (a hybrid CPU's efficiency core, a shared virtual CPU) then does less,
// rather than making the others wait at the end. Which thread runs a unit does not change its
// arithmetic, so results stay independent of the thread count.

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <tuple>
#include <vector>

namespace detrlab {
namespace {

// The four bilinear corners of one sampling point, with their flat row offsets inside the level
// (-1 when the corner lies outside the map and therefore reads zero).
template <typename scalar_t>
struct Corners {
  int64_t offset[4];
  scalar_t weight[4];
  scalar_t dweight_dx[4];
  scalar_t dweight_dy[4];
};

// Returns false when no corner is inside the map (the sample is exactly zero).
template <typename scalar_t>
inline bool bilinear_corners(scalar_t loc_x, scalar_t loc_y, int64_t height, int64_t width,
                             Corners<scalar_t>& c) {
  // grid_sample, align_corners=False: ix = ((2 * loc - 1 + 1) * W - 1) / 2 = loc * W - 0.5
  const scalar_t x = loc_x * static_cast<scalar_t>(width) - static_cast<scalar_t>(0.5);
  const scalar_t y = loc_y * static_cast<scalar_t>(height) - static_cast<scalar_t>(0.5);
  if (!(x > static_cast<scalar_t>(-1) && y > static_cast<scalar_t>(-1) &&
        x < static_cast<scalar_t>(width) && y < static_cast<scalar_t>(height))) {
    return false;  // also rejects NaN
  }
  const scalar_t x0f = std::floor(x);
  const scalar_t y0f = std::floor(y);
  const int64_t x0 = static_cast<int64_t>(x0f);
  const int64_t y0 = static_cast<int64_t>(y0f);
  const scalar_t lx = x - x0f, ly = y - y0f;
  const scalar_t hx = 1 - lx, hy = 1 - ly;
  const bool x0_in = x0 >= 0, x1_in = x0 + 1 < width;
  const bool y0_in = y0 >= 0, y1_in = y0 + 1 < height;
  // corner order: (y0, x0), (y0, x1), (y1, x0), (y1, x1)
  c.offset[0] = (y0_in && x0_in) ? y0 * width + x0 : -1;
  c.offset[1] = (y0_in && x1_in) ? y0 * width + x0 + 1 : -1;
  c.offset[2] = (y1_in && x0_in) ? (y0 + 1) * width + x0 : -1;
  c.offset[3] = (y1_in && x1_in) ? (y0 + 1) * width + x0 + 1 : -1;
  c.weight[0] = hy * hx;
  c.weight[1] = hy * lx;
  c.weight[2] = ly * hx;
  c.weight[3] = ly * lx;
  c.dweight_dx[0] = -hy;
  c.dweight_dx[1] = hy;
  c.dweight_dx[2] = -ly;
  c.dweight_dx[3] = ly;
  c.dweight_dy[0] = -hx;
  c.dweight_dy[1] = -lx;
  c.dweight_dy[2] = hx;
  c.dweight_dy[3] = lx;
  return true;
}

// Channels per head, fixed at compile time where it is known (kD > 0: the loops below are fully
// unrolled and a (b, q, h)'s D outputs stay in vector registers), else read at run time (kD == 0).
template <int kD>
inline int64_t channels(int64_t runtime_d) {
  return kD > 0 ? kD : runtime_d;
}

// o[d] += w * v[d]
template <int kD, typename scalar_t>
inline void axpy(scalar_t* __restrict__ o, const scalar_t* __restrict__ v, scalar_t w, int64_t runtime_d) {
  const int64_t D = channels<kD>(runtime_d);
#pragma omp simd
  for (int64_t d = 0; d < D; ++d) o[d] += w * v[d];
}

// gv[d] += w * go[d]; returns sum_d go[d] * v[d]
template <int kD, typename scalar_t>
inline scalar_t dot_and_axpy(scalar_t* __restrict__ gv, const scalar_t* __restrict__ go,
                             const scalar_t* __restrict__ v, scalar_t w, int64_t runtime_d) {
  const int64_t D = channels<kD>(runtime_d);
  scalar_t dot = 0;
#pragma omp simd reduction(+ : dot)
  for (int64_t d = 0; d < D; ++d) {
    dot += go[d] * v[d];
    gv[d] += w * go[d];
  }
  return dot;
}

// The head widths with a specialised kernel: 32 is every model here (256 / 8 and 128 / 4 heads).
constexpr int kSpecialisedD = 32;

void check_inputs(const at::Tensor& value, const at::Tensor& spatial_shapes,
                  const at::Tensor& level_start_index, const at::Tensor& sampling_loc,
                  const at::Tensor& attn_weight) {
  TORCH_CHECK(value.dim() == 4, "value must be [B, S, H, D], got ", value.sizes());
  TORCH_CHECK(sampling_loc.dim() == 6 && sampling_loc.size(5) == 2,
              "sampling_loc must be [B, Q, H, L, P, 2], got ", sampling_loc.sizes());
  TORCH_CHECK(attn_weight.dim() == 5, "attn_weight must be [B, Q, H, L, P], got ", attn_weight.sizes());
  TORCH_CHECK(spatial_shapes.dim() == 2 && spatial_shapes.size(1) == 2 &&
                  spatial_shapes.scalar_type() == at::kLong,
              "spatial_shapes must be int64 [L, 2]");
  TORCH_CHECK(level_start_index.dim() == 1 && level_start_index.scalar_type() == at::kLong,
              "level_start_index must be int64 [L]");
  const int64_t B = value.size(0), H = value.size(2);
  const int64_t L = spatial_shapes.size(0);
  TORCH_CHECK(level_start_index.size(0) == L, "level_start_index has ", level_start_index.size(0),
              " entries for ", L, " levels");
  TORCH_CHECK(sampling_loc.size(0) == B && sampling_loc.size(2) == H && sampling_loc.size(3) == L,
              "sampling_loc ", sampling_loc.sizes(), " does not match value ", value.sizes(), " and ",
              L, " levels");
  TORCH_CHECK(attn_weight.sizes() == sampling_loc.sizes().slice(0, 5), "attn_weight ",
              attn_weight.sizes(), " does not match sampling_loc ", sampling_loc.sizes());
  TORCH_CHECK(value.scalar_type() == sampling_loc.scalar_type() &&
                  value.scalar_type() == attn_weight.scalar_type(),
              "value, sampling_loc and attn_weight must share a dtype");
  TORCH_CHECK(value.device().is_cpu() && sampling_loc.device().is_cpu() && attn_weight.device().is_cpu(),
              "the CPU kernel got tensors on ", value.device());
}

// Runs fn(begin, end) over [0, total) in chunks of `chunk` items, each chunk taken by whichever of
// torch's threads asks next. Serial inside another parallel region or on one thread.
template <typename F>
void parallel_chunks(int64_t total, int64_t chunk, const F& fn) {
  if (total <= 0) return;
  const int64_t chunks = (total + chunk - 1) / chunk;
  std::atomic<int64_t> next{0};
  const int64_t workers = std::min<int64_t>(at::get_num_threads(), chunks);
  at::parallel_for(0, workers, 1, [&](int64_t, int64_t) {
    for (int64_t c = next.fetch_add(1, std::memory_order_relaxed); c < chunks;
         c = next.fetch_add(1, std::memory_order_relaxed)) {
      fn(c * chunk, std::min(total, (c + 1) * chunk));
    }
  });
}

// (H_l, W_l, start_l) per level, validated against S.
std::vector<std::array<int64_t, 3>> level_table(const at::Tensor& spatial_shapes,
                                                const at::Tensor& level_start_index, int64_t S) {
  const auto shapes = spatial_shapes.to(at::kCPU).contiguous();
  const auto starts = level_start_index.to(at::kCPU).contiguous();
  const int64_t* sp = shapes.data_ptr<int64_t>();
  const int64_t* st = starts.data_ptr<int64_t>();
  std::vector<std::array<int64_t, 3>> table(shapes.size(0));
  for (int64_t l = 0; l < shapes.size(0); ++l) {
    table[l] = {sp[2 * l], sp[2 * l + 1], st[l]};
    TORCH_CHECK(sp[2 * l] >= 0 && sp[2 * l + 1] >= 0 && st[l] >= 0 && st[l] + sp[2 * l] * sp[2 * l + 1] <= S,
                "level ", l, " of shape (", sp[2 * l], ", ", sp[2 * l + 1], ") starting at ", st[l],
                " does not fit in value's ", S, " tokens");
  }
  return table;
}

template <int kD, typename scalar_t>
void forward_kernel(const scalar_t* value, const std::vector<std::array<int64_t, 3>>& levels,
                    const scalar_t* loc, const scalar_t* attn, scalar_t* out, int64_t B, int64_t S,
                    int64_t Q, int64_t H, int64_t runtime_d, int64_t P) {
  const int64_t D = channels<kD>(runtime_d);
  const int64_t L = static_cast<int64_t>(levels.size());
  const int64_t row = H * D;  // stride of one token in value
  // 256 (b, q, h) per chunk: about a tenth of a millisecond at DETA's sizes, so the shared counter
  // is touched a few hundred times per call.
  parallel_chunks(B * Q * H, 256, [&](int64_t begin, int64_t end) {
    Corners<scalar_t> c;
    // the (b, q, h)'s outputs accumulate here (registers when kD is fixed), then are stored once
    std::vector<scalar_t> runtime_acc(kD > 0 ? 0 : D);
    scalar_t fixed_acc[kD > 0 ? kD : 1];
    scalar_t* acc = kD > 0 ? fixed_acc : runtime_acc.data();
    for (int64_t idx = begin; idx < end; ++idx) {  // (b, q, h)
      const int64_t h = idx % H;
      const int64_t b = idx / (Q * H);
      for (int64_t d = 0; d < D; ++d) acc[d] = 0;
      const scalar_t* value_bh = value + (b * H + h) * S * D;
      const scalar_t* loc_i = loc + idx * L * P * 2;
      const scalar_t* attn_i = attn + idx * L * P;
      for (int64_t l = 0; l < L; ++l) {
        const auto& lv = levels[l];
        const scalar_t* value_l = value_bh + lv[2] * D;
        for (int64_t p = 0; p < P; ++p) {
          const int64_t lp = l * P + p;
          const scalar_t a = attn_i[lp];
          if (!bilinear_corners(loc_i[2 * lp], loc_i[2 * lp + 1], lv[0], lv[1], c)) continue;
          for (int k = 0; k < 4; ++k) {
            if (c.offset[k] < 0) continue;
            axpy<kD>(acc, value_l + c.offset[k] * D, a * c.weight[k], D);
          }
        }
      }
      scalar_t* o = out + idx * D;
      for (int64_t d = 0; d < D; ++d) o[d] = acc[d];
    }
  });
}

template <int kD, typename scalar_t>
void backward_kernel(const scalar_t* value, const std::vector<std::array<int64_t, 3>>& levels,
                     const scalar_t* loc, const scalar_t* attn, const scalar_t* grad_out,
                     scalar_t* grad_value, scalar_t* grad_loc, scalar_t* grad_attn, int64_t B, int64_t S,
                     int64_t Q, int64_t H, int64_t runtime_d, int64_t P) {
  const int64_t D = channels<kD>(runtime_d);
  const int64_t L = static_cast<int64_t>(levels.size());
  // One unit per (b, h, l): it owns grad_value of level l, head h, image b, so no two threads
  // write the same element and the result is deterministic.
  parallel_chunks(B * H * L, 1, [&](int64_t begin, int64_t end) {
    Corners<scalar_t> c;
    for (int64_t unit = begin; unit < end; ++unit) {
      const int64_t l = unit % L;
      const int64_t h = (unit / L) % H;
      const int64_t b = unit / (L * H);
      const auto& lv = levels[l];
      const int64_t level_offset = ((b * H + h) * S + lv[2]) * D;
      const scalar_t* value_l = value + level_offset;
      scalar_t* grad_value_l = grad_value + level_offset;
      const scalar_t width = static_cast<scalar_t>(lv[1]), height = static_cast<scalar_t>(lv[0]);
      for (int64_t q = 0; q < Q; ++q) {
        const int64_t idx = (b * Q + q) * H + h;  // (b, q, h)
        const scalar_t* go = grad_out + idx * D;
        // This unit reads a few values of every query, H * L * P apart: too sparse for the hardware
        // prefetcher, so ask for a later query's locations, weights and output gradient ahead.
        constexpr int64_t kAhead = 8;
        if (q + kAhead < Q) {
          const int64_t ahead = idx + kAhead * H;
          __builtin_prefetch(loc + 2 * (ahead * L * P + l * P));
          __builtin_prefetch(attn + ahead * L * P + l * P);
          __builtin_prefetch(grad_out + ahead * D);
        }
        for (int64_t p = 0; p < P; ++p) {
          const int64_t lp = idx * L * P + l * P + p;  // (b, q, h, l, p)
          const scalar_t a = attn[lp];
          scalar_t g_attn = 0, g_x = 0, g_y = 0;
          if (bilinear_corners(loc[2 * lp], loc[2 * lp + 1], lv[0], lv[1], c)) {
            for (int k = 0; k < 4; ++k) {
              if (c.offset[k] < 0) continue;
              // <grad_out, value at this corner>, and the corner's share of grad_out into grad_value
              const scalar_t dot = dot_and_axpy<kD>(grad_value_l + c.offset[k] * D, go,
                                                    value_l + c.offset[k] * D, a * c.weight[k], D);
              g_attn += c.weight[k] * dot;
              g_x += c.dweight_dx[k] * dot;
              g_y += c.dweight_dy[k] * dot;
            }
          }
          grad_attn[lp] = g_attn;
          grad_loc[2 * lp] = a * g_x * width;  // d x / d loc_x = W_l
          grad_loc[2 * lp + 1] = a * g_y * height;
        }
      }
    }
  });
}

at::Tensor ms_deform_attn_forward_cpu(const at::Tensor& value, const at::Tensor& spatial_shapes,
                                      const at::Tensor& level_start_index, const at::Tensor& sampling_loc,
                                      const at::Tensor& attn_weight) {
  check_inputs(value, spatial_shapes, level_start_index, sampling_loc, attn_weight);
  const auto v = value.permute({0, 2, 1, 3}).contiguous();
  const auto loc = sampling_loc.contiguous();
  const auto a = attn_weight.contiguous();
  const int64_t B = value.size(0), S = value.size(1), H = value.size(2), D = value.size(3);
  const int64_t Q = loc.size(1), P = loc.size(4);
  const auto levels = level_table(spatial_shapes, level_start_index, S);
  auto out = at::empty({B, Q, H * D}, v.options());
  AT_DISPATCH_FLOATING_TYPES(v.scalar_type(), "ms_deform_attn_forward_cpu", [&] {
    const auto run = [&](auto kernel) {
      kernel(v.const_data_ptr<scalar_t>(), levels, loc.const_data_ptr<scalar_t>(), a.const_data_ptr<scalar_t>(),
             out.mutable_data_ptr<scalar_t>(), B, S, Q, H, D, P);
    };
    if (D == kSpecialisedD) {
      run(forward_kernel<kSpecialisedD, scalar_t>);
    } else {
      run(forward_kernel<0, scalar_t>);
    }
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> ms_deform_attn_backward_cpu(
    const at::Tensor& value, const at::Tensor& spatial_shapes, const at::Tensor& level_start_index,
    const at::Tensor& sampling_loc, const at::Tensor& attn_weight, const at::Tensor& grad_output) {
  check_inputs(value, spatial_shapes, level_start_index, sampling_loc, attn_weight);
  const auto v = value.permute({0, 2, 1, 3}).contiguous();
  const auto loc = sampling_loc.contiguous();
  const auto a = attn_weight.contiguous();
  const int64_t B = value.size(0), S = value.size(1), H = value.size(2), D = value.size(3);
  const int64_t Q = loc.size(1), P = loc.size(4);
  TORCH_CHECK(grad_output.numel() == B * Q * H * D, "grad_output has ", grad_output.numel(),
              " elements, expected ", B * Q * H * D);
  const auto go = grad_output.to(v.scalar_type()).contiguous();
  const auto levels = level_table(spatial_shapes, level_start_index, S);
  // Tokens outside every level (none when the levels tile S) keep a zero gradient.
  auto grad_value = at::zeros_like(v);
  auto grad_loc = at::empty_like(loc);
  auto grad_attn = at::empty_like(a);
  AT_DISPATCH_FLOATING_TYPES(v.scalar_type(), "ms_deform_attn_backward_cpu", [&] {
    const auto run = [&](auto kernel) {
      kernel(v.const_data_ptr<scalar_t>(), levels, loc.const_data_ptr<scalar_t>(), a.const_data_ptr<scalar_t>(),
             go.const_data_ptr<scalar_t>(), grad_value.mutable_data_ptr<scalar_t>(),
             grad_loc.mutable_data_ptr<scalar_t>(), grad_attn.mutable_data_ptr<scalar_t>(), B, S, Q, H, D, P);
    };
    if (D == kSpecialisedD) {
      run(backward_kernel<kSpecialisedD, scalar_t>);
    } else {
      run(backward_kernel<0, scalar_t>);
    }
  });
  return {grad_value.permute({0, 2, 1, 3}).contiguous(), grad_loc, grad_attn};
}

}  // namespace

TORCH_LIBRARY(detrlab, m) {
  m.def(
      "ms_deform_attn(Tensor value, Tensor spatial_shapes, Tensor level_start_index, "
      "Tensor sampling_loc, Tensor attn_weight) -> Tensor");
  m.def(
      "ms_deform_attn_backward(Tensor value, Tensor spatial_shapes, Tensor level_start_index, "
      "Tensor sampling_loc, Tensor attn_weight, Tensor grad_output) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(detrlab, CPU, m) {
  m.impl("ms_deform_attn", &ms_deform_attn_forward_cpu);
  m.impl("ms_deform_attn_backward", &ms_deform_attn_backward_cpu);
}

}  // namespace detrlab
