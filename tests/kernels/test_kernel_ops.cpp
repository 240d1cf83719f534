// The kernels' table-driven tests, after ggml's test-backend-ops: one table (kernel_ops() at the
// bottom), one row per op with its shapes, dtypes, tolerances, an input builder and its paths, and
// three parameterised suites over the rows in which every op x shape x dtype (x device) is its own
// test case:
//
//   KernelOps/Backend.MatchesReference/<op>_<dtype>_<shape>[_<variant>]
//       the CUDA kernel against the plain-ATen reference, forward and backward. Skipped without a
//       CUDA device, and without CUDA kernels in the build for the ops that need them.
//   KernelOps/Gradient.MatchesAutograd/<op>_<dtype>_<device>_<shape>[_<variant>]
//       the op's differentiable entry (its autograd Function with the explicit backward) against
//       ATen's autograd through the reference: the forward outputs and the gradient of every
//       differentiable input, in float32 and float64, on the CPU (the explicit backward references)
//       and on CUDA (the backward kernels; skipped as above).
//   KernelOps/FiniteDifferences.MatchExplicitBackward/<op>_<shape>[_<variant>]
//       the differentiable entry's gradients against float64 central differences of the reference,
//       on one small shape on the CPU.
//
// Conventions. A builder returns named tensors (Inputs), built on the CPU from a seeded generator
// and moved to the device, so CPU and CUDA cases see the same numbers; views (transposes, slices)
// are taken after the move. A path maps Inputs to named outputs; a forward output `y` is contracted
// with the input `grad_y` (its cotangent) to make the loss the gradient suites differentiate, and
// the gradient of input `x` is named `grad_x` in every backward path. Tolerances are per dtype;
// atol = rtol = 0 means bit for bit; `adjust` widens one output's tolerance where it sums over a
// dimension of the shape.
//
// Adding an op: write its builder and paths in a section below and add its row to kernel_ops().
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <c10/core/ScalarType.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <map>
#include <optional>
#include <ostream>
#include <string>
#include <utility>
#include <vector>

#include "grpo/kernels/axpy.h"
#include "grpo/kernels/fp8_gemm.h"
#include "grpo/kernels/fp8_quant.h"
#include "grpo/kernels/moe_dispatch.h"
#include "grpo/kernels/rms_norm.h"
#include "grpo/kernels/rope.h"
#include "grpo/kernels/swiglu.h"
#include "grpo/kernels/token_logprobs.h"
#include "grpo/version.h"
#include "kernels/kernel_test_util.h"

namespace grpo::kernels {
namespace {

// ---------------------------------------------------------------------------------------------
// The harness.

struct Shape {
  std::vector<int64_t> dims;  // the op's sizes; its builder says what each one is
  std::string variant{};      // a variant of the op on these sizes (layout, tiling, ...); "" for none
};

// The tensors of one case, by name.
struct Inputs {
  Shape shape;
  at::ScalarType dtype = at::kFloat;
  std::map<std::string, at::Tensor> tensors;

  const at::Tensor& operator()(const std::string& name) const {
    const auto it = tensors.find(name);
    TORCH_CHECK(it != tensors.end(), "kernel op inputs: no tensor named '", name, "'");
    return it->second;
  }
  bool has(const std::string& name) const { return tensors.count(name) > 0; }
  int64_t dim(size_t i) const { return shape.dims.at(i); }
};

using Outputs = std::vector<std::pair<std::string, at::Tensor>>;
using Path = std::function<Outputs(const Inputs&)>;
using Build = std::function<Inputs(const Shape&, at::ScalarType, at::Device)>;

struct Tol {
  double atol = 0;  // |got - want| <= atol + rtol |want| elementwise; atol = rtol = 0: bit for bit
  double rtol = 0;
  bool atol_of_max = false;  // atol is relative to max |want| (a norm-wise bound, for GEMMs)
};
using Tols = std::map<at::ScalarType, Tol>;

enum class Mode { backend, gradient };
// One output's tolerance in place of the row's `base` (an output that sums over a dimension).
using Adjust = std::function<Tol(Mode, const std::string& output, const Inputs&, Tol base)>;

// One row of the table.
struct KernelOp {
  std::string name;
  std::vector<Shape> shapes;
  std::vector<at::ScalarType> dtypes;  // backend mode
  Tols forward_tol;                    // backend mode, per dtype
  Tols backward_tol = {};
  Build build;
  Path kernel;     // the CUDA kernel's path (run on CUDA inputs)
  Path reference;  // the plain-ATen reference
  Path kernel_backward = {};
  Path reference_backward = {};
  Adjust adjust = {};
  bool needs_cuda_kernels = true;  // false: the path exists (and must agree) in a build without them
  // Gradient mode (rows with a differentiable entry).
  Path differentiable = {};      // the autograd Function with the explicit backward
  Path autograd_reference = {};  // differentiated by ATen's autograd; `reference` when empty
  std::vector<std::string> grad_inputs = {};
  Tols gradient_tol = {};  // per dtype of gradient_dtypes
  std::vector<at::ScalarType> gradient_dtypes = {at::kFloat, at::kDouble};
  std::optional<Shape> fd_shape = {};  // finite differences in float64 on the CPU on this shape
  double fd_step = 1e-6;
  Tol fd_tol = {};
};

const std::vector<KernelOp>& kernel_ops();

struct Case {
  const KernelOp* op = nullptr;
  Shape shape;
  at::ScalarType dtype = at::kFloat;
  at::Device device = at::kCPU;
};

std::string dtype_name(at::ScalarType dtype) {
  switch (dtype) {
    case at::kFloat: return "float32";
    case at::kDouble: return "float64";
    case at::kHalf: return "float16";
    case at::kBFloat16: return "bfloat16";
    default: return c10::toString(dtype);
  }
}

// Test names may hold letters, digits and underscores only.
std::string sanitize(std::string s) {
  for (auto& ch : s) {
    if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
  }
  return s;
}

std::string shape_name(const Shape& shape) {
  std::string s = shape.dims.empty() ? "scalar" : "";
  for (size_t i = 0; i < shape.dims.size(); ++i) {
    if (i > 0) s += 'x';
    s += std::to_string(shape.dims[i]);
  }
  if (!shape.variant.empty()) s += "_" + shape.variant;
  return sanitize(s);
}

enum class NameParts { dtype, dtype_device, none };

std::string case_name(const Case& c, NameParts parts) {
  std::string name = c.op->name + "_";
  if (parts != NameParts::none) name += dtype_name(c.dtype) + "_";
  if (parts == NameParts::dtype_device) name += std::string(c.device.is_cuda() ? "cuda" : "cpu") + "_";
  return name + shape_name(c.shape);
}

void PrintTo(const Case& c, std::ostream* os) { *os << case_name(c, NameParts::dtype_device); }

Tol tol_of(const Tols& tols, at::ScalarType dtype, const std::string& op) {
  const auto it = tols.find(dtype);
  TORCH_CHECK(it != tols.end(), op, ": the table gives no tolerance for ", dtype_name(dtype));
  return it->second;
}

// Bit for bit: the same shape, dtype and bytes (fp8 codes compared as bytes, so -0 != +0).
void expect_bits_equal(const at::Tensor& got, const at::Tensor& want, const std::string& what) {
  ASSERT_TRUE(got.defined() && want.defined()) << what << ": undefined";
  ASSERT_EQ(got.sizes(), want.sizes()) << what;
  ASSERT_EQ(got.scalar_type(), want.scalar_type()) << what;
  auto host = [](const at::Tensor& t) {
    auto c = t.detach().to(at::kCPU).contiguous();
    return c10::isFloat8Type(c.scalar_type()) ? c.view(at::kByte) : c;
  };
  const auto g = host(got), w = host(want);
  if (torch::equal(g, w)) return;
  const auto differ = g.ne(w);
  const auto gd = got.detach().to(at::kCPU, at::kDouble), wd = want.detach().to(at::kCPU, at::kDouble);
  ADD_FAILURE() << what << ": not bit for bit: " << differ.sum().item<int64_t>() << " of " << g.numel()
                << " elements differ, max abs err " << (gd - wd).abs().max().item<double>();
}

void expect_tensor(const at::Tensor& got, const at::Tensor& want, Tol tol, const std::string& what) {
  if (tol.atol == 0 && tol.rtol == 0 && !tol.atol_of_max) {
    expect_bits_equal(got, want, what);
    return;
  }
  double atol = tol.atol;
  if (tol.atol_of_max && want.numel() > 0) atol *= want.detach().abs().max().to(at::kDouble).item<double>();
  test::expect_close(got, want, atol, tol.rtol, what);
}

void expect_outputs(const Outputs& got, const Outputs& want, const KernelOp& op, Mode mode, const Inputs& in, Tol base,
                    const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what << ": the paths return different numbers of outputs";
  for (size_t i = 0; i < got.size(); ++i) {
    const auto& name = want[i].first;
    ASSERT_EQ(got[i].first, name) << what;
    const Tol tol = op.adjust ? op.adjust(mode, name, in, base) : base;
    expect_tensor(got[i].second, want[i].second, tol, what + " " + name);
  }
}

// sum over outputs y with a cotangent grad_y of <y, grad_y>, in float64; undefined when none has one.
at::Tensor contract(const Outputs& outputs, const Inputs& in) {
  at::Tensor loss;
  for (const auto& [name, y] : outputs) {
    if (!in.has("grad_" + name)) continue;
    const auto part = (y * in("grad_" + name).to(y.scalar_type())).sum().to(at::kDouble);
    loss = loss.defined() ? loss + part : part;
  }
  return loss;
}

struct Differentiated {
  Outputs forward;          // detached
  Outputs grads;            // grad_<input> for each differentiable input (zeros where no gradient flowed)
  bool contracted = false;  // some output had a cotangent (else the gradients are zeros by construction)
};

// Runs `path` with the inputs named in `wrt` as leaves that require grad (same storage and strides)
// and back-propagates the contraction of its outputs with their cotangents.
Differentiated differentiate(const Path& path, const Inputs& in, const std::vector<std::string>& wrt) {
  Inputs leaves = in;
  for (const auto& name : wrt) leaves.tensors[name] = in(name).detach().requires_grad_(true);
  const Outputs outputs = path(leaves);
  const auto loss = contract(outputs, in);
  if (loss.defined() && loss.requires_grad()) loss.backward();
  Differentiated d;
  d.contracted = loss.defined();
  for (const auto& [name, y] : outputs) d.forward.emplace_back(name, y.detach());
  for (const auto& name : wrt) {
    const auto& leaf = leaves(name);
    d.grads.emplace_back("grad_" + name, leaf.grad().defined() ? leaf.grad() : at::zeros_like(leaf));
  }
  return d;
}

// GRPO_KERNEL_OPS_BACKEND_ON_CPU=1 runs the backend suite on CPU tensors, where the dispatch takes
// the reference: a check of the table and its builders and paths on a machine without a GPU, not of
// the kernels.
bool backend_on_cpu() {
  const char* value = std::getenv("GRPO_KERNEL_OPS_BACKEND_ON_CPU");
  return value != nullptr && std::string(value) == "1";
}

// Why a case on `device` cannot run here, or "".
std::string skip_reason(const KernelOp& op, at::Device device) {
  if (!device.is_cuda()) return "";
  if (!torch::cuda::is_available()) return "no CUDA device";
  if (op.needs_cuda_kernels && !GRPO_WITH_CUDA_KERNELS) return "built without CUDA kernels";
  return "";
}

class Backend : public ::testing::TestWithParam<Case> {};
class Gradient : public ::testing::TestWithParam<Case> {};
class FiniteDifferences : public ::testing::TestWithParam<Case> {};

TEST_P(Backend, MatchesReference) {
  const auto& c = GetParam();
  const auto& op = *c.op;
  const at::Device device = backend_on_cpu() ? at::kCPU : at::kCUDA;
  if (const auto why = skip_reason(op, device); !why.empty()) GTEST_SKIP() << why;
  torch::manual_seed(0);
  const Inputs in = op.build(c.shape, c.dtype, device);
  const auto what = case_name(c, NameParts::dtype);
  expect_outputs(op.kernel(in), op.reference(in), op, Mode::backend, in, tol_of(op.forward_tol, c.dtype, op.name),
                 "forward " + what);
  if (op.kernel_backward) {
    expect_outputs(op.kernel_backward(in), op.reference_backward(in), op, Mode::backend, in,
                   tol_of(op.backward_tol, c.dtype, op.name), "backward " + what);
  }
}

TEST_P(Gradient, MatchesAutograd) {
  const auto& c = GetParam();
  const auto& op = *c.op;
  if (const auto why = skip_reason(op, c.device); !why.empty()) GTEST_SKIP() << why;
  torch::manual_seed(0);
  const Inputs in = op.build(c.shape, c.dtype, c.device);
  const auto entry = differentiate(op.differentiable, in, op.grad_inputs);
  const auto aten = differentiate(op.autograd_reference ? op.autograd_reference : op.reference, in, op.grad_inputs);
  ASSERT_TRUE(entry.contracted && aten.contracted) << "no output y has a cotangent grad_y among the inputs";
  const Tol tol = tol_of(op.gradient_tol, c.dtype, op.name);
  const auto what = case_name(c, NameParts::dtype_device);
  expect_outputs(entry.forward, aten.forward, op, Mode::gradient, in, tol, "forward " + what);
  expect_outputs(entry.grads, aten.grads, op, Mode::gradient, in, tol, "backward " + what);
}

TEST_P(FiniteDifferences, MatchExplicitBackward) {
  const auto& c = GetParam();
  const auto& op = *c.op;
  torch::manual_seed(0);
  const Inputs in = op.build(c.shape, at::kDouble, at::kCPU);
  const auto entry = differentiate(op.differentiable, in, op.grad_inputs);
  ASSERT_TRUE(entry.contracted) << "no output y has a cotangent grad_y among the inputs";
  const Path& reference = op.autograd_reference ? op.autograd_reference : op.reference;
  for (size_t i = 0; i < op.grad_inputs.size(); ++i) {
    const auto& name = op.grad_inputs[i];
    const auto loss = [&](const at::Tensor& value) {
      Inputs moved = in;
      moved.tensors[name] = value;
      return contract(reference(moved), in).item<double>();
    };
    const auto numeric = test::finite_differences(loss, in(name), op.fd_step);
    expect_tensor(entry.grads[i].second, numeric.view(in(name).sizes()), op.fd_tol,
                  case_name(c, NameParts::none) + " grad_" + name);
  }
}

std::vector<Case> backend_cases() {
  std::vector<Case> cases;
  for (const auto& op : kernel_ops()) {
    for (auto dtype : op.dtypes) {
      for (const auto& shape : op.shapes) cases.push_back({&op, shape, dtype, at::kCUDA});
    }
  }
  return cases;
}

std::vector<Case> gradient_cases() {
  std::vector<Case> cases;
  for (const auto& op : kernel_ops()) {
    if (!op.differentiable) continue;
    for (auto device : {at::Device(at::kCPU), at::Device(at::kCUDA)}) {
      for (auto dtype : op.gradient_dtypes) {
        for (const auto& shape : op.shapes) cases.push_back({&op, shape, dtype, device});
      }
    }
  }
  return cases;
}

std::vector<Case> finite_difference_cases() {
  std::vector<Case> cases;
  for (const auto& op : kernel_ops()) {
    if (op.differentiable && op.fd_shape) cases.push_back({&op, *op.fd_shape, at::kDouble, at::kCPU});
  }
  return cases;
}

// ---------------------------------------------------------------------------------------------
// Builders and paths, one section per op.

// Standard normal numbers on the CPU (float64 for double, else float32 rounded to dtype).
at::Tensor randn(at::IntArrayRef dims, at::ScalarType dtype) {
  return torch::randn(dims, dtype == at::kDouble ? at::kDouble : at::kFloat).to(dtype);
}

bool has_variant(const Shape& s, const std::string& part) { return s.variant.find(part) != std::string::npos; }

// ---- axpy: dims = x's shape; variant "transposed": x is a transposed [C, R] tensor (2-D).
constexpr double kAxpyAlpha = -1.5;

Inputs build_axpy(const Shape& s, at::ScalarType dtype, at::Device device) {
  Inputs in{s, dtype, {}};
  in.tensors["x"] = has_variant(s, "transposed") ? randn({s.dims[1], s.dims[0]}, dtype).to(device).t()
                                                 : randn(s.dims, dtype).to(device);
  in.tensors["y"] = randn(s.dims, dtype).to(device);
  return in;
}

// ---- fp8_quant: dims {R, C}; variant "<tiles>[_ue8m0][_transposed]", tiles 1x128 or 128x128.
Inputs build_fp8_quant(const Shape& s, at::ScalarType dtype, at::Device device) {
  Inputs in{s, dtype, {}};
  const int64_t rows = s.dims[0], cols = s.dims[1];
  if (has_variant(s, "transposed")) {
    in.tensors["x"] = randn({cols, rows}, at::kFloat).to(dtype).to(device).t();
  } else {
    // Rows of very different magnitudes, so the tiles' scales differ.
    const auto x = torch::randn({rows, cols}) * torch::exp(3 * torch::randn({rows, 1}));
    in.tensors["x"] = x.to(dtype).to(device);
  }
  return in;
}

int64_t fp8_block_rows(const Shape& s) { return s.variant.rfind("128x128", 0) == 0 ? kFp8Block : 1; }

Outputs fp8_quantized(const Fp8Tensor& q) { return {{"data", q.data}, {"scale", q.scale}}; }

// ---- fp8_gemm: dims {M, N, K}; x [M, K] and w [N, K] (weights, * 0.05) quantised on the device.
// Variant "1x128_128x128": a = x in 1x128 tiles, b = w in 128x128 blocks (Fprop); "1x128_1x128":
// a = w, b = x, both in 1x128 tiles (the Wgrad pairing).
Inputs build_fp8_gemm(const Shape& s, at::ScalarType dtype, at::Device device) {
  Inputs in{s, dtype, {}};
  const auto x = randn({s.dims[0], s.dims[2]}, dtype).to(device);
  const auto w = (randn({s.dims[1], s.dims[2]}, dtype) * 0.05).to(device);
  const bool wgrad = s.variant == "1x128_1x128";
  const auto a = fp8_quantize_1x128(wgrad ? w : x);
  const auto b = wgrad ? fp8_quantize_1x128(x) : fp8_quantize_128x128(w);
  in.tensors = {{"a_data", a.data}, {"a_scale", a.scale}, {"b_data", b.data}, {"b_scale", b.scale}};
  return in;
}

std::pair<Fp8Tensor, Fp8Tensor> fp8_operands(const Inputs& in) {
  const int64_t b_rows = in.shape.variant == "1x128_1x128" ? 1 : kFp8Block;
  return {Fp8Tensor{in("a_data"), in("a_scale"), 1, kFp8Block},
          Fp8Tensor{in("b_data"), in("b_scale"), b_rows, kFp8Block}};
}

// ---- MoE dispatch: dims {N, K, E, A, D, F}: N tokens, each picks K distinct experts among the first
// A of E (the other experts stay empty), width D, expert output width F.
void add_routing(Inputs& in, at::Device device) {
  const int64_t tokens = in.dim(0), top_k = in.dim(1), experts = in.dim(2), active = in.dim(3);
  auto index = torch::empty({tokens, top_k}, torch::kLong);
  for (int64_t n = 0; n < tokens; ++n) index[n] = torch::randperm(active, torch::kLong).narrow(0, 0, top_k);
  const auto [order, offsets] = test::sort_pairs(index, experts);
  in.tensors["order"] = order.to(device);
  in.tensors["offsets"] = offsets;  // CPU
}

int64_t moe_pairs(const Inputs& in) { return in.dim(0) * in.dim(1); }

// moe_permute: x [N, D] -> xs [M, D].
Inputs build_moe_permute(const Shape& s, at::ScalarType dtype, at::Device device) {
  Inputs in{s, dtype, {}};
  add_routing(in, device);
  in.tensors["x"] = randn({in.dim(0), in.dim(4)}, dtype).to(device);
  in.tensors["grad_xs"] = randn({moe_pairs(in), in.dim(4)}, dtype).to(device);
  return in;
}

// moe_unpermute: ys [M, D], weight [N, K] (float32 combine weights; float64 with float64 rows) -> y [N, D].
Inputs build_moe_unpermute(const Shape& s, at::ScalarType dtype, at::Device device) {
  Inputs in{s, dtype, {}};
  add_routing(in, device);
  in.tensors["ys"] = randn({moe_pairs(in), in.dim(4)}, dtype).to(device);
  in.tensors["weight"] =
      torch::rand({in.dim(0), in.dim(1)}, dtype == at::kDouble ? at::kDouble : at::kFloat).to(device);
  in.tensors["grad_y"] = randn({in.dim(0), in.dim(4)}, dtype).to(device);
  return in;
}

// grouped_linear: xs [M, D], weight [E, F, D] (/ sqrt(D)) -> out [M, F].
Inputs build_grouped_linear(const Shape& s, at::ScalarType dtype, at::Device device) {
  Inputs in{s, dtype, {}};
  add_routing(in, device);
  const int64_t dim = in.dim(4), width = in.dim(5);
  in.tensors["xs"] = randn({moe_pairs(in), dim}, dtype).to(device);
  in.tensors["weight"] = (randn({in.dim(2), width, dim}, dtype) / std::sqrt(static_cast<double>(dim))).to(device);
  in.tensors["grad_out"] = randn({moe_pairs(in), width}, dtype).to(device);
  return in;
}

// ---- rms_norm: dims = x's shape [..., H]; variant "transposed": x is a transposed [H, R] tensor.
constexpr double kRmsEps = 1e-6;

Inputs build_rms_norm(const Shape& s, at::ScalarType dtype, at::Device device) {
  Inputs in{s, dtype, {}};
  in.tensors["x"] = has_variant(s, "transposed") ? randn({s.dims[1], s.dims[0]}, dtype).to(device).t()
                                                 : randn(s.dims, dtype).to(device);
  in.tensors["weight"] = randn({s.dims.back()}, dtype).to(device);
  in.tensors["grad_y"] = randn(s.dims, dtype).to(device);
  return in;
}

// grad_weight sums over the rows: its atol grows with their number (the non-contiguous case keeps
// the 10x it always had).
Tol rms_norm_adjust(Mode mode, const std::string& output, const Inputs& in, Tol base) {
  if (output != "grad_weight") return base;
  if (mode == Mode::backend && has_variant(in.shape, "transposed")) return {base.atol * 10, base.rtol};
  const int64_t h = in.shape.dims.back();
  const double rows = static_cast<double>(in("x").numel() / std::max<int64_t>(h, 1));
  return {base.atol * std::sqrt(rows + 1) * 4, base.rtol};
}

// ---- rope: dims {B, H, T, R}; variant "<layout>[_table1][_slice]": layout rotate_half or
// interleaved, table1: cos/sin [1, T, R] broadcast over B (else [B, T, R]), slice: x is a
// non-contiguous slice as MLA's q_rope ([B, T, H, R + 8] viewed as [B, H, T, R]).
RopeLayout rope_layout(const Shape& s) {
  return has_variant(s, "interleaved") ? RopeLayout::interleaved : RopeLayout::rotate_half;
}

Inputs build_rope(const Shape& s, at::ScalarType dtype, at::Device device) {
  Inputs in{s, dtype, {}};
  const int64_t b = s.dims[0], h = s.dims[1], t = s.dims[2], r = s.dims[3];
  auto [cos, sin] = test::rope_tables(has_variant(s, "table1") ? 1 : b, t, r, dtype);
  in.tensors["cos"] = cos.to(device);
  in.tensors["sin"] = sin.to(device);
  in.tensors["x"] = has_variant(s, "slice") ? randn({b, t, h, r + 8}, dtype).to(device).transpose(1, 2).narrow(-1, 8, r)
                                            : randn(s.dims, dtype).to(device);
  in.tensors["grad_y"] = randn(s.dims, dtype).to(device);
  return in;
}

// Both layouts of each shape; table1: the tables broadcast over B.
std::vector<Shape> rope_shapes(const std::vector<std::pair<std::vector<int64_t>, bool>>& cases) {
  std::vector<Shape> shapes;
  for (const auto& [dims, table1] : cases) {
    for (const std::string layout : {"rotate_half", "interleaved"}) {
      shapes.push_back({dims, layout + (table1 ? "_table1" : "")});
    }
  }
  return shapes;
}

// ---- swiglu: dims = gate's and up's shape; variant "transposed": gate is a transposed [C, R] tensor.
Inputs build_swiglu(const Shape& s, at::ScalarType dtype, at::Device device) {
  Inputs in{s, dtype, {}};
  in.tensors["gate"] = has_variant(s, "transposed") ? (randn({s.dims[1], s.dims[0]}, dtype) * 3).to(device).t()
                                                    : (randn(s.dims, dtype) * 3).to(device);
  in.tensors["up"] = randn(s.dims, dtype).to(device);
  in.tensors["grad_y"] = randn(s.dims, dtype).to(device);
  return in;
}

// ---- token_logprobs: dims {N, D, V, chunk}; variant "T<temperature>". hidden [N, D] (scaled so the
// logits spread over tens of units), weight [V, D], targets [N] (the first in the last chunk),
// grad_logprobs [N] (float32 row weights of the loss).
double temperature_of(const Shape& s) { return std::stod(s.variant.substr(1)); }

Inputs build_token_logprobs(const Shape& s, at::ScalarType dtype, at::Device device) {
  Inputs in{s, dtype, {}};
  const int64_t rows = s.dims[0], width = s.dims[1], vocab = s.dims[2];
  const auto compute = dtype == at::kDouble ? at::kDouble : at::kFloat;
  in.tensors["hidden"] = (torch::randn({rows, width}, compute) * 2.0 / std::sqrt(width / 8.0)).to(dtype).to(device);
  in.tensors["weight"] = randn({vocab, width}, dtype).to(device);
  auto targets = torch::randint(vocab, {rows}, torch::kLong);
  if (rows > 0) targets[0] = vocab - 1;
  in.tensors["targets"] = targets.to(device);
  in.tensors["grad_logprobs"] = torch::randn({rows}).to(device);
  return in;
}

TokenLogprobsOptions logprobs_options(const Inputs& in, bool kernels = true) {
  return {.temperature = temperature_of(in.shape),
          .chunk_size = in.dim(3),
          .with_entropy = true,
          .use_cuda_kernels = kernels};
}

using LogprobsFn = TokenLogprobsResult (*)(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                           const TokenLogprobsOptions&);

Outputs logprobs_forward(LogprobsFn fn, const Inputs& in, bool kernels = true) {
  const auto r = fn(in("hidden"), in("weight"), in("targets"), logprobs_options(in, kernels));
  return {{"logprobs", r.logprobs}, {"entropy", r.entropy}};
}

// The gradients of sum(grad_logprobs * logprobs), by the path's own autograd.
Outputs logprobs_backward(LogprobsFn fn, const Inputs& in, bool kernels = true) {
  const auto d = differentiate([&](const Inputs& leaves) { return logprobs_forward(fn, leaves, kernels); }, in,
                               {"hidden", "weight"});
  return d.grads;
}

// ---------------------------------------------------------------------------------------------
// The table: ops x shapes x dtypes x tolerances.

Tols same_for(std::initializer_list<at::ScalarType> dtypes, Tol tol) {
  Tols tols;
  for (auto dtype : dtypes) tols[dtype] = tol;
  return tols;
}

const std::vector<KernelOp>& kernel_ops() {
  using at::kBFloat16, at::kDouble, at::kFloat, at::kHalf;
  static const Tol exact{};
  // The MoE cases: {N, K, E, A, D, F}.
  static const std::vector<Shape> moe_shapes = {{{0, 2, 4, 4, 16, 8}},      {{1, 1, 1, 1, 1, 1}},
                                                {{7, 2, 9, 3, 17, 5}},      {{33, 3, 8, 8, 64, 32}},
                                                {{130, 8, 16, 11, 96, 40}}, {{5, 2, 6, 2, 129, 70}}};
  static const Tols moe_tol = {{kFloat, {1e-5, 1e-5}}, {kBFloat16, {2e-2, 2e-2}}, {kHalf, {2e-3, 2e-3}}};
  static const Tols moe_gradient_tol = {{kFloat, {1e-5, 1e-5}}, {kDouble, {1e-12, 1e-12}}};
  static const std::vector<Shape> logprobs_shapes = {
      {{5, 8, 37, 10}, "T1"},          {{6, 4, 13, 1}, "T0.7"}, {{4, 16, 29, 100}, "T1"},
      {{1, 8, 50, 16}, "T0.7"},        {{7, 8, 1, 4}, "T1"},    {{33, 24, 300, 64}, "T0.7"},
      {{257, 64, 1000, 300}, "T1"},  // more columns than threads per block in a chunk
      {{130, 128, 5003, 4096}, "T0.7"}};
  // cuBLAS may use TF32 or reorder sums: float32 GEMM-level differences.
  static const Tols logprobs_forward_tol = same_for({kFloat, kBFloat16, kHalf}, {1e-4, 1e-4});
  static const Tols logprobs_backward_tol = {{kFloat, {1e-4, 1e-4}}, {kBFloat16, {1e-2, 1e-2}}, {kHalf, {1e-2, 1e-2}}};
  static const std::vector<Shape> fp8_gemm_shapes = [] {
    // K / 128 odd (3, 5), not a multiple of 4 (6), and K not a multiple of 128 (200, padded).
    std::vector<Shape> shapes;
    for (int64_t k : {384, 640, 768, 2048, 200}) {
      for (auto [m, n] : {std::pair<int64_t, int64_t>{256, 512}, {96, 256}, {130, 384}}) {
        for (const char* pairing : {"1x128_128x128", "1x128_1x128"}) shapes.push_back({{m, n, k}, pairing});
      }
    }
    return shapes;
  }();
  static const std::vector<Shape> fp8_quant_shapes = [] {
    std::vector<Shape> shapes;
    for (auto [r, c] : {std::pair<int64_t, int64_t>{1, 1}, {3, 200}, {130, 257}, {256, 384}, {1000, 129}}) {
      for (const char* tiles : {"1x128", "1x128_ue8m0", "128x128", "128x128_ue8m0"}) shapes.push_back({{r, c}, tiles});
    }
    shapes.push_back({{300, 256}, "1x128_transposed"});
    return shapes;
  }();

  static const std::vector<KernelOp> ops = {
      {
          .name = "axpy",
          .shapes = {{{0}}, {{1}}, {{7}}, {{1000, 3}}, {{3, 1 << 20}}, {{64, 64}, "transposed"}},
          .dtypes = {kFloat, kDouble, kHalf, kBFloat16},
          .forward_tol = same_for({kFloat, kDouble, kHalf, kBFloat16}, exact),  // both round once
          .build = build_axpy,
          .kernel = [](const Inputs& in) -> Outputs {
            return {{"out", axpy(kAxpyAlpha, in("x"), in("y"))}};
          },
          .reference = [](const Inputs& in) -> Outputs {
            return {{"out", axpy_reference(kAxpyAlpha, in("x"), in("y"))}};
          },
      },
      {
          .name = "fp8_quant",
          .shapes = fp8_quant_shapes,
          .dtypes = {kFloat, kBFloat16, kHalf},
          .forward_tol = same_for({kFloat, kBFloat16, kHalf}, exact),  // codes and scales bit for bit
          .build = build_fp8_quant,
          .kernel = [](const Inputs& in) -> Outputs {
            return fp8_quantized(
                fp8_quantize(in("x"), fp8_block_rows(in.shape), kFp8Block, has_variant(in.shape, "ue8m0")));
          },
          .reference = [](const Inputs& in) -> Outputs {
            return fp8_quantized(fp8_quantize_reference(in("x").cpu(), fp8_block_rows(in.shape), kFp8Block,
                                                        has_variant(in.shape, "ue8m0")));
          },
      },
      {
          .name = "fp8_gemm",
          .shapes = fp8_gemm_shapes,
          .dtypes = {kFloat},
          .forward_tol = {{kFloat, {.atol = 1e-2, .rtol = 0, .atol_of_max = true}}},
          .build = build_fp8_gemm,
          .kernel = [](const Inputs& in) -> Outputs {
            const auto [a, b] = fp8_operands(in);
            return {{"out", fp8_gemm(a, b, at::kFloat, Fp8GemmBackend::automatic)}};
          },
          .reference = [](const Inputs& in) -> Outputs {
            const auto [a, b] = fp8_operands(in);
            return {{"out", fp8_gemm_reference(a, b)}};
          },
          .needs_cuda_kernels = false,  // cuBLASLt through ATen; the reference where it cannot run
      },
      {
          .name = "moe_permute",
          .shapes = moe_shapes,
          .dtypes = {kFloat, kBFloat16, kHalf},
          .forward_tol = same_for({kFloat, kBFloat16, kHalf}, exact),  // a gather
          .backward_tol = moe_tol,
          .build = build_moe_permute,
          .kernel = [](const Inputs& in) -> Outputs {
            return {{"xs", moe_permute_forward(in("x"), in("order"), in.dim(1))}};
          },
          .reference = [](const Inputs& in) -> Outputs {
            return {{"xs", moe_permute_reference(in("x"), in("order"), in.dim(1))}};
          },
          .kernel_backward = [](const Inputs& in) -> Outputs {
            return {{"grad_x", moe_permute_backward(in("grad_xs"), in("order"), in.dim(1), in.dim(0))}};
          },
          .reference_backward = [](const Inputs& in) -> Outputs {
            return {{"grad_x", moe_permute_backward_reference(in("grad_xs"), in("order"), in.dim(1), in.dim(0))}};
          },
          .differentiable = [](const Inputs& in) -> Outputs {
            return {{"xs", moe_permute(in("x"), in("order"), in.dim(1))}};
          },
          .grad_inputs = {"x"},
          .gradient_tol = moe_gradient_tol,
          .fd_shape = Shape{{3, 2, 3, 3, 4, 5}},
          .fd_tol = {1e-7, 1e-7},
      },
      {
          .name = "moe_unpermute",
          .shapes = moe_shapes,
          .dtypes = {kFloat, kBFloat16, kHalf},
          .forward_tol = moe_tol,
          .backward_tol = moe_tol,
          .build = build_moe_unpermute,
          .kernel = [](const Inputs& in) -> Outputs {
            return {{"y", moe_unpermute_forward(in("ys"), in("weight"), in("order"), in.dim(1))}};
          },
          // The reference adds K rounded products with (atomic, unordered) index_add_ in the dtype;
          // the kernel sums in float32 and rounds once: compare with the exact sum instead.
          .reference = [](const Inputs& in) -> Outputs {
            return {{"y", moe_unpermute_reference(in("ys").to(at::kDouble), in("weight").to(at::kDouble), in("order"),
                                                  in.dim(1))}};
          },
          .kernel_backward = [](const Inputs& in) -> Outputs {
            const auto [grad_ys, grad_weight] = moe_unpermute_backward(in("grad_y"), in("ys"), in("weight"),
                                                                       in("order"), in.dim(1));
            return {{"grad_ys", grad_ys}, {"grad_weight", grad_weight}};
          },
          .reference_backward = [](const Inputs& in) -> Outputs {
            const auto [grad_ys, grad_weight] = moe_unpermute_backward_reference(in("grad_y"), in("ys"), in("weight"),
                                                                                 in("order"), in.dim(1));
            return {{"grad_ys", grad_ys}, {"grad_weight", grad_weight}};
          },
          // grad_weight is a dot product over D.
          .adjust = [](Mode mode, const std::string& output, const Inputs& in, Tol base) -> Tol {
            if (output != "grad_weight") return base;
            const double root_d = std::sqrt(static_cast<double>(in.dim(4)));
            return mode == Mode::backend ? Tol{1e-4 * root_d, 1e-4} : Tol{base.atol * root_d, base.rtol};
          },
          .differentiable = [](const Inputs& in) -> Outputs {
            return {{"y", moe_unpermute(in("ys"), in("weight"), in("order"), in.dim(1))}};
          },
          .autograd_reference = [](const Inputs& in) -> Outputs {
            return {{"y", moe_unpermute_reference(in("ys"), in("weight"), in("order"), in.dim(1))}};
          },
          .grad_inputs = {"ys", "weight"},
          .gradient_tol = moe_gradient_tol,
          .fd_shape = Shape{{3, 2, 3, 3, 4, 5}},
          .fd_tol = {1e-7, 1e-7},
      },
      {
          .name = "grouped_linear",
          .shapes = moe_shapes,
          .dtypes = {kFloat, kBFloat16, kHalf},
          .forward_tol = moe_tol,
          .backward_tol = moe_tol,
          .build = build_grouped_linear,
          .kernel = [](const Inputs& in) -> Outputs {
            return {{"out", grouped_linear_forward(in("xs"), in("weight"), in("offsets"))}};
          },
          .reference = [](const Inputs& in) -> Outputs {
            return {{"out", grouped_linear_reference(in("xs"), in("weight"), in("offsets"))}};
          },
          .kernel_backward = [](const Inputs& in) -> Outputs {
            const auto [grad_xs, grad_weight] = grouped_linear_backward(in("grad_out"), in("xs"), in("weight"),
                                                                        in("offsets"));
            return {{"grad_xs", grad_xs}, {"grad_weight", grad_weight}};
          },
          .reference_backward = [](const Inputs& in) -> Outputs {
            const auto [grad_xs, grad_weight] = grouped_linear_backward_reference(in("grad_out"), in("xs"),
                                                                                  in("weight"), in("offsets"));
            return {{"grad_xs", grad_xs}, {"grad_weight", grad_weight}};
          },
          // GEMMs: atol grows with the longest reduction (D for the outputs, M for grad_weight).
          .adjust = [](Mode, const std::string&, const Inputs& in, Tol base) -> Tol {
            const auto longest = static_cast<double>(std::max(in.dim(4), moe_pairs(in)));
            return {base.atol * std::sqrt(longest), base.rtol};
          },
          .differentiable = [](const Inputs& in) -> Outputs {
            return {{"out", grouped_linear(in("xs"), in("weight"), in("offsets"))}};
          },
          .grad_inputs = {"xs", "weight"},
          .gradient_tol = moe_gradient_tol,
          .fd_shape = Shape{{3, 2, 3, 3, 4, 5}},
          .fd_tol = {1e-7, 1e-7},
      },
      {
          .name = "rms_norm",
          .shapes = {{{1, 1}},
                     {{3, 7}},
                     {{5, 31}},
                     {{2, 3, 513}},
                     {{0, 64}},
                     {{4, 1000}},
                     {{2, 7168}},
                     {{1037, 96}},
                     {{48, 64}, "transposed"}},
          .dtypes = {kFloat, kBFloat16, kHalf},
          .forward_tol = {{kFloat, {1e-5, 1e-5}}, {kBFloat16, {2e-2, 2e-2}}, {kHalf, {2e-3, 2e-3}}},
          .backward_tol = {{kFloat, {1e-5, 1e-5}}, {kBFloat16, {2e-2, 2e-2}}, {kHalf, {2e-3, 2e-3}}},
          .build = build_rms_norm,
          .kernel = [](const Inputs& in) -> Outputs {
            return {{"y", rms_norm_forward(in("x"), in("weight"), kRmsEps)}};
          },
          .reference = [](const Inputs& in) -> Outputs {
            return {{"y", rms_norm_reference(in("x"), in("weight"), kRmsEps)}};
          },
          .kernel_backward = [](const Inputs& in) -> Outputs {
            const auto [grad_x, grad_weight] = rms_norm_backward(in("grad_y"), in("x"), in("weight"), kRmsEps);
            return {{"grad_x", grad_x}, {"grad_weight", grad_weight}};
          },
          .reference_backward = [](const Inputs& in) -> Outputs {
            const auto [grad_x, grad_weight] = rms_norm_backward_reference(in("grad_y"), in("x"), in("weight"),
                                                                           kRmsEps);
            return {{"grad_x", grad_x}, {"grad_weight", grad_weight}};
          },
          .adjust = rms_norm_adjust,
          .differentiable = [](const Inputs& in) -> Outputs {
            return {{"y", rms_norm(in("x"), in("weight"), kRmsEps)}};
          },
          .grad_inputs = {"x", "weight"},
          // The op computes in float32 for float64 inputs too (HF numerics).
          .gradient_tol = {{kFloat, {1e-5, 1e-5}}, {kDouble, {1e-5, 1e-5}}},
          .fd_shape = Shape{{3, 5}},
          .fd_step = 1e-3,  // float32 inside: central differences resolve about 1e-4
          .fd_tol = {2e-3, 0},
      },
      {
          .name = "rope",
          .shapes =
              [] {
                auto shapes = rope_shapes({{{1, 1, 1, 2}, false},
                                           {{2, 3, 5, 64}, false},
                                           {{3, 16, 7, 128}, true},
                                           {{1, 1, 33, 4}, false},
                                           {{2, 5, 0, 8}, false},
                                           {{4, 128, 17, 64}, false}});
                shapes.push_back({{2, 4, 9, 16}, "interleaved_slice"});
                return shapes;
              }(),
          .dtypes = {kFloat, kBFloat16, kHalf},
          // The reference forward rounds x*c and rot(x)*s before adding: with |x| up to about 5 that
          // is up to 1.5 units in the last place of 4..8 in absolute error, whatever the result.
          .forward_tol = {{kFloat, {1e-5, 1e-5}}, {kBFloat16, {8e-2, 3e-2}}, {kHalf, {1e-2, 3e-3}}},
          .backward_tol = {{kFloat, {1e-5, 1e-5}}, {kBFloat16, {3e-2, 3e-2}}, {kHalf, {3e-3, 3e-3}}},
          .build = build_rope,
          .kernel = [](const Inputs& in) -> Outputs {
            return {{"y", rope_forward(in("x"), in("cos"), in("sin"), rope_layout(in.shape))}};
          },
          .reference = [](const Inputs& in) -> Outputs {
            return {{"y", rope_reference(in("x"), in("cos"), in("sin"), rope_layout(in.shape))}};
          },
          .kernel_backward = [](const Inputs& in) -> Outputs {
            return {{"grad_x", rope_backward(in("grad_y"), in("cos"), in("sin"), rope_layout(in.shape))}};
          },
          .reference_backward = [](const Inputs& in) -> Outputs {
            return {{"grad_x", rope_backward_reference(in("grad_y"), in("cos"), in("sin"), rope_layout(in.shape))}};
          },
          .differentiable = [](const Inputs& in) -> Outputs {
            return {{"y", rope(in("x"), in("cos"), in("sin"), rope_layout(in.shape))}};
          },
          .grad_inputs = {"x"},  // the tables get no gradient
          .gradient_tol = {{kFloat, {1e-5, 1e-5}}, {kDouble, {1e-12, 1e-12}}},
          .fd_shape = Shape{{2, 2, 3, 6}, "interleaved_table1"},
          .fd_tol = {1e-7, 0},
      },
      {
          .name = "swiglu",
          .shapes = {{{0}}, {{1}}, {{7}}, {{3, 1001}}, {{2, 5, 2048}}, {{1 << 20}}, {{48, 32}, "transposed"}},
          .dtypes = {kFloat, kBFloat16, kHalf, kDouble},
          // The reference forward rounds silu(gate) before multiplying by up: one extra rounding.
          .forward_tol =
              {{kDouble, {1e-12, 1e-12}}, {kFloat, {1e-5, 1e-5}}, {kHalf, {4e-3, 4e-3}}, {kBFloat16, {2e-2, 2e-2}}},
          .backward_tol =
              {{kDouble, {1e-12, 1e-12}}, {kFloat, {1e-5, 1e-5}}, {kHalf, {4e-3, 4e-3}}, {kBFloat16, {2e-2, 2e-2}}},
          .build = build_swiglu,
          .kernel = [](const Inputs& in) -> Outputs {
            return {{"y", swiglu_forward(in("gate"), in("up"))}};
          },
          .reference = [](const Inputs& in) -> Outputs {
            return {{"y", swiglu_reference(in("gate"), in("up"))}};
          },
          .kernel_backward = [](const Inputs& in) -> Outputs {
            const auto [grad_gate, grad_up] = swiglu_backward(in("grad_y"), in("gate"), in("up"));
            return {{"grad_gate", grad_gate}, {"grad_up", grad_up}};
          },
          .reference_backward = [](const Inputs& in) -> Outputs {
            const auto [grad_gate, grad_up] = swiglu_backward_reference(in("grad_y"), in("gate"), in("up"));
            return {{"grad_gate", grad_gate}, {"grad_up", grad_up}};
          },
          .differentiable = [](const Inputs& in) -> Outputs {
            return {{"y", swiglu(in("gate"), in("up"))}};
          },
          .grad_inputs = {"gate", "up"},
          .gradient_tol = {{kFloat, {1e-5, 1e-5}}, {kDouble, {1e-12, 1e-12}}},
          .fd_shape = Shape{{4, 7}},
          .fd_tol = {1e-7, 0},
      },
      {
          .name = "token_logprobs",
          .shapes = logprobs_shapes,
          .dtypes = {kFloat, kBFloat16, kHalf},
          .forward_tol = logprobs_forward_tol,
          .backward_tol = logprobs_backward_tol,
          .build = build_token_logprobs,
          .kernel = [](const Inputs& in) { return logprobs_forward(token_logprobs, in); },
          .reference = [](const Inputs& in) { return logprobs_forward(token_logprobs_reference, in); },
          .kernel_backward = [](const Inputs& in) { return logprobs_backward(token_logprobs, in); },
          .reference_backward = [](const Inputs& in) { return logprobs_backward(token_logprobs_reference, in); },
          .needs_cuda_kernels = false,  // without them the chunked path runs on plain ATen
          .differentiable = [](const Inputs& in) { return logprobs_forward(token_logprobs, in); },
          .grad_inputs = {"hidden", "weight"},
          .gradient_tol = {{kFloat, {1e-4, 1e-4}}, {kDouble, {1e-10, 1e-10}}},
          .fd_shape = Shape{{3, 4, 7, 3}, "T0.7"},
          .fd_tol = {1e-8, 1e-6},
      },
      {
          // The fused chunk kernels against the same chunked function on plain ATen ops.
          .name = "token_logprobs_vs_aten_chunked",
          .shapes = logprobs_shapes,
          .dtypes = {kFloat, kBFloat16, kHalf},
          .forward_tol = logprobs_forward_tol,
          .backward_tol = logprobs_backward_tol,
          .build = build_token_logprobs,
          .kernel = [](const Inputs& in) { return logprobs_forward(token_logprobs, in); },
          .reference = [](const Inputs& in) { return logprobs_forward(token_logprobs, in, /*kernels=*/false); },
          .kernel_backward = [](const Inputs& in) { return logprobs_backward(token_logprobs, in); },
          .reference_backward = [](const Inputs& in) { return logprobs_backward(token_logprobs, in, false); },
          .needs_cuda_kernels = false,
      },
  };
  return ops;
}

INSTANTIATE_TEST_SUITE_P(KernelOps, Backend, ::testing::ValuesIn(backend_cases()),
                         [](const ::testing::TestParamInfo<Case>& info) {
                           return case_name(info.param, NameParts::dtype);
                         });
INSTANTIATE_TEST_SUITE_P(KernelOps, Gradient, ::testing::ValuesIn(gradient_cases()),
                         [](const ::testing::TestParamInfo<Case>& info) {
                           return case_name(info.param, NameParts::dtype_device);
                         });
INSTANTIATE_TEST_SUITE_P(KernelOps, FiniteDifferences, ::testing::ValuesIn(finite_difference_cases()),
                         [](const ::testing::TestParamInfo<Case>& info) {
                           return case_name(info.param, NameParts::none);
                         });

// The table itself: unique names, a tolerance for every dtype a mode runs, paths in pairs.
TEST(KernelOpsTable, RowsAreComplete) {
  std::vector<std::string> names;
  for (const auto& op : kernel_ops()) {
    SCOPED_TRACE(op.name);
    names.push_back(op.name);
    EXPECT_FALSE(op.shapes.empty());
    EXPECT_TRUE(op.build && op.kernel && op.reference);
    EXPECT_EQ(static_cast<bool>(op.kernel_backward), static_cast<bool>(op.reference_backward));
    for (auto dtype : op.dtypes) {
      EXPECT_TRUE(op.forward_tol.count(dtype)) << dtype_name(dtype);
      if (op.kernel_backward) {
        EXPECT_TRUE(op.backward_tol.count(dtype)) << dtype_name(dtype);
      }
    }
    if (op.differentiable) {
      EXPECT_FALSE(op.grad_inputs.empty());
      for (auto dtype : op.gradient_dtypes) EXPECT_TRUE(op.gradient_tol.count(dtype)) << dtype_name(dtype);
    }
  }
  std::sort(names.begin(), names.end());
  EXPECT_EQ(std::adjacent_find(names.begin(), names.end()), names.end()) << "duplicate op names";
}

}  // namespace
}  // namespace grpo::kernels
