// FP8 block quantisation and the block-scaled GEMM: the reference against hand-computed codes and
// scales (e4m3 bytes worked out by hand: sign | 4 exponent bits, bias 7 | 3 mantissa bits), its
// round-trip error bound, edge tiles; the GEMM reference against a float64 sum over dequantised
// values. The CUDA quantiser (bit for bit) and the cuBLASLt GEMM against their references on a GPU
// are the fp8_quant and fp8_gemm rows of tests/kernels/test_kernel_ops.cpp.
#include "grpo/kernels/fp8_quant.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cstdint>
#include <vector>

#include "grpo/kernels/fp8_gemm.h"

namespace grpo::kernels {
namespace {

std::vector<int64_t> bytes_of(const at::Tensor& q) {
  const auto b = q.view(torch::kByte).to(torch::kCPU).to(torch::kLong).reshape({-1});
  return std::vector<int64_t>(b.data_ptr<int64_t>(), b.data_ptr<int64_t>() + b.numel());
}

TEST(Fp8Quant, OneTileHandComputed) {
  // amax 896 -> scale 2: 896 -> 448 (0x7E), -896 -> -448 (0xFE), 1 -> 0.5 (0x30), 3 -> 1.5 (0x3C),
  // 0.3 -> 0.15 rounds to 0.15625 = 1.25 * 2^-3 (0x22; 0.140625 is farther), 0 -> 0x00.
  auto x = torch::zeros({1, 128});
  x[0][0] = 896.0f;
  x[0][1] = -896.0f;
  x[0][2] = 1.0f;
  x[0][3] = 3.0f;
  x[0][4] = 0.3f;
  const auto q = fp8_quantize_1x128(x);
  ASSERT_EQ(q.scale.sizes(), (std::vector<int64_t>{1, 1}));
  EXPECT_EQ(q.scale.item<float>(), 2.0f);
  const auto b = bytes_of(q.data);
  EXPECT_EQ(b[0], 0x7E);
  EXPECT_EQ(b[1], 0xFE);
  EXPECT_EQ(b[2], 0x30);
  EXPECT_EQ(b[3], 0x3C);
  EXPECT_EQ(b[4], 0x22);
  EXPECT_EQ(b[5], 0x00);
  const auto back = fp8_dequantize(q);
  EXPECT_EQ(back[0][4].item<float>(), 0.3125f);
  EXPECT_EQ(back[0][3].item<float>(), 3.0f);
}

TEST(Fp8Quant, Ue8m0RoundsScaleUpToPowerOfTwo) {
  // amax 900: plain scale 900/448 = 2.0089..., ue8m0 scale 4; 900 / 4 = 225 -> 224 = 1.75 * 2^7 (0x76).
  auto x = torch::zeros({4, 128});
  x[0][7] = 900.0f;
  x[1][0] = 56.0f;    // 56 / 448 = 2^-3 exactly: already a power of two, stays
  x[2][0] = -100.0f;  // 100 / 448 = 0.223 -> 0.25
  // row 3: zeros -> scale 1 in both modes
  const auto plain = fp8_quantize_1x128(x, false);
  const auto pow2 = fp8_quantize_1x128(x, true);
  EXPECT_EQ(plain.scale[0][0].item<float>(), 900.0f / 448.0f);
  EXPECT_EQ(pow2.scale[0][0].item<float>(), 4.0f);
  EXPECT_EQ(pow2.scale[1][0].item<float>(), 0.125f);
  EXPECT_EQ(plain.scale[1][0].item<float>(), 0.125f);
  EXPECT_EQ(pow2.scale[2][0].item<float>(), 0.25f);
  EXPECT_EQ(pow2.scale[3][0].item<float>(), 1.0f);
  EXPECT_EQ(plain.scale[3][0].item<float>(), 1.0f);
  EXPECT_EQ(bytes_of(pow2.data)[7], 0x76);
  EXPECT_EQ(bytes_of(plain.data)[7], 0x7E);  // plain scale: the max maps to 448
  // -100 / 0.25 = -400, halfway between 384 = 1.5 * 2^8 (mantissa 0b100) and 416 (0b101): ties to
  // even give -384 = 1 1111 100 = 0xFC.
  EXPECT_EQ(bytes_of(pow2.data)[2 * 128], 0xFC);
}

TEST(Fp8Quant, ZeroTileGivesScaleOneAndZeroCodes) {
  const auto q = fp8_quantize_128x128(torch::zeros({130, 5}));
  EXPECT_TRUE(torch::equal(q.scale, torch::ones({2, 1})));
  for (auto b : bytes_of(q.data)) ASSERT_EQ(b, 0);
  EXPECT_TRUE(torch::equal(fp8_dequantize(q), torch::zeros({130, 5})));
}

TEST(Fp8Quant, SaturatesAt448) {
  // Find an amax v with v / float(v / 448) > 448 in float32: without the clamp before the cast
  // that element would round past the largest code (to NaN where casts do not saturate).
  float v = 1.0f;
  bool found = false;
  for (int i = 0; i < 10000 && !found; ++i) {
    v = 1.0f + 0.000731f * static_cast<float>(i);
    const float s = v / 448.0f;
    found = v / s > 448.0f;
  }
  ASSERT_TRUE(found) << "no float32 amax with v / (v / 448) > 448 in the range tried";
  auto x = torch::zeros({1, 128});
  x[0][0] = v;
  x[0][1] = -v;
  const auto q = fp8_quantize_1x128(x);
  const auto b = bytes_of(q.data);
  EXPECT_EQ(b[0], 0x7E);
  EXPECT_EQ(b[1], 0xFE);
  EXPECT_FALSE(torch::isnan(q.data.to(torch::kFloat)).any().item<bool>());
}

TEST(Fp8Quant, EdgeTilesUseOnlyRealElements) {
  // Values 448 * 2^k make every scale a power of two, so the round trip is exact.
  // [3, 200] in 1x128 tiles: columns 128..199 form the second tile of each row.
  auto x = torch::zeros({3, 200});
  x.narrow(1, 0, 128).fill_(112.0f);  // scale 0.25
  x.narrow(1, 128, 72).fill_(56.0f);  // scale 0.125
  x[1][199] = 3584.0f;                // scale 8 for that row's edge tile; 56 / 8 = 7 is a code
  const auto q = fp8_quantize_1x128(x);
  ASSERT_EQ(q.scale.sizes(), (std::vector<int64_t>{3, 2}));
  EXPECT_EQ(q.scale[0][1].item<float>(), 0.125f);
  EXPECT_EQ(q.scale[1][1].item<float>(), 8.0f);
  EXPECT_EQ(q.scale[2][0].item<float>(), 0.25f);
  EXPECT_TRUE(torch::equal(fp8_dequantize(q), x));
  // [130, 200] in 128x128 blocks: block (1, 1) is rows 128..129 x columns 128..199.
  auto w = torch::full({130, 200}, 896.0f);              // scale 2
  w.narrow(0, 128, 2).narrow(1, 128, 72).fill_(-28.0f);  // scale 1/16
  const auto qw = fp8_quantize_128x128(w);
  ASSERT_EQ(qw.scale.sizes(), (std::vector<int64_t>{2, 2}));
  EXPECT_EQ(qw.scale[1][1].item<float>(), 0.0625f);
  EXPECT_EQ(qw.scale[0][1].item<float>(), 2.0f);
  EXPECT_EQ(qw.scale[1][0].item<float>(), 2.0f);
  EXPECT_TRUE(torch::equal(fp8_dequantize(qw), w));
}

TEST(Fp8Quant, RoundTripErrorBound) {
  // e4m3 keeps 3 mantissa bits: |error| <= 2^-4 |x| for normal codes (|x / s| >= 2^-6), and at most
  // half the subnormal step, 2^-10 s, below. Tiles get very different magnitudes.
  torch::manual_seed(0);
  for (bool ue8m0 : {false, true}) {
    for (auto [br, bc] : {std::pair<int64_t, int64_t>{1, 128}, {128, 128}}) {
      const auto x = torch::randn({260, 300}) * torch::exp(4 * torch::randn({260, 1}));
      const auto q = fp8_quantize(x, br, bc, ue8m0);
      const auto s = fp8_expand_scale(q.scale, br, bc, 260, 300);
      const auto err = (fp8_dequantize(q) - x).abs();
      const auto bound = torch::maximum(x.abs() * 0.0625, s * (1.0 / 1024));
      EXPECT_TRUE((err <= bound * (1 + 1e-6)).all().item<bool>())
          << "ue8m0 " << ue8m0 << " tiles " << br << "x" << bc << " worst excess " << (err - bound).max().item<float>();
    }
  }
}

TEST(Fp8Quant, TransposeEqualsQuantisingTheTranspose) {
  // 128x128 blocks are square: W^T's quantisation is W's read transposed, bit for bit.
  torch::manual_seed(1);
  const auto w = torch::randn({200, 300});
  const auto t = fp8_transpose(fp8_quantize_128x128(w));
  const auto direct = fp8_quantize_128x128(w.t());
  EXPECT_EQ(bytes_of(t.data), bytes_of(direct.data));
  EXPECT_TRUE(torch::equal(t.scale, direct.scale));
}

TEST(Fp8Quant, LowPrecisionInputsQuantiseTheirFloatValue) {
  torch::manual_seed(2);
  const auto x = torch::randn({7, 300}).to(torch::kBFloat16);
  const auto a = fp8_quantize_1x128(x);
  const auto b = fp8_quantize_1x128(x.to(torch::kFloat));
  EXPECT_EQ(bytes_of(a.data), bytes_of(b.data));
  EXPECT_TRUE(torch::equal(a.scale, b.scale));
}

TEST(Fp8Quant, RejectsBadInputs) {
  EXPECT_THROW(fp8_quantize_1x128(torch::ones({3})), c10::Error);
  EXPECT_THROW(fp8_quantize_1x128(torch::ones({3, 4}, torch::kInt)), c10::Error);
  Fp8Tensor bad = fp8_quantize_1x128(torch::ones({3, 200}));
  bad.scale = torch::ones({3, 1});
  EXPECT_THROW(fp8_dequantize(bad), c10::Error);
}

TEST(Fp8Gemm, ReferenceEqualsFloat64SumOfDequantisedProducts) {
  torch::manual_seed(3);
  const auto a = fp8_quantize_1x128(torch::randn({5, 200}));
  const auto b = fp8_quantize_128x128(torch::randn({130, 200}));
  const auto out = fp8_gemm(a, b);
  ASSERT_EQ(out.sizes(), (std::vector<int64_t>{5, 130}));
  // Independent evaluation: codes and scales read one by one, products summed in float64.
  const auto ac = a.data.to(torch::kDouble), bc = b.data.to(torch::kDouble);
  double worst = 0;
  for (int64_t i = 0; i < 5; ++i) {
    for (int64_t j = 0; j < 130; j += 7) {
      double sum = 0;
      for (int64_t k = 0; k < 200; ++k) {
        sum += ac[i][k].item<double>() * a.scale[i][k / 128].item<double>() * bc[j][k].item<double>() *
               b.scale[j / 128][k / 128].item<double>();
      }
      worst = std::max(worst, std::abs(sum - out[i][j].item<double>()) / (1 + std::abs(sum)));
    }
  }
  EXPECT_LT(worst, 1e-5);
  EXPECT_THROW(fp8_gemm(a, fp8_quantize_128x128(torch::randn({130, 201}))), c10::Error);
  EXPECT_THROW(fp8_gemm(a, b, torch::kFloat, Fp8GemmBackend::cuda), c10::Error);  // CPU operands
}

}  // namespace
}  // namespace grpo::kernels
