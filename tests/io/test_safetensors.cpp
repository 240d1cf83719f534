// safetensors I/O: round trips of every dtype, sharded checkpoints, every validation error with its
// message, truncated and corrupted files, and (SafetensorsOracle) a cross-check against the Python
// safetensors library through tests/io/safetensors_oracle.py.
#include "grpo/io/safetensors.h"

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <set>

#include "test_util.h"

namespace grpo::io {
namespace {

namespace fs = std::filesystem;
using grpo::test::TempDir;
using grpo::test::read_text;
using Named = std::vector<std::pair<std::string, at::Tensor>>;

std::string le64(uint64_t n) {
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>(n >> (8 * i));
  return out;
}

// A .safetensors file built by hand: the length of `header`, `header`, then `data`.
std::string write_raw(const TempDir& dir, const std::string& name, const std::string& header,
                      const std::string& data = "") {
  return dir.write(name, le64(header.size()) + header + data);
}

// Same dtype, shape and bytes.
void expect_identical(const at::Tensor& expected, const at::Tensor& actual, const std::string& name) {
  SCOPED_TRACE(name);
  ASSERT_EQ(expected.scalar_type(), actual.scalar_type());
  ASSERT_EQ(expected.sizes(), actual.sizes());
  EXPECT_TRUE(actual.is_contiguous());
  EXPECT_EQ(actual.device().type(), at::kCPU);
  const at::Tensor e = expected.contiguous();
  ASSERT_EQ(e.nbytes(), actual.nbytes());
  if (e.nbytes() > 0) {
    EXPECT_EQ(std::memcmp(e.data_ptr(), actual.data_ptr(), e.nbytes()), 0);
  }
}

// One tensor of every dtype, with the values that tend to break things (extremes, subnormals,
// infinities, NaN, -0), plus empty and 0-d tensors.
Named every_dtype() {
  const double inf = std::numeric_limits<double>::infinity(), nan = std::nan("");
  const auto f64 = at::TensorOptions().dtype(at::kDouble);
  Named t;
  t.emplace_back("f64", at::tensor({1.0 / 3, -2.5e-300, 1e300, -0.0, inf, nan}, f64).reshape({2, 3}));
  t.emplace_back("f32", at::tensor({0.1, -1e-40, 3.4e38, -inf, nan, -0.0}, f64).to(at::kFloat));
  t.emplace_back("f16", at::tensor({1.0 / 3, 6e-8, 65504.0, inf, -0.0}, f64).to(at::kHalf));
  t.emplace_back("bf16", at::tensor({1.0 / 3, -1e-39, 3.0e38, -inf}, f64).to(at::kBFloat16).reshape({2, 2}));
  t.emplace_back("i64", at::tensor({std::numeric_limits<int64_t>::min(), int64_t{-1}, int64_t{0},
                                    std::numeric_limits<int64_t>::max()},
                                   at::kLong));
  t.emplace_back("i32",
                 at::tensor({std::numeric_limits<int32_t>::min(), 7, std::numeric_limits<int32_t>::max()}, at::kInt));
  t.emplace_back("i16", at::tensor({-32768, 0, 32767}, at::kInt).to(at::kShort));
  t.emplace_back("i8", at::tensor({-128, -1, 0, 127}, at::kInt).to(at::kChar).reshape({2, 2}));
  t.emplace_back("u8", at::tensor({0, 128, 255}, at::kInt).to(at::kByte));
  t.emplace_back("bool", at::tensor({1, 0, 1, 1}, at::kInt).to(at::kBool).reshape({1, 4}));
  t.emplace_back("f8_e4m3", at::tensor({448.0, -448.0, 0.001953125, -0.0, 1.5, nan}, f64).to(at::kFloat8_e4m3fn));
  t.emplace_back("f8_e5m2", at::tensor({57344.0, -inf, 1.52587890625e-05, 0.75}, f64).to(at::kFloat8_e5m2));
  t.emplace_back("random", at::randn({17, 5}, at::TensorOptions().dtype(at::kFloat)));
  t.emplace_back("empty", at::zeros({0, 3}));
  t.emplace_back("empty_inner", at::zeros({2, 0, 4}, at::kBFloat16));
  t.emplace_back("scalar_f32", at::scalar_tensor(2.5, at::kFloat));
  t.emplace_back("scalar_i64", at::scalar_tensor(-7, at::kLong));
  t.emplace_back("scalar_f8", at::scalar_tensor(-3.0, at::kFloat).to(at::kFloat8_e4m3fn));
  return t;
}

TEST(Safetensors, RoundTripsEveryDtype) {
  TempDir dir;
  const Named tensors = every_dtype();
  const std::map<std::string, std::string> metadata = {{"format", "pt"}, {"note", "grüße, \"quoted\""}};
  const std::string path = dir.path("all.safetensors");
  save_safetensors(path, tensors, metadata);

  const SafetensorsFile file(path);
  EXPECT_EQ(file.path(), path);
  EXPECT_EQ(file.metadata(), metadata);
  ASSERT_EQ(file.tensors().size(), tensors.size());
  uint64_t offset = 0;
  for (std::size_t i = 0; i < tensors.size(); ++i) {
    const auto& [name, tensor] = tensors[i];
    const TensorInfo& info = file.tensors()[i];  // data-offset order = the order written
    EXPECT_EQ(info.name, name);
    EXPECT_EQ(info.dtype, tensor.scalar_type());
    EXPECT_EQ(info.shape, tensor.sizes().vec());
    EXPECT_EQ(info.begin, offset);
    offset += tensor.nbytes();
    EXPECT_EQ(info.end, offset);
    EXPECT_TRUE(file.contains(name));
    EXPECT_EQ(&file.info(name), &info);
    expect_identical(tensor, file.load(name), name);
  }
  EXPECT_FALSE(file.contains("missing"));
  EXPECT_EQ(file.load("scalar_f32").dim(), 0);
  EXPECT_EQ(file.load("scalar_f32").item<float>(), 2.5f);

  // Layout: length, header padded with spaces to a multiple of 8, then exactly the data.
  const std::string bytes = read_text(path);
  uint64_t header_bytes = 0;
  for (int i = 7; i >= 0; --i) header_bytes = (header_bytes << 8) | static_cast<unsigned char>(bytes[i]);
  EXPECT_EQ(header_bytes % 8, 0u);
  EXPECT_EQ(bytes.size(), 8 + header_bytes + offset);
  EXPECT_EQ(bytes.substr(8, 1), "{");
}

TEST(Safetensors, WritesTheHeaderAsTheReferenceLibraryDoes) {
  TempDir dir;
  const std::string path = dir.path("small.safetensors");
  save_safetensors(path, {{"b", at::ones({2}, at::kFloat)}, {"a", at::zeros({1, 1}, at::kBFloat16)}},
                   {{"format", "pt"}});
  const std::string header = R"({"__metadata__":{"format":"pt"},"b":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                             R"("a":{"dtype":"BF16","shape":[1,1],"data_offsets":[8,10]}})";
  ASSERT_EQ(header.size(), 142u);
  const std::string padded = header + "  ";  // to 144 bytes
  const std::string expected = le64(padded.size()) + padded + std::string("\0\0\x80\x3f\0\0\x80\x3f\0\0", 10);
  EXPECT_EQ(read_text(path), expected);

  // No metadata: no "__metadata__" key at all.
  save_safetensors(path, {{"x", at::zeros({0}, at::kByte)}});
  const std::string bare = R"({"x":{"dtype":"U8","shape":[0],"data_offsets":[0,0]}})";
  EXPECT_EQ(read_text(path), le64(56) + bare + std::string(56 - bare.size(), ' '));
}

TEST(Safetensors, WritesAnyLayoutAsContiguousValues) {
  TempDir dir;
  const at::Tensor base = at::arange(24, at::kFloat).reshape({4, 6});
  const Named tensors = {
      {"transposed", base.t()},
      {"strided", base.index({at::indexing::Slice(), at::indexing::Slice(at::indexing::None, at::indexing::None, 2)})},
      {"offset_view", base[2]},
      {"expanded", at::arange(3, at::kLong).unsqueeze(0).expand({4, 3})},
      {"sparse", base.to_sparse()},
      {"requires_grad", at::ones({3}, at::kDouble).set_requires_grad(true)},
  };
  const std::string path = dir.path("views.safetensors");
  save_safetensors(path, tensors);
  const SafetensorsFile file(path);
  for (const auto& [name, tensor] : tensors) {
    const at::Tensor dense = tensor.layout() == at::kStrided ? tensor.detach() : tensor.to_dense();
    expect_identical(dense.contiguous(), file.load(name), name);
  }
}

TEST(Safetensors, ReadsTensorsInDataOffsetOrderWhateverTheHeaderOrder) {
  TempDir dir;
  // JSON objects are unordered; "a" comes first in the text but second in the data. A gap between
  // tensors is tolerated (the reference library would refuse it; grpo never writes one).
  const std::string path = write_raw(
      dir, "order.safetensors",
      R"({"a":{"dtype":"U8","shape":[2],"data_offsets":[4,6]},"b":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},)"
      R"("__metadata__":null})",
      std::string("\x01\x02\x00\x00\x03\x04", 6));
  const SafetensorsFile file(path);
  ASSERT_EQ(file.tensors().size(), 2u);
  EXPECT_EQ(file.tensors()[0].name, "b");
  EXPECT_EQ(file.tensors()[1].name, "a");
  EXPECT_TRUE(file.metadata().empty());
  EXPECT_EQ(file.load("a")[1].item<uint8_t>(), 4);
  EXPECT_EQ(file.load("b")[0].item<uint8_t>(), 1);
}

TEST(Safetensors, SaveRejectsDuplicatesAndUnstorableTensorsLeavingNothingBehind) {
  TempDir dir;
  const std::string path = dir.path("bad.safetensors");
  GRPO_EXPECT_THROW_MESSAGE(save_safetensors(path, {{"w", at::ones({2})}, {"w", at::ones({3})}}), std::runtime_error,
                            path + ": duplicate tensor name 'w' (expected unique names)");
  GRPO_EXPECT_THROW_MESSAGE(
      save_safetensors(path, {{"c", at::ones({2}, at::kComplexFloat)}}), std::runtime_error,
      path +
          ": tensor 'c': dtype ComplexFloat cannot be stored (expected one of F64, F32, F16, BF16, I64, "
          "I32, I16, I8, U8, BOOL, F8_E4M3, F8_E5M2)");
  GRPO_EXPECT_THROW_MESSAGE(save_safetensors(path, {{"u", at::Tensor()}}), std::runtime_error,
                            path + ": tensor 'u': expected a defined tensor, found an undefined one");
  GRPO_EXPECT_THROW_MESSAGE(
      save_safetensors(path, {{"__metadata__", at::ones({1})}}), std::runtime_error,
      path + ": expected tensor names other than '__metadata__' (the header's metadata key), found a tensor named so");
  EXPECT_TRUE(fs::is_empty(dir.path()));

  // A failed save leaves the previous file as it was.
  save_safetensors(path, {{"w", at::ones({2})}});
  const std::string before = read_text(path);
  EXPECT_THROW(save_safetensors(path, {{"w", at::ones({2})}, {"w", at::ones({2})}}), std::runtime_error);
  EXPECT_EQ(read_text(path), before);
  EXPECT_EQ(std::distance(fs::directory_iterator(dir.path()), fs::directory_iterator()), 1);
}

TEST(Safetensors, InfoAndLoadOfAnAbsentTensorNameFileAndTensor) {
  TempDir dir;
  const std::string path = dir.path("one.safetensors");
  save_safetensors(path, {{"w", at::ones({2})}});
  const SafetensorsFile file(path);
  GRPO_EXPECT_THROW_MESSAGE(file.info("v"), std::runtime_error, path + ": no tensor 'v' (the file has 1 tensors)");
  GRPO_EXPECT_THROW_MESSAGE(file.load("v"), std::runtime_error, path + ": no tensor 'v' (the file has 1 tensors)");
}

// One broken file and the message it must produce (after "<path>: ").
struct BrokenCase {
  const char* label;
  std::string header;
  std::string data;
  std::string message;
};

TEST(Safetensors, RejectsEveryKindOfBrokenHeaderWithAOneLineMessage) {
  const std::string f32x2 = R"("dtype":"F32","shape":[2])";
  const std::vector<BrokenCase> cases = {
      {"not an object", "[1,2]", "", "expected the header to be a JSON object, found array [1,2]"},
      {"entry not an object", R"({"w":3})", "",
       "tensor 'w': expected an object with dtype, shape and data_offsets, found number 3"},
      {"missing shape", R"({"w":{"dtype":"F32","data_offsets":[0,0]}})", "",
       "tensor 'w': expected fields dtype, shape and data_offsets, found no shape"},
      {"dtype not a string", R"({"w":{"dtype":4,"shape":[],"data_offsets":[0,4]}})", std::string(4, '\0'),
       "tensor 'w': expected dtype to be a string, found number 4"},
      {"unknown dtype", R"({"w":{"dtype":"F128","shape":[1],"data_offsets":[0,16]}})", std::string(16, '\0'),
       "tensor 'w': unknown dtype 'F128' (expected one of F64, F32, F16, BF16, I64, I32, I16, I8, U8, BOOL, "
       "F8_E4M3, F8_E5M2)"},
      {"shape not an array", R"({"w":{"dtype":"F32","shape":2,"data_offsets":[0,8]}})", std::string(8, '\0'),
       "tensor 'w': expected shape to be an array of integers, found number 2"},
      {"shape of floats", R"({"w":{"dtype":"F32","shape":[2.0],"data_offsets":[0,8]}})", std::string(8, '\0'),
       "tensor 'w': expected shape to be an array of integers, found array [2.0]"},
      {"negative dimension", R"({"w":{"dtype":"F32","shape":[2,-3],"data_offsets":[0,8]}})", std::string(8, '\0'),
       "tensor 'w': expected non-negative dimensions, found shape [2, -3]"},
      {"dimension beyond int64", R"({"w":{"dtype":"F32","shape":[9223372036854775808],"data_offsets":[0,8]}})",
       std::string(8, '\0'), "tensor 'w': expected dimensions below 2^63, found shape [9223372036854775808]"},
      {"size overflows", R"({"w":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,8]}})",
       std::string(8, '\0'),
       "tensor 'w': expected a shape whose size fits in 64 bits, found shape [4294967296, 4294967296]"},
      {"bytes overflow", R"({"w":{"dtype":"F32","shape":[4611686018427387904],"data_offsets":[0,8]}})",
       std::string(8, '\0'),
       "tensor 'w': expected a shape whose size fits in 64 bits, found shape [4611686018427387904]"},
      {"one offset", "{\"w\":{" + f32x2 + R"(,"data_offsets":[0]}})", std::string(8, '\0'),
       "tensor 'w': expected data_offsets to be two non-negative integers [begin, end], found array [0]"},
      {"string offset", "{\"w\":{" + f32x2 + R"(,"data_offsets":[0,"8"]}})", std::string(8, '\0'),
       "tensor 'w': expected data_offsets to be two non-negative integers [begin, end], found array [0,\"8\"]"},
      {"negative offset", "{\"w\":{" + f32x2 + R"(,"data_offsets":[-8,0]}})", std::string(8, '\0'),
       "tensor 'w': expected data_offsets to be two non-negative integers [begin, end], found array [-8,0]"},
      {"offsets an object", "{\"w\":{" + f32x2 + R"(,"data_offsets":{"a":1}}})", std::string(8, '\0'),
       "tensor 'w': expected data_offsets to be two non-negative integers [begin, end], found object {\"a\":1}"},
      {"begin after end", "{\"w\":{" + f32x2 + R"(,"data_offsets":[8,0]}})", std::string(8, '\0'),
       "tensor 'w': expected data_offsets with begin <= end, found [8, 0]"},
      {"end beyond the data", "{\"w\":{" + f32x2 + R"(,"data_offsets":[0,8]}})", std::string(6, '\0'),
       "truncated: tensor 'w' ends at byte 8 but the data section has only 6 bytes"},
      {"end far beyond the data", "{\"w\":{" + f32x2 + R"(,"data_offsets":[0,18446744073709551615]}})",
       std::string(8, '\0'),
       "truncated: tensor 'w' ends at byte 18446744073709551615 but the data section has only 8 bytes"},
      {"wrong byte size", "{\"w\":{" + f32x2 + R"(,"data_offsets":[0,6]}})", std::string(8, '\0'),
       "tensor 'w': expected 8 bytes (shape [2] of F32, 4 bytes each), found data_offsets [0, 6] spanning 6 bytes"},
      {"overlap", "{\"a\":{" + f32x2 + R"(,"data_offsets":[0,8]},"b":{)" + f32x2 + R"(,"data_offsets":[4,12]}})",
       std::string(12, '\0'), "tensors 'a' [0, 8) and 'b' [4, 12) overlap (expected disjoint byte ranges)"},
      {"contained overlap",
       R"({"big":{"dtype":"U8","shape":[8],"data_offsets":[0,8]},"in":{"dtype":"U8","shape":[2],"data_offsets":[2,4]},)"
       R"("late":{"dtype":"U8","shape":[2],"data_offsets":[6,8]}})",
       std::string(8, '\0'), "tensors 'big' [0, 8) and 'in' [2, 4) overlap (expected disjoint byte ranges)"},
      {"metadata not an object", R"({"__metadata__":["pt"]})", "",
       "expected __metadata__ to be an object of strings, found array [\"pt\"]"},
      {"metadata value not a string", R"({"__metadata__":{"format":"pt","step":3}})", "",
       "__metadata__ 'step': expected a string value, found number 3"},
      {"control characters in a name", "{\"a\\nb\":{" + f32x2 + R"(,"data_offsets":[0,6]}})", std::string(8, '\0'),
       "tensor 'a\\x0ab': expected 8 bytes (shape [2] of F32, 4 bytes each), found data_offsets [0, 6] spanning 6 "
       "bytes"},
  };
  TempDir dir;
  for (std::size_t i = 0; i < cases.size(); ++i) {
    SCOPED_TRACE(cases[i].label);
    const std::string path = write_raw(dir, "case" + std::to_string(i) + ".safetensors", cases[i].header,
                                       cases[i].data);
    GRPO_EXPECT_THROW_MESSAGE(SafetensorsFile{path}, std::runtime_error, path + ": " + cases[i].message);
  }

  // Empty tensors hold no bytes and overlap nothing, wherever they point.
  const std::string empties = write_raw(
      dir, "empties.safetensors",
      R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},"e":{"dtype":"F32","shape":[0,2],"data_offsets":[2,2]}})",
      "abcd");
  EXPECT_EQ(SafetensorsFile(empties).load("e").sizes(), (std::vector<int64_t>{0, 2}));
}

TEST(Safetensors, RejectsBrokenFramingWithAOneLineMessage) {
  TempDir dir;
  const std::string missing = dir.path("missing.safetensors");
  GRPO_EXPECT_THROW_MESSAGE(SafetensorsFile{missing}, std::runtime_error,
                            missing + ": cannot open for reading: No such file or directory");
  GRPO_EXPECT_THROW_MESSAGE(SafetensorsFile{dir.path()}, std::runtime_error,
                            dir.path() + ": expected a regular file, found a directory");

  const std::string tiny = dir.write("tiny.safetensors", "abcde");
  GRPO_EXPECT_THROW_MESSAGE(SafetensorsFile{tiny}, std::runtime_error,
                            tiny + ": expected at least 8 bytes (the header length), found a file of 5 bytes");

  const std::string long_header = dir.write("long.safetensors", le64(1000) + "{}");
  GRPO_EXPECT_THROW_MESSAGE(SafetensorsFile{long_header}, std::runtime_error,
                            long_header +
                                ": truncated: the header length is 1000 bytes but only 2 bytes follow the "
                                "8-byte length");
  const std::string huge_length = dir.write("huge.safetensors", le64(~0ull) + "{}");
  GRPO_EXPECT_THROW_MESSAGE(SafetensorsFile{huge_length}, std::runtime_error,
                            huge_length +
                                ": truncated: the header length is 18446744073709551615 bytes but only 2 "
                                "bytes follow the 8-byte length");

  // A header over the 100 MB cap is refused before it is read (the file is sparse, nothing is allocated).
  const std::string capped = dir.write("capped.safetensors", le64(100'000'001));
  fs::resize_file(capped, 8 + 100'000'001 + 16);
  GRPO_EXPECT_THROW_MESSAGE(SafetensorsFile{capped}, std::runtime_error,
                            capped +
                                ": expected a header of at most 100000000 bytes, found a header length of "
                                "100000001");

  const std::string not_json = write_raw(dir, "text.safetensors", "{\"w\": nope}");
  try {
    SafetensorsFile{not_json};
    ADD_FAILURE() << "expected an error";
  } catch (const std::runtime_error& e) {
    const std::string message = e.what();
    const std::string prefix = not_json + ": expected the header to be JSON, found invalid JSON (parse error at";
    EXPECT_EQ(message.substr(0, prefix.size()), prefix) << message;
    EXPECT_EQ(message.find('\n'), std::string::npos) << message;
  }

  // Nesting a million levels deep must fail cleanly, not overflow the stack.
  const std::string deep = write_raw(dir, "deep.safetensors",
                                     std::string(1'000'000, '[') + std::string(1'000'000, ']'));
  GRPO_EXPECT_THROW_MESSAGE(SafetensorsFile{deep}, std::runtime_error,
                            deep + ": expected the header to nest at most 64 levels deep, found deeper nesting");
}

TEST(Safetensors, EveryTruncationOfAValidFileFailsCleanly) {
  TempDir dir;
  const std::string path = dir.path("full.safetensors");
  save_safetensors(path, {{"a", at::arange(6, at::kFloat)}, {"b", at::ones({3}, at::kBFloat16)}}, {{"format", "pt"}});
  const std::string bytes = read_text(path);
  const SafetensorsFile full(path);
  const uint64_t data_start = bytes.size() - 30;  // 24 bytes of "a", 6 of "b"
  ASSERT_EQ(full.info("b").end, 30u);

  // Cut inside the data: the truncation message names the first tensor that no longer fits.
  const std::string cut_path = dir.write("cut.safetensors", bytes.substr(0, bytes.size() - 4));
  GRPO_EXPECT_THROW_MESSAGE(SafetensorsFile{cut_path}, std::runtime_error,
                            cut_path +
                                ": truncated: tensor 'b' ends at byte 30 but the data section has only 26 bytes");

  for (std::size_t size = 0; size < bytes.size(); ++size) {
    SCOPED_TRACE(size);
    const std::string p = dir.write("prefix.safetensors", bytes.substr(0, size));
    try {
      SafetensorsFile{p};
      ADD_FAILURE() << "a file cut to " << size << " bytes opened";
    } catch (const std::runtime_error& e) {
      const std::string message = e.what();
      EXPECT_EQ(message.rfind(p + ": ", 0), 0u) << message;
      if (size >= data_start) {
        EXPECT_NE(message.find(": truncated: tensor '"), std::string::npos) << message;
      }
    }
  }
}

TEST(Safetensors, CorruptedHeaderBytesNeverEscapeAsAnythingButRuntimeError) {
  TempDir dir;
  const std::string path = dir.path("full.safetensors");
  save_safetensors(path, {{"a", at::arange(6, at::kFloat)}, {"b", at::ones({2, 3}, at::kBool)}}, {{"k", "v"}});
  const std::string bytes = read_text(path);
  const uint64_t header_end = bytes.size() - 30;
  int opened = 0, refused = 0;
  for (std::size_t i = 0; i < header_end; ++i) {
    for (const char c : {'\0', '"', '9', '-', '[', '}', ',', '\xff'}) {
      std::string corrupt = bytes;
      corrupt[i] = c;
      const std::string p = dir.write("corrupt.safetensors", corrupt);
      try {
        const SafetensorsFile file(p);
        for (const TensorInfo& t : file.tensors()) (void)file.load(t.name);
        ++opened;
      } catch (const std::runtime_error& e) {
        EXPECT_EQ(std::string(e.what()).rfind(p + ": ", 0), 0u) << e.what();
        ++refused;
      }
    }
  }
  EXPECT_GT(refused, 0);
  EXPECT_GT(opened, 0);  // e.g. a digit of the metadata value
}

TEST(Safetensors, LoadNoticesAFileThatShrankAndBadBools) {
  TempDir dir;
  const std::string path = dir.path("w.safetensors");
  save_safetensors(path, {{"a", at::arange(4, at::kFloat)}, {"b", at::arange(4, at::kFloat)}});
  const SafetensorsFile file(path);
  fs::resize_file(path, fs::file_size(path) - 2);
  expect_identical(at::arange(4, at::kFloat), file.load("a"), "a");
  GRPO_EXPECT_THROW_MESSAGE(file.load("b"), std::runtime_error,
                            path +
                                ": truncated: tensor 'b' ends at byte 32 but the data section has only 30 bytes "
                                "(the file changed since its header was read)");

  const std::string bools = write_raw(dir, "bools.safetensors",
                                      R"({"m":{"dtype":"BOOL","shape":[3],"data_offsets":[0,3]}})",
                                      std::string("\x01\x00\x02", 3));
  GRPO_EXPECT_THROW_MESSAGE(SafetensorsFile(bools).load("m"), std::runtime_error,
                            bools + ": tensor 'm': expected BOOL bytes 0 or 1, found 2 at element 2");
}

// Tensors of 40, 40, 100 and 8 bytes.
Named four_tensors() {
  return {{"a", at::arange(10, at::kFloat)},
          {"b", at::arange(5, at::kDouble)},
          {"c", at::arange(50, at::kShort)},
          {"d", at::arange(8, at::kByte)}};
}

TEST(SafetensorsCheckpoint, SavesOneFileWhenItFitsAndLoadsIt) {
  TempDir dir;
  const Named tensors = four_tensors();
  save_checkpoint_tensors(dir.path("ckpt"), tensors, 188);
  EXPECT_TRUE(fs::exists(dir.path("ckpt/model.safetensors")));
  EXPECT_FALSE(fs::exists(dir.path("ckpt/model.safetensors.index.json")));
  EXPECT_EQ(SafetensorsFile(dir.path("ckpt/model.safetensors")).metadata(),
            (std::map<std::string, std::string>{{"format", "pt"}}));

  const SafetensorsCheckpoint ckpt(dir.path("ckpt"));
  EXPECT_EQ(ckpt.names(), (std::vector<std::string>{"a", "b", "c", "d"}));
  for (const auto& [name, tensor] : tensors) {
    EXPECT_TRUE(ckpt.contains(name));
    EXPECT_EQ(ckpt.info(name).shape, tensor.sizes().vec());
    expect_identical(tensor, ckpt.load(name), name);
  }
  EXPECT_FALSE(ckpt.contains("e"));
  GRPO_EXPECT_THROW_MESSAGE(ckpt.info("e"), std::runtime_error,
                            dir.path("ckpt") + ": no tensor 'e' in the checkpoint (it has 4 tensors)");
  GRPO_EXPECT_THROW_MESSAGE(ckpt.load("e"), std::runtime_error,
                            dir.path("ckpt") + ": no tensor 'e' in the checkpoint (it has 4 tensors)");
}

TEST(SafetensorsCheckpoint, ShardsAsSavePretrainedDoes) {
  TempDir dir;
  const Named tensors = four_tensors();
  const std::string ckpt_dir = dir.path("ckpt");
  // Limit 64: "a" fills shard 1; "b" would tip it over, so starts shard 2; "c" (100 bytes) is over
  // the limit and gets a shard of its own, closed at once; "d" joins "b".
  save_checkpoint_tensors(ckpt_dir, tensors, 64, {{"format", "pt"}, {"step", "7"}});
  EXPECT_FALSE(fs::exists(ckpt_dir + "/model.safetensors"));
  const std::string index = read_text(ckpt_dir + "/model.safetensors.index.json");
  EXPECT_EQ(index,
            "{\n"
            "  \"metadata\": {\n"
            "    \"total_size\": 188\n"
            "  },\n"
            "  \"weight_map\": {\n"
            "    \"a\": \"model-00001-of-00003.safetensors\",\n"
            "    \"b\": \"model-00003-of-00003.safetensors\",\n"
            "    \"c\": \"model-00002-of-00003.safetensors\",\n"
            "    \"d\": \"model-00003-of-00003.safetensors\"\n"
            "  }\n"
            "}\n");
  const SafetensorsFile shard3(ckpt_dir + "/model-00003-of-00003.safetensors");
  ASSERT_EQ(shard3.tensors().size(), 2u);
  EXPECT_EQ(shard3.tensors()[0].name, "b");
  EXPECT_EQ(shard3.tensors()[1].name, "d");
  EXPECT_EQ(shard3.metadata(), (std::map<std::string, std::string>{{"format", "pt"}, {"step", "7"}}));
  EXPECT_EQ(SafetensorsFile(ckpt_dir + "/model-00002-of-00003.safetensors").tensors().size(), 1u);

  const SafetensorsCheckpoint ckpt(ckpt_dir);
  EXPECT_EQ(ckpt.names(), (std::vector<std::string>{"a", "b", "c", "d"}));
  for (const auto& [name, tensor] : tensors) expect_identical(tensor, ckpt.load(name), name);
  EXPECT_EQ(ckpt.info("d").begin, 40u);

  GRPO_EXPECT_THROW_MESSAGE(save_checkpoint_tensors(ckpt_dir, {{"x", at::ones({1})}, {"x", at::ones({1})}}, 64),
                            std::runtime_error, ckpt_dir + ": duplicate tensor name 'x' (expected unique names)");
}

TEST(SafetensorsCheckpoint, ASaveReplacesTheFilesOfAnEarlierOne) {
  TempDir dir;
  const std::string ckpt_dir = dir.path("ckpt");
  dir.write("ckpt/config.json", "{}");
  dir.write("ckpt/model-extra.safetensors", "kept: not a name save_pretrained uses");
  save_checkpoint_tensors(ckpt_dir, four_tensors(), 64);
  dir.write("ckpt/model-00007-of-00009.safetensors", "stale");
  save_checkpoint_tensors(ckpt_dir, {{"only", at::ones({2})}});
  std::set<std::string> files;
  for (const auto& e : fs::directory_iterator(ckpt_dir)) files.insert(e.path().filename().string());
  EXPECT_EQ(files, (std::set<std::string>{"config.json", "model-extra.safetensors", "model.safetensors"}));
  EXPECT_EQ(SafetensorsCheckpoint(ckpt_dir).names(), (std::vector<std::string>{"only"}));

  save_checkpoint_tensors(ckpt_dir, four_tensors(), 140);
  files.clear();
  for (const auto& e : fs::directory_iterator(ckpt_dir)) files.insert(e.path().filename().string());
  EXPECT_EQ(files, (std::set<std::string>{"config.json", "model-extra.safetensors", "model-00001-of-00002.safetensors",
                                          "model-00002-of-00002.safetensors", "model.safetensors.index.json"}));
  EXPECT_EQ(SafetensorsCheckpoint(ckpt_dir).names().size(), 4u);

  // No tensors at all: an empty model.safetensors.
  save_checkpoint_tensors(ckpt_dir, {});
  EXPECT_TRUE(SafetensorsCheckpoint(ckpt_dir).names().empty());
}

// The streaming writer behind save_checkpoint_tensors: at most one shard's tensors held at once,
// written as hidden parts until finish() names them; abandoned, it leaves an earlier save alone.
TEST(CheckpointWriter, HoldsOneShardAtATimeAndLeavesAnEarlierSaveWhenAbandoned) {
  TempDir dir;
  const std::string ckpt_dir = dir.path("ckpt");
  const Named tensors = four_tensors();  // a 40 bytes, b 40, c 100, d 8 (see ShardsAsSavePretrainedDoes)
  auto parts = [&] {
    int64_t n = 0;
    for (const auto& e : fs::directory_iterator(ckpt_dir)) n += e.path().filename().string().rfind(".part-", 0) == 0;
    return n;
  };
  {
    CheckpointWriter w(ckpt_dir, 64);
    w.add(tensors[0].first, tensors[0].second);
    EXPECT_EQ(w.held_bytes(), 40u);
    EXPECT_EQ(parts(), 0);
    w.add(tensors[1].first, tensors[1].second);  // "a" is written, "b" held
    EXPECT_EQ(w.held_bytes(), 40u);
    EXPECT_EQ(parts(), 1);
    w.add(tensors[2].first, tensors[2].second);  // over the limit: written alone at once
    EXPECT_EQ(w.held_bytes(), 40u);
    EXPECT_EQ(parts(), 2);
    w.add(tensors[3].first, tensors[3].second);
    GRPO_EXPECT_THROW_MESSAGE(w.add("a", at::ones({1})), std::runtime_error,
                              ckpt_dir + ": duplicate tensor name 'a' (expected unique names)");
    w.finish();
    EXPECT_EQ(parts(), 0);
  }
  const SafetensorsCheckpoint ckpt(ckpt_dir);
  EXPECT_EQ(ckpt.names(), (std::vector<std::string>{"a", "b", "c", "d"}));
  for (const auto& [name, tensor] : tensors) expect_identical(tensor, ckpt.load(name), name);
  const std::string index = read_text(ckpt_dir + "/model.safetensors.index.json");
  {
    CheckpointWriter w(ckpt_dir, 64);
    w.add("x", at::ones({10}));
    w.add("y", at::ones({10}));  // "x" written as a part
    EXPECT_EQ(parts(), 1);
  }  // abandoned: its part removed, the earlier checkpoint untouched
  EXPECT_EQ(parts(), 0);
  EXPECT_EQ(read_text(ckpt_dir + "/model.safetensors.index.json"), index);
  EXPECT_EQ(SafetensorsCheckpoint(ckpt_dir).names(), (std::vector<std::string>{"a", "b", "c", "d"}));
}

TEST(SafetensorsCheckpoint, RejectsBrokenFolders) {
  TempDir dir;
  const std::string none = dir.path("none");
  GRPO_EXPECT_THROW_MESSAGE(SafetensorsCheckpoint{none}, std::runtime_error,
                            none + ": expected a checkpoint folder, found no such folder");
  fs::create_directories(none);
  GRPO_EXPECT_THROW_MESSAGE(
      SafetensorsCheckpoint{none}, std::runtime_error,
      none + ": expected model.safetensors or model.safetensors.index.json in the folder, found neither");

  const std::string ckpt_dir = dir.path("ckpt");
  save_checkpoint_tensors(ckpt_dir, four_tensors(), 64);
  const std::string index = ckpt_dir + "/model.safetensors.index.json";

  fs::rename(ckpt_dir + "/model-00002-of-00003.safetensors", dir.path("away"));
  GRPO_EXPECT_THROW_MESSAGE(SafetensorsCheckpoint{ckpt_dir}, std::runtime_error,
                            index +
                                ": shard 'model-00002-of-00003.safetensors' (listed for tensor 'c') does not "
                                "exist: expected " +
                                ckpt_dir + "/model-00002-of-00003.safetensors");
  fs::rename(dir.path("away"), ckpt_dir + "/model-00002-of-00003.safetensors");

  const std::string good_index = read_text(index);
  auto with_index = [&](const std::string& text) { dir.write("ckpt/model.safetensors.index.json", text); };
  with_index(R"({"weight_map": {"a": "model-00001-of-00003.safetensors", "b": "model-00001-of-00003.safetensors"}})");
  GRPO_EXPECT_THROW_MESSAGE(SafetensorsCheckpoint{ckpt_dir}, std::runtime_error,
                            index +
                                ": tensor 'b' is listed in shard 'model-00001-of-00003.safetensors', but that "
                                "shard has no such tensor");
  with_index(R"({"weight_map": {"a": "../model-00001-of-00003.safetensors"}})");
  GRPO_EXPECT_THROW_MESSAGE(SafetensorsCheckpoint{ckpt_dir}, std::runtime_error,
                            index +
                                ": tensor 'a': expected a file name in the folder, found "
                                "'../model-00001-of-00003.safetensors'");
  with_index(R"({"weight_map": {"a": 1}})");
  GRPO_EXPECT_THROW_MESSAGE(SafetensorsCheckpoint{ckpt_dir}, std::runtime_error,
                            index + ": tensor 'a': expected a shard file name, found number 1");
  with_index(R"({"metadata": {}})");
  GRPO_EXPECT_THROW_MESSAGE(SafetensorsCheckpoint{ckpt_dir}, std::runtime_error,
                            index +
                                ": expected an object with a \"weight_map\" object, found object {\"metadata\":{}}");
  with_index("{oops");
  EXPECT_THROW(SafetensorsCheckpoint{ckpt_dir}, std::runtime_error);

  // A broken shard reports the shard's own path.
  with_index(good_index);
  dir.write("ckpt/model-00003-of-00003.safetensors", "short");
  GRPO_EXPECT_THROW_MESSAGE(SafetensorsCheckpoint{ckpt_dir}, std::runtime_error,
                            ckpt_dir +
                                "/model-00003-of-00003.safetensors: expected at least 8 bytes (the header "
                                "length), found a file of 5 bytes");
}

// --- Cross-check with the Python safetensors library (tests/io/safetensors_oracle.py) ----------

const std::map<std::string, at::ScalarType>& oracle_dtypes() {
  static const std::map<std::string, at::ScalarType> dtypes = {{"F64", at::kDouble},
                                                               {"F32", at::kFloat},
                                                               {"F16", at::kHalf},
                                                               {"BF16", at::kBFloat16},
                                                               {"I64", at::kLong},
                                                               {"I32", at::kInt},
                                                               {"I16", at::kShort},
                                                               {"I8", at::kChar},
                                                               {"U8", at::kByte},
                                                               {"BOOL", at::kBool},
                                                               {"F8_E4M3", at::kFloat8_e4m3fn},
                                                               {"F8_E5M2", at::kFloat8_e5m2}};
  return dtypes;
}

std::string oracle_dtype_name(at::ScalarType dtype) {
  for (const auto& [name, value] : oracle_dtypes())
    if (value == dtype) return name;
  return "?";
}

// The JSON's values: float dtypes as float64 numbers or "nan"/"inf"/"-inf", the others as integers.
nlohmann::json values_json(const at::Tensor& t) {
  nlohmann::json out = nlohmann::json::array();
  if (at::isFloatingType(t.scalar_type())) {
    const at::Tensor d = t.to(at::kDouble).contiguous().reshape({-1});
    for (int64_t i = 0; i < d.numel(); ++i) {
      const double v = d.data_ptr<double>()[i];
      if (std::isnan(v)) out.push_back("nan");
      else if (std::isinf(v)) out.push_back(v > 0 ? "inf" : "-inf");
      else out.push_back(v);
    }
  } else {
    const at::Tensor l = t.to(at::kLong).contiguous().reshape({-1});
    for (int64_t i = 0; i < l.numel(); ++i) out.push_back(l.data_ptr<int64_t>()[i]);
  }
  return out;
}

// A tensor of `dtype` and `shape` built from the JSON's values.
at::Tensor tensor_from_json(const nlohmann::json& values, at::ScalarType dtype, const std::vector<int64_t>& shape) {
  if (!at::isFloatingType(dtype))
    return at::tensor(values.get<std::vector<int64_t>>(), at::kLong).to(dtype).reshape(shape);
  std::vector<double> doubles;
  for (const auto& v : values) {
    if (v.is_number()) doubles.push_back(v.get<double>());
    else if (v == "nan") doubles.push_back(std::nan(""));
    else
      doubles.push_back(v == "inf" ? std::numeric_limits<double>::infinity()
                                   : -std::numeric_limits<double>::infinity());
  }
  return at::tensor(doubles, at::TensorOptions().dtype(at::kDouble)).to(dtype).reshape(shape);
}

std::string hex_of(const at::Tensor& t) {
  const at::Tensor c = t.contiguous();
  const auto* p = static_cast<const unsigned char*>(c.data_ptr());
  std::string out;
  char buf[3];
  for (std::size_t i = 0; i < c.nbytes(); ++i) {
    std::snprintf(buf, sizeof buf, "%02x", p[i]);
    out += buf;
  }
  return out;
}

TEST(SafetensorsOracle, ReadsWhatPythonWritesAndWritesWhatPythonReads) {
  const char* env = std::getenv("GRPO_SAFETENSORS_ORACLE_DIR");
  if (!env || !*env)
    GTEST_SKIP() << "GRPO_SAFETENSORS_ORACLE_DIR is not set (ctest test safetensors_oracle_cpp sets it)";
  const std::string oracle_dir = env;
  const nlohmann::json ref = nlohmann::json::parse(read_text(oracle_dir + "/ref.json"));

  // Read ref.safetensors, written by safetensors.torch.save_file.
  const SafetensorsFile file(oracle_dir + "/ref.safetensors");
  using StringMap = std::map<std::string, std::string>;
  EXPECT_EQ(file.metadata(), ref["metadata"].get<StringMap>());
  ASSERT_EQ(file.tensors().size(), ref["tensors"].size());
  Named ours;
  for (std::size_t i = 0; i < ref["tensors"].size(); ++i) {
    const nlohmann::json& e = ref["tensors"][i];
    const std::string name = e["name"];
    SCOPED_TRACE(name);
    const TensorInfo& info = file.tensors()[i];  // ref.json lists them in the header's (= data) order
    EXPECT_EQ(info.name, name);
    EXPECT_EQ(oracle_dtype_name(info.dtype), e["dtype"].get<std::string>());
    EXPECT_EQ(info.shape, e["shape"].get<std::vector<int64_t>>());
    EXPECT_EQ(info.begin, e["data_offsets"][0].get<uint64_t>());
    EXPECT_EQ(info.end, e["data_offsets"][1].get<uint64_t>());
    const at::Tensor loaded = file.load(name);
    EXPECT_EQ(hex_of(loaded), e["hex"].get<std::string>());
    EXPECT_EQ(values_json(loaded), e["values"]);  // -0.0 == 0.0 here; the bytes above tell them apart

    // Ours: the same values, built from ref.json's numbers rather than copied from the file.
    const at::Tensor rebuilt = tensor_from_json(e["values"], info.dtype, info.shape);
    EXPECT_EQ(hex_of(rebuilt), e["hex"].get<std::string>());
    ours.emplace_back(name, rebuilt);
  }
  // One non-contiguous tensor more, and the order reversed: the reference reader takes any order.
  ours.emplace_back("transposed", at::arange(12, at::kFloat).reshape({3, 4}).t());
  std::reverse(ours.begin(), ours.end());
  nlohmann::json entries = nlohmann::json::array();
  for (const auto& [name, tensor] : ours)
    entries.push_back({{"name", name},
                       {"dtype", oracle_dtype_name(tensor.scalar_type())},
                       {"shape", tensor.sizes().vec()},
                       {"values", values_json(tensor)},
                       {"hex", hex_of(tensor)}});
  const std::map<std::string, std::string> metadata = {{"format", "pt"}, {"written_by", "grpo ✓"}};
  save_safetensors(oracle_dir + "/ours.safetensors", ours, metadata);
  std::ofstream(oracle_dir + "/ours.json") << nlohmann::json{{"metadata", metadata}, {"tensors", entries}}.dump(1);

  const SafetensorsFile reread(oracle_dir + "/ours.safetensors");
  for (const auto& [name, tensor] : ours) expect_identical(tensor.contiguous(), reread.load(name), name);
}

}  // namespace
}  // namespace grpo::io
