#include "grpo/io/safetensors.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <atomic>
#include <bit>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <set>
#include <stdexcept>

#include "grpo/core/files.h"

static_assert(std::endian::native == std::endian::little,
              "safetensors data is little-endian; grpo reads and writes it as raw bytes");

namespace grpo::io {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

constexpr uint64_t kMaxHeaderBytes = 100'000'000;  // the reference library's limit
constexpr int kMaxHeaderDepth = 64;                // JSON nesting levels
constexpr const char* kMetadataKey = "__metadata__";
constexpr const char* kSingleFileName = "model.safetensors";
constexpr const char* kIndexFileName = "model.safetensors.index.json";

struct DtypeName {
  const char* name;
  at::ScalarType dtype;
};

// The dtypes grpo reads and writes. Every element size is a whole number of bytes.
constexpr DtypeName kDtypes[] = {
    {"F64", at::kDouble},
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
    {"F8_E5M2", at::kFloat8_e5m2},
};

std::string known_dtypes() {
  std::string out;
  for (const auto& d : kDtypes) out += (out.empty() ? "" : ", ") + std::string(d.name);
  return out;
}

const char* dtype_name(at::ScalarType dtype) {
  for (const auto& d : kDtypes)
    if (d.dtype == dtype) return d.name;
  return nullptr;
}

[[noreturn]] void fail(const std::string& path, const std::string& what) {
  throw std::runtime_error(path + ": " + what);
}

// Keeps error messages on one line and of sane length, whatever a file holds.
std::string clip(const std::string& text, std::size_t max = 200) {
  std::string out;
  for (const unsigned char c : text) {
    if (out.size() >= max) return out + "...";
    if (c < 0x20 || c == 0x7f) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", c);
      out += buf;
    } else {
      out += static_cast<char>(c);
    }
  }
  return out;
}

std::string quote(const std::string& name) { return "'" + clip(name) + "'"; }

// A JSON value as found in a file, for messages: its type and its text, cut short.
std::string describe(const json& value) { return std::string(value.type_name()) + " " + clip(value.dump(), 80); }

std::string shape_text(const std::vector<int64_t>& shape) {
  std::string out = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) out += (i ? ", " : "") + std::to_string(shape[i]);
  return out + "]";
}

std::string range_text(uint64_t begin, uint64_t end) {
  return "[" + std::to_string(begin) + ", " + std::to_string(end) + ")";
}

// A file opened for reading, closed at scope exit.
class ReadFile {
 public:
  explicit ReadFile(const std::string& path) : path_(path) {
    fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd_ < 0) fail(path, std::string("cannot open for reading: ") + std::strerror(errno));
    struct stat st = {};
    if (::fstat(fd_, &st) != 0) {
      const std::string why = std::strerror(errno);
      ::close(fd_);
      fail(path, "cannot stat: " + why);
    }
    if (!S_ISREG(st.st_mode)) {
      ::close(fd_);
      fail(path, "expected a regular file, found " +
                     std::string(S_ISDIR(st.st_mode) ? "a directory" : "another kind of file"));
    }
    size_ = static_cast<uint64_t>(st.st_size);
  }
  ~ReadFile() { ::close(fd_); }
  ReadFile(const ReadFile&) = delete;
  ReadFile& operator=(const ReadFile&) = delete;

  uint64_t size() const { return size_; }

  // Reads up to n bytes at `offset`; returns how many it read (fewer only at the end of the file).
  uint64_t read_at(uint64_t offset, void* out, uint64_t n) const {
    char* p = static_cast<char*>(out);
    uint64_t done = 0;
    while (done < n) {
      const std::size_t chunk = static_cast<std::size_t>(std::min<uint64_t>(n - done, 1ull << 30));
      const ssize_t got = ::pread(fd_, p + done, chunk, static_cast<off_t>(offset + done));
      if (got < 0) {
        if (errno == EINTR) continue;
        fail(path_, std::string("cannot read: ") + std::strerror(errno));
      }
      if (got == 0) break;
      done += static_cast<uint64_t>(got);
    }
    return done;
  }

 private:
  std::string path_;
  int fd_ = -1;
  uint64_t size_ = 0;
};

// Writes a file so that readers see the old one or the new one, never a mix: a temporary file
// beside it is written piece by piece, synced and renamed over `path` by commit(). Without
// commit() (an exception on the way) the temporary file is removed and the old file stays.
class AtomicWriter {
 public:
  explicit AtomicWriter(const std::string& path) : path_(path) {
    static std::atomic<uint64_t> counter{0};
    const fs::path target(path);
    std::error_code ec;
    if (target.has_parent_path()) {
      fs::create_directories(target.parent_path(), ec);
      if (ec) fail(path, "cannot create its folder: " + ec.message());
    }
    tmp_ = path + ".tmp." + std::to_string(::getpid()) + "." + std::to_string(counter++);
    fd_ = ::open(tmp_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd_ < 0) fail(path, "cannot write temporary file '" + tmp_ + "': " + std::strerror(errno));
  }
  ~AtomicWriter() {
    if (fd_ >= 0) ::close(fd_);
    if (!committed_) ::unlink(tmp_.c_str());
  }
  AtomicWriter(const AtomicWriter&) = delete;
  AtomicWriter& operator=(const AtomicWriter&) = delete;

  void write(const void* data, uint64_t n) {
    const char* p = static_cast<const char*>(data);
    while (n > 0) {
      const std::size_t chunk = static_cast<std::size_t>(std::min<uint64_t>(n, 1ull << 30));
      const ssize_t put = ::write(fd_, p, chunk);
      if (put < 0) {
        if (errno == EINTR) continue;
        fail(path_, "cannot write temporary file '" + tmp_ + "': " + std::strerror(errno));
      }
      p += put;
      n -= static_cast<uint64_t>(put);
    }
  }

  void commit() {
    const int fd = fd_;
    fd_ = -1;
    if (::fsync(fd) != 0) {
      const std::string why = std::strerror(errno);
      ::close(fd);
      fail(path_, "cannot flush temporary file '" + tmp_ + "': " + why);
    }
    if (::close(fd) != 0) fail(path_, "cannot close temporary file '" + tmp_ + "': " + std::strerror(errno));
    if (::rename(tmp_.c_str(), path_.c_str()) != 0)
      fail(path_, "cannot rename '" + tmp_ + "' over it: " + std::strerror(errno));
    committed_ = true;
  }

 private:
  std::string path_, tmp_;
  int fd_ = -1;
  bool committed_ = false;
};

// A JSON number as a non-negative 64-bit integer, or false when it is anything else.
bool to_u64(const json& value, uint64_t& out) {
  if (value.is_number_unsigned()) {
    out = value.get<uint64_t>();
    return true;
  }
  if (value.is_number_integer() && value.get<int64_t>() >= 0) {
    out = static_cast<uint64_t>(value.get<int64_t>());
    return true;
  }
  return false;
}

// Parses and checks one header entry; offsets are checked against the data section's size.
TensorInfo parse_tensor(const std::string& path, const std::string& name, const json& entry, uint64_t data_bytes) {
  const std::string where = "tensor " + quote(name) + ": ";
  if (!entry.is_object())
    fail(path, where + "expected an object with dtype, shape and data_offsets, found " + describe(entry));
  for (const char* field : {"dtype", "shape", "data_offsets"})
    if (!entry.contains(field)) fail(path, where + "expected fields dtype, shape and data_offsets, found no " + field);

  TensorInfo info;
  info.name = name;

  const json& dtype = entry["dtype"];
  if (!dtype.is_string()) fail(path, where + "expected dtype to be a string, found " + describe(dtype));
  const std::string& dtype_text = dtype.get_ref<const std::string&>();
  const DtypeName* known = nullptr;
  for (const auto& d : kDtypes)
    if (dtype_text == d.name) known = &d;
  if (!known) fail(path, where + "unknown dtype " + quote(dtype_text) + " (expected one of " + known_dtypes() + ")");
  info.dtype = known->dtype;

  const json& shape = entry["shape"];
  if (!shape.is_array()) fail(path, where + "expected shape to be an array of integers, found " + describe(shape));
  for (const json& dim : shape) {
    if (!dim.is_number_integer())
      fail(path, where + "expected shape to be an array of integers, found " + describe(shape));
    if (dim.is_number_unsigned() && dim.get<uint64_t>() > static_cast<uint64_t>(INT64_MAX))
      fail(path, where + "expected dimensions below 2^63, found shape " + clip(shape.dump(), 80));
    info.shape.push_back(dim.get<int64_t>());
  }
  for (const int64_t dim : info.shape)
    if (dim < 0) fail(path, where + "expected non-negative dimensions, found shape " + shape_text(info.shape));

  const json& offsets = entry["data_offsets"];
  if (!offsets.is_array() || offsets.size() != 2 || !to_u64(offsets[0], info.begin) || !to_u64(offsets[1], info.end))
    fail(path,
         where + "expected data_offsets to be two non-negative integers [begin, end], found " + describe(offsets));
  if (info.begin > info.end)
    fail(path, where + "expected data_offsets with begin <= end, found [" + std::to_string(info.begin) + ", " +
                   std::to_string(info.end) + "]");
  if (info.end > data_bytes)
    fail(path, "truncated: tensor " + quote(name) + " ends at byte " + std::to_string(info.end) +
                   " but the data section has only " + std::to_string(data_bytes) + " bytes");

  const uint64_t element_size = c10::elementSize(info.dtype);
  uint64_t numel = 1, bytes = 0;
  for (const int64_t dim : info.shape)
    if (__builtin_mul_overflow(numel, static_cast<uint64_t>(dim), &numel))
      fail(path, where + "expected a shape whose size fits in 64 bits, found shape " + shape_text(info.shape));
  if (__builtin_mul_overflow(numel, element_size, &bytes))
    fail(path, where + "expected a shape whose size fits in 64 bits, found shape " + shape_text(info.shape));
  if (info.end - info.begin != bytes)
    fail(path, where + "expected " + std::to_string(bytes) + " bytes (shape " + shape_text(info.shape) + " of " +
                   known->name + ", " + std::to_string(element_size) + " bytes each), found data_offsets " + "[" +
                   std::to_string(info.begin) + ", " + std::to_string(info.end) + "] spanning " +
                   std::to_string(info.end - info.begin) + " bytes");
  return info;
}

// Bytes a tensor takes in a file: numel * element size.
uint64_t byte_size(const at::Tensor& tensor) {
  return static_cast<uint64_t>(tensor.numel()) * static_cast<uint64_t>(tensor.element_size());
}

// A contiguous CPU copy (or the tensor itself when it already is one) whose memory holds exactly
// the values the tensor shows.
at::Tensor to_plain_cpu(const at::Tensor& tensor) {
  at::Tensor t = tensor.detach();
  if (t.layout() != at::kStrided) t = t.to_dense();
  return t.cpu().resolve_conj().resolve_neg().contiguous();
}

// Checks a tensor list for save_safetensors / save_checkpoint_tensors; returns the dtype names.
std::vector<const char*> check_tensors(const std::string& path,
                                       const std::vector<std::pair<std::string, at::Tensor>>& tensors) {
  std::set<std::string> seen;
  std::vector<const char*> names;
  for (const auto& [name, tensor] : tensors) {
    if (name == kMetadataKey)
      fail(path,
           "expected tensor names other than '__metadata__' (the header's metadata key), found a "
           "tensor named so");
    if (!seen.insert(name).second) fail(path, "duplicate tensor name " + quote(name) + " (expected unique names)");
    if (!tensor.defined()) fail(path, "tensor " + quote(name) + ": expected a defined tensor, found an undefined one");
    if (tensor.is_meta()) fail(path, "tensor " + quote(name) + ": expected a tensor with data, found a meta tensor");
    const char* dtype = dtype_name(tensor.scalar_type());
    if (!dtype)
      fail(path, "tensor " + quote(name) + ": dtype " + std::string(c10::toString(tensor.scalar_type())) +
                     " cannot be stored (expected one of " + known_dtypes() + ")");
    names.push_back(dtype);
  }
  return names;
}

// "model-00002-of-00005.safetensors" and the like, as save_pretrained names shards.
bool is_shard_file_name(const std::string& name) {
  const std::string pattern = "model-#####-of-#####.safetensors";
  if (name.size() != pattern.size()) return false;
  for (std::size_t i = 0; i < name.size(); ++i) {
    if (pattern[i] == '#' ? !std::isdigit(static_cast<unsigned char>(name[i])) : name[i] != pattern[i]) return false;
  }
  return true;
}

std::string shard_file_name(std::size_t index, std::size_t count) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "model-%05zu-of-%05zu.safetensors", index, count);
  return buf;
}

}  // namespace

SafetensorsFile::SafetensorsFile(const std::string& path) : path_(path) {
  const ReadFile file(path);
  const uint64_t file_size = file.size();
  if (file_size < 8)
    fail(path,
         "expected at least 8 bytes (the header length), found a file of " + std::to_string(file_size) + " bytes");
  unsigned char length_bytes[8];
  if (file.read_at(0, length_bytes, 8) != 8) fail(path, "truncated: cannot read the 8-byte header length");
  uint64_t header_bytes = 0;
  for (int i = 7; i >= 0; --i) header_bytes = (header_bytes << 8) | length_bytes[i];
  if (header_bytes > file_size - 8)
    fail(path, "truncated: the header length is " + std::to_string(header_bytes) + " bytes but only " +
                   std::to_string(file_size - 8) + " bytes follow the 8-byte length");
  if (header_bytes > kMaxHeaderBytes)
    fail(path, "expected a header of at most " + std::to_string(kMaxHeaderBytes) + " bytes, found a header length of " +
                   std::to_string(header_bytes));
  data_start_ = 8 + header_bytes;
  const uint64_t data_bytes = file_size - data_start_;

  std::string text(header_bytes, '\0');
  if (file.read_at(8, text.data(), header_bytes) != header_bytes)
    fail(path, "truncated: the file ended inside the header (was it changed while being read?)");
  json header;
  try {
    // A real header nests three levels (header, tensor, shape). Deeper input is refused while it
    // is parsed: printing or walking it recursively could overflow the stack.
    struct TooDeep {};
    const auto limit_depth = [](int depth, json::parse_event_t, json&) {
      if (depth > kMaxHeaderDepth) throw TooDeep{};
      return true;
    };
    try {
      header = json::parse(text, limit_depth);
    } catch (const TooDeep&) {
      fail(path, "expected the header to nest at most " + std::to_string(kMaxHeaderDepth) +
                     " levels deep, found deeper nesting");
    }
  } catch (const json::exception& e) {
    std::string why = e.what();
    const auto bracket = why.find("] ");
    if (why.rfind("[json.exception", 0) == 0 && bracket != std::string::npos) why = why.substr(bracket + 2);
    fail(path, "expected the header to be JSON, found invalid JSON (" + clip(why) + ")");
  }
  if (!header.is_object()) fail(path, "expected the header to be a JSON object, found " + describe(header));

  for (const auto& [key, value] : header.items()) {
    if (key == kMetadataKey) {
      if (value.is_null()) continue;
      if (!value.is_object()) fail(path, "expected __metadata__ to be an object of strings, found " + describe(value));
      for (const auto& [meta_key, meta_value] : value.items()) {
        if (!meta_value.is_string())
          fail(path, "__metadata__ " + quote(meta_key) + ": expected a string value, found " + describe(meta_value));
        metadata_[meta_key] = meta_value.get<std::string>();
      }
      continue;
    }
    tensors_.push_back(parse_tensor(path, key, value, data_bytes));
  }

  std::sort(tensors_.begin(), tensors_.end(), [](const TensorInfo& a, const TensorInfo& b) {
    return std::tie(a.begin, a.end, a.name) < std::tie(b.begin, b.end, b.name);
  });
  // Sorted by begin, a tensor overlaps an earlier one exactly when it starts before the furthest
  // end seen so far. Empty tensors hold no bytes and overlap nothing.
  const TensorInfo* furthest = nullptr;
  for (const TensorInfo& t : tensors_) {
    if (t.begin == t.end) continue;
    if (furthest && t.begin < furthest->end)
      fail(path, "tensors " + quote(furthest->name) + " " + range_text(furthest->begin, furthest->end) + " and " +
                     quote(t.name) + " " + range_text(t.begin, t.end) + " overlap (expected disjoint byte ranges)");
    if (!furthest || t.end > furthest->end) furthest = &t;
  }
  for (std::size_t i = 0; i < tensors_.size(); ++i) index_[tensors_[i].name] = i;
}

const TensorInfo& SafetensorsFile::info(const std::string& name) const {
  const auto it = index_.find(name);
  if (it == index_.end())
    fail(path_, "no tensor " + quote(name) + " (the file has " + std::to_string(tensors_.size()) + " tensors)");
  return tensors_[it->second];
}

at::Tensor SafetensorsFile::load(const std::string& name) const {
  const TensorInfo& t = info(name);
  at::Tensor out = at::empty(t.shape, at::TensorOptions().dtype(t.dtype).device(at::kCPU));
  const uint64_t bytes = t.end - t.begin;
  TORCH_INTERNAL_ASSERT(bytes == byte_size(out), "safetensors: validated size disagrees with the tensor's");
  if (bytes == 0) return out;
  const ReadFile file(path_);
  const uint64_t got = file.read_at(data_start_ + t.begin, out.data_ptr(), bytes);
  if (got != bytes)
    fail(path_, "truncated: tensor " + quote(name) + " ends at byte " + std::to_string(t.end) +
                    " but the data section has only " + std::to_string(t.begin + got) +
                    " bytes (the file changed since its header was read)");
  if (t.dtype == at::kBool) {
    // Bytes other than 0 and 1 are not valid bools; ATen's kernels assume they never occur.
    const auto* p = static_cast<const unsigned char*>(out.data_ptr());
    for (uint64_t i = 0; i < bytes; ++i)
      if (p[i] > 1)
        fail(path_, "tensor " + quote(name) + ": expected BOOL bytes 0 or 1, found " + std::to_string(p[i]) +
                        " at element " + std::to_string(i));
  }
  return out;
}

void save_safetensors(const std::string& path, const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                      const std::map<std::string, std::string>& metadata) {
  const std::vector<const char*> dtypes = check_tensors(path, tensors);

  // The header keeps insertion order: metadata first, then the tensors in the order they are written.
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) {
    auto& meta = header[kMetadataKey] = nlohmann::ordered_json::object();
    for (const auto& [key, value] : metadata) meta[key] = value;
  }
  uint64_t offset = 0;
  for (std::size_t i = 0; i < tensors.size(); ++i) {
    const auto& [name, tensor] = tensors[i];
    const uint64_t bytes = byte_size(tensor);
    auto& entry = header[name] = nlohmann::ordered_json::object();
    entry["dtype"] = dtypes[i];
    entry["shape"] = tensor.sizes().vec();
    entry["data_offsets"] = {offset, offset + bytes};
    offset += bytes;
  }
  std::string text;
  try {
    text = header.dump();
  } catch (const nlohmann::json::exception& e) {
    fail(path, "expected UTF-8 tensor names and metadata, found " + clip(e.what()));
  }
  text.append((8 - text.size() % 8) % 8, ' ');  // as the reference library pads

  AtomicWriter out(path);
  unsigned char length_bytes[8];
  for (int i = 0; i < 8; ++i) length_bytes[i] = static_cast<unsigned char>(text.size() >> (8 * i));
  out.write(length_bytes, 8);
  out.write(text.data(), text.size());
  for (const auto& [name, tensor] : tensors) {
    if (tensor.numel() == 0) continue;
    const at::Tensor plain = to_plain_cpu(tensor);
    out.write(plain.data_ptr(), byte_size(plain));
  }
  out.commit();
}

SafetensorsCheckpoint::SafetensorsCheckpoint(const std::string& dir) : dir_(dir) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) fail(dir, "expected a checkpoint folder, found no such folder");
  const fs::path single = fs::path(dir) / kSingleFileName;
  const fs::path index_path = fs::path(dir) / kIndexFileName;
  if (fs::exists(single, ec)) {
    files_.emplace_back(single.string());
    for (const TensorInfo& t : files_.back().tensors()) where_[t.name] = 0;
    return;
  }
  if (!fs::exists(index_path, ec))
    fail(dir, std::string("expected ") + kSingleFileName + " or " + kIndexFileName + " in the folder, found neither");

  const std::string index_file = index_path.string();
  const uint64_t index_size = fs::file_size(index_path, ec);
  if (ec) fail(index_file, "cannot read: " + ec.message());
  if (index_size > kMaxHeaderBytes)
    fail(index_file, "expected an index of at most " + std::to_string(kMaxHeaderBytes) + " bytes, found " +
                         std::to_string(index_size));
  json index;
  try {
    index = json::parse(read_file(index_file));
  } catch (const json::exception& e) {
    fail(index_file, "expected JSON, found invalid JSON (" + clip(e.what()) + ")");
  }
  if (!index.is_object() || !index.contains("weight_map") || !index["weight_map"].is_object())
    fail(index_file, "expected an object with a \"weight_map\" object, found " + describe(index));

  std::map<std::string, std::size_t> file_of_shard;  // shard file name -> position in files_
  for (const auto& [name, shard_value] : index["weight_map"].items()) {
    if (!shard_value.is_string())
      fail(index_file, "tensor " + quote(name) + ": expected a shard file name, found " + describe(shard_value));
    const std::string& shard = shard_value.get_ref<const std::string&>();
    if (shard.empty() || shard.find('/') != std::string::npos || shard == "." || shard == "..")
      fail(index_file, "tensor " + quote(name) + ": expected a file name in the folder, found " + quote(shard));
    auto it = file_of_shard.find(shard);
    if (it == file_of_shard.end()) {
      const fs::path shard_path = fs::path(dir) / shard;
      if (!fs::exists(shard_path, ec))
        fail(index_file, "shard " + quote(shard) + " (listed for tensor " + quote(name) +
                             ") does not exist: expected " + shard_path.string());
      files_.emplace_back(shard_path.string());
      it = file_of_shard.emplace(shard, files_.size() - 1).first;
    }
    if (!files_[it->second].contains(name))
      fail(index_file,
           "tensor " + quote(name) + " is listed in shard " + quote(shard) + ", but that shard has no such tensor");
    where_[name] = it->second;
  }
}

std::vector<std::string> SafetensorsCheckpoint::names() const {
  std::vector<std::string> out;
  out.reserve(where_.size());
  for (const auto& [name, file] : where_) out.push_back(name);
  return out;
}

const SafetensorsFile& SafetensorsCheckpoint::file_of(const std::string& name) const {
  const auto it = where_.find(name);
  if (it == where_.end())
    fail(dir_,
         "no tensor " + quote(name) + " in the checkpoint (it has " + std::to_string(where_.size()) + " tensors)");
  return files_[it->second];
}

const TensorInfo& SafetensorsCheckpoint::info(const std::string& name) const { return file_of(name).info(name); }

at::Tensor SafetensorsCheckpoint::load(const std::string& name) const { return file_of(name).load(name); }

void save_checkpoint_tensors(const std::string& dir, const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                             uint64_t max_shard_bytes, const std::map<std::string, std::string>& metadata) {
  check_tensors(dir, tensors);  // every problem before anything is written
  CheckpointWriter writer(dir, max_shard_bytes, metadata);
  for (const auto& [name, tensor] : tensors) writer.add(name, tensor);
  writer.finish();
}

namespace {

std::string part_file_name(std::size_t index) {
  char buf[64];
  std::snprintf(buf, sizeof buf, ".part-%05zu.safetensors", index);
  return buf;
}

}  // namespace

CheckpointWriter::CheckpointWriter(std::string dir, uint64_t max_shard_bytes,
                                   std::map<std::string, std::string> metadata)
    : dir_(std::move(dir)), max_shard_bytes_(max_shard_bytes), metadata_(std::move(metadata)) {
  std::error_code ec;
  fs::create_directories(dir_, ec);
  if (ec) fail(dir_, "cannot create the folder: " + ec.message());
  // Parts an interrupted writer left are never a checkpoint.
  for (const auto& entry : fs::directory_iterator(dir_, ec)) {
    const std::string name = entry.path().filename().string();
    if (name.rfind(".part-", 0) == 0) fs::remove(entry.path(), ec);
  }
}

CheckpointWriter::~CheckpointWriter() {
  if (finished_) return;
  std::error_code ec;
  for (std::size_t k = 1; k <= parts_.size(); ++k) fs::remove(fs::path(dir_) / part_file_name(k), ec);
}

void CheckpointWriter::add(const std::string& name, const at::Tensor& tensor) {
  if (finished_) fail(dir_, "tensor " + quote(name) + ": the checkpoint is already finished");
  std::pair<std::string, at::Tensor> item{name, tensor};
  check_tensors(dir_, {item});
  if (std::find(seen_.begin(), seen_.end(), name) != seen_.end()) {
    fail(dir_, "duplicate tensor name " + quote(name) + " (expected unique names)");
  }
  seen_.push_back(name);
  item.second = to_plain_cpu(tensor);
  if (item.second.data_ptr() == tensor.data_ptr()) item.second = item.second.clone();  // ours, not a view of theirs
  // As huggingface_hub's split_torch_state_dict_into_shards packs them: in order, a new shard when
  // the next tensor would tip the current one over the limit, and a tensor larger than the limit
  // alone in a shard of its own (the current one goes on after it).
  const uint64_t bytes = byte_size(item.second);
  total_bytes_ += bytes;
  if (bytes > max_shard_bytes_) {
    write_part({std::move(item)});
    return;
  }
  if (current_bytes_ + bytes > max_shard_bytes_) {
    write_part(std::move(current_));
    current_.clear();
    current_bytes_ = 0;
  }
  current_.push_back(std::move(item));
  current_bytes_ += bytes;
}

void CheckpointWriter::write_part(std::vector<std::pair<std::string, at::Tensor>> tensors) {
  save_safetensors((fs::path(dir_) / part_file_name(parts_.size() + 1)).string(), tensors, metadata_);
  std::vector<std::string> names;
  for (const auto& t : tensors) names.push_back(t.first);
  parts_.push_back(std::move(names));
}

void CheckpointWriter::finish() {
  if (finished_) return;
  if (!current_.empty() || parts_.empty()) write_part(std::move(current_));
  current_.clear();
  current_bytes_ = 0;
  std::set<std::string> written;
  const auto rename = [&](const std::string& from, const std::string& to) {
    std::error_code ec;
    fs::rename(fs::path(dir_) / from, fs::path(dir_) / to, ec);
    if (ec) fail((fs::path(dir_) / to).string(), "cannot move the written " + from + " here: " + ec.message());
  };
  if (parts_.size() == 1) {
    rename(part_file_name(1), kSingleFileName);
    written.insert(kSingleFileName);
  } else {
    json weight_map = json::object();
    for (std::size_t k = 0; k < parts_.size(); ++k) {
      const std::string file_name = shard_file_name(k + 1, parts_.size());
      rename(part_file_name(k + 1), file_name);
      for (const auto& name : parts_[k]) weight_map[name] = file_name;
      written.insert(file_name);
    }
    const json index = {{"metadata", {{"total_size", total_bytes_}}}, {"weight_map", weight_map}};
    // As transformers writes it: sorted keys (json objects are sorted maps), indent 2, newline.
    write_file_atomic((fs::path(dir_) / kIndexFileName).string(), index.dump(2) + "\n");
    written.insert(kIndexFileName);
  }
  finished_ = true;

  // Remove what an earlier save left that this one does not use, as save_pretrained does.
  std::error_code ec;
  std::vector<fs::path> stale;
  for (const auto& entry : fs::directory_iterator(dir_, ec)) {
    const std::string name = entry.path().filename().string();
    const bool ours = name == kSingleFileName || name == kIndexFileName || is_shard_file_name(name);
    if (ours && !written.count(name)) stale.push_back(entry.path());
  }
  if (ec) fail(dir_, "cannot list the folder: " + ec.message());
  for (const fs::path& file : stale)
    if (!fs::remove(file, ec) && ec) fail(file.string(), "cannot remove this file of an earlier save: " + ec.message());
}

}  // namespace grpo::io
