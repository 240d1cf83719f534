// safetensors: reading and writing tensors in the format of Hugging Face checkpoints.
//
// A .safetensors file is
//   8 bytes     N, the header length (unsigned 64-bit little-endian)
//   N bytes     a JSON object: tensor name -> {"dtype": "BF16", "shape": [4096, 7168],
//               "data_offsets": [begin, end]}, plus an optional "__metadata__": {string: string}
//   the rest    the data section: raw little-endian tensor bytes, row-major; each tensor's
//               [begin, end) is relative to the first byte after the header
// dtype names: F64 F32 F16 BF16 I64 I32 I16 I8 U8 BOOL F8_E4M3 (at::kFloat8_e4m3fn)
// F8_E5M2 (at::kFloat8_e5m2).
//
// A Hugging Face checkpoint folder holds either model.safetensors, or shards
// model-00001-of-0000K.safetensors plus model.safetensors.index.json, which maps every tensor
// name to its shard: {"metadata": {"total_size": bytes}, "weight_map": {name: shard file name}}.
//
// Readers trust nothing in a file: every size and offset is checked against the file's size before
// anything is allocated or read, and every problem is a std::runtime_error whose one-line message
// starts with the file's path and says what was expected and what was found.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/ScalarType.h>

#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

namespace grpo::io {

// Where one tensor lives in a .safetensors file.
struct TensorInfo {
  std::string name;             // e.g. "model.layers.0.self_attn.q_proj.weight"
  at::ScalarType dtype;         // e.g. at::kBFloat16
  std::vector<int64_t> shape;   // row-major; empty for a 0-d scalar
  uint64_t begin = 0, end = 0;  // byte range [begin, end) relative to the start of the data section
};

// One .safetensors file. The constructor reads and validates the whole header; tensors are read
// on demand by load(). Holds no open file between calls, so copies are cheap and load() may be
// called from several threads at once.
class SafetensorsFile {
 public:
  // Opens `path`, reads and validates its header: dtypes known, shapes non-negative, every
  // tensor's byte range of exactly numel * element size, inside the data section, and not
  // overlapping another tensor's. Throws std::runtime_error naming the path otherwise.
  explicit SafetensorsFile(const std::string& path);

  const std::string& path() const { return path_; }

  // All tensors, in the order of their data offsets.
  const std::vector<TensorInfo>& tensors() const { return tensors_; }

  // The header's "__metadata__" (empty when it has none), e.g. {"format": "pt"}.
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

  bool contains(const std::string& name) const { return index_.count(name) != 0; }

  // Throws std::runtime_error naming the file and the tensor when there is no such tensor.
  const TensorInfo& info(const std::string& name) const;

  // Reads one tensor into a new contiguous CPU tensor that owns its memory.
  at::Tensor load(const std::string& name) const;

 private:
  std::string path_;
  uint64_t data_start_ = 0;  // file offset of the data section: 8 + header length
  std::vector<TensorInfo> tensors_;
  std::map<std::string, std::size_t> index_;  // name -> position in tensors_
  std::map<std::string, std::string> metadata_;
};

// Writes `tensors` to `path` in the given order, with `metadata` as "__metadata__" (left out when
// empty). Tensors may live on any device and have any layout; each is copied to a contiguous CPU
// tensor while it is written, one at a time. The header is padded with spaces to a multiple of 8
// bytes, as the reference library does. Atomic: a temporary file beside `path` is written, synced
// and renamed over it; parent folders are created. Throws std::runtime_error naming the path on a
// duplicate name, a dtype safetensors cannot store, or an I/O failure (the old file then stays).
void save_safetensors(const std::string& path, const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                      const std::map<std::string, std::string>& metadata = {});

// A Hugging Face checkpoint folder, single-file or sharded (see the top of this file). When both
// model.safetensors and the index exist, model.safetensors is used, as transformers does. Tensor
// names come from the index; tensors a shard holds beyond those are ignored.
class SafetensorsCheckpoint {
 public:
  // Opens `dir` and the header of every file it needs. Throws std::runtime_error when neither
  // model.safetensors nor model.safetensors.index.json exists, when the index is malformed, when
  // a shard it names is missing, or when a tensor it lists is absent from its shard.
  explicit SafetensorsCheckpoint(const std::string& dir);

  const std::string& dir() const { return dir_; }

  // All tensor names, sorted.
  std::vector<std::string> names() const;

  bool contains(const std::string& name) const { return where_.count(name) != 0; }

  // Throws std::runtime_error naming the folder and the tensor when there is no such tensor.
  const TensorInfo& info(const std::string& name) const;

  // Reads one tensor into a new contiguous CPU tensor (see SafetensorsFile::load).
  at::Tensor load(const std::string& name) const;

 private:
  const SafetensorsFile& file_of(const std::string& name) const;

  std::string dir_;
  std::vector<SafetensorsFile> files_;
  std::map<std::string, std::size_t> where_;  // tensor name -> position in files_
};

// Writes a checkpoint folder the way transformers' save_pretrained does: tensors are packed in the
// given order into shards of at most `max_shard_bytes` bytes of tensor data (a tensor larger than
// that gets a shard of its own); one shard is written as DIR/model.safetensors, several as
// DIR/model-00001-of-0000K.safetensors ... plus DIR/model.safetensors.index.json. Every shard
// carries `metadata`. Creates DIR; each file is written atomically, the index last. Files of an
// earlier save in DIR that the new one does not use (model.safetensors, the index,
// model-NNNNN-of-NNNNN.safetensors) are then removed, so that readers cannot pick up stale ones.
void save_checkpoint_tensors(const std::string& dir, const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                             uint64_t max_shard_bytes = 5ull << 30,
                             const std::map<std::string, std::string>& metadata = {{"format", "pt"}});

// save_checkpoint_tensors one tensor at a time, for models that are never whole in memory: add()
// copies a tensor to the CPU and keeps it until its shard is full, then writes that shard to a
// hidden part file in DIR (".part-00001.safetensors"), so at most one shard of tensors is held at
// once. finish() writes the last shard, gives the parts their final names (model.safetensors when
// there is one, model-0000k-of-0000K.safetensors and the index otherwise), the index last, and
// removes an earlier save's files that the new one does not use. The shards are packed exactly as
// save_checkpoint_tensors packs them. A writer destroyed before finish() removes its parts and
// leaves DIR's earlier checkpoint as it was.
class CheckpointWriter {
 public:
  CheckpointWriter(std::string dir, uint64_t max_shard_bytes = 5ull << 30,
                   std::map<std::string, std::string> metadata = {{"format", "pt"}});
  ~CheckpointWriter();
  CheckpointWriter(const CheckpointWriter&) = delete;
  CheckpointWriter& operator=(const CheckpointWriter&) = delete;

  // Throws std::runtime_error naming DIR on a duplicate name or a dtype safetensors cannot store.
  void add(const std::string& name, const at::Tensor& tensor);
  void finish();
  uint64_t held_bytes() const { return current_bytes_; }  // waiting for their shard to be written

 private:
  void write_part(std::vector<std::pair<std::string, at::Tensor>> tensors);

  std::string dir_;
  uint64_t max_shard_bytes_;
  std::map<std::string, std::string> metadata_;
  std::vector<std::pair<std::string, at::Tensor>> current_;
  uint64_t current_bytes_ = 0, total_bytes_ = 0;
  std::vector<std::vector<std::string>> parts_;  // the names in each part written, in order
  std::vector<std::string> seen_;
  bool finished_ = false;
};

}  // namespace grpo::io
