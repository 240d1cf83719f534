// Tokenizer: text <-> token ids, the way the models a user loads expect them.
//
// Implementations: byte-level BPE from an HF tokenizer.json (grpo/data/bpe_tokenizer.h), which also
// serves the tiny default models as a byte tokenizer (a BPE with no merges, written as a
// tokenizer.json that the HF library loads too).
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace grpo::data {

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;

  // Ids of `text`. Added/special tokens written in the text are recognised as single tokens and
  // never merged across. `add_special_tokens` prepends/appends what the tokenizer's post-processor
  // adds (e.g. a BOS id), when it has one.
  virtual std::vector<int64_t> encode(std::string_view text, bool add_special_tokens = false) const = 0;

  // Text of `ids`; special tokens are dropped when `skip_special_tokens`. Throws
  // std::out_of_range naming the id when one is not in the vocabulary.
  virtual std::string decode(const std::vector<int64_t>& ids, bool skip_special_tokens = false) const = 0;

  // Every id is < vocab_size() (added tokens included).
  virtual int64_t vocab_size() const = 0;
  virtual std::optional<int64_t> token_to_id(std::string_view token) const = 0;
  virtual std::optional<std::string> id_to_token(int64_t id) const = 0;
  virtual bool is_special(int64_t id) const = 0;

  // Encodes many texts, on `threads` threads (0 = hardware concurrency).
  virtual std::vector<std::vector<int64_t>> encode_batch(const std::vector<std::string>& texts,
                                                         bool add_special_tokens = false, int threads = 0) const;
};

// Loads a tokenizer.json. Throws std::runtime_error naming the file and what is unsupported
// (a model type other than BPE, a pre-tokenizer that is not byte-level, ...).
std::unique_ptr<Tokenizer> load_tokenizer(const std::string& path);

}  // namespace grpo::data
