// Byte-level BPE tokenizer read from an HF tokenizer.json, with the HF `tokenizers` library's ids.
//
// Supported (anything else is rejected when loading, naming the file and what was found):
//   model          BPE: vocab, merges as "a b" strings or ["a", "b"] pairs, ignore_merges,
//                  unk_token/fuse_unk; byte_fallback only when every byte symbol is in the vocab;
//                  no dropout, continuing_subword_prefix or end_of_word_suffix.
//   normalizer     null (Unicode normalization such as NFC is not implemented).
//   pre_tokenizer  ByteLevel (add_prefix_space, use_regex: the GPT-2 regex), or a Sequence of
//                  Split steps (Regex or String pattern, any behavior, invert) ending with ByteLevel,
//                  as Llama-3, Qwen2 and DeepSeek-V3 write them. Regexes run on PCRE2 (UTF, UCP,
//                  JIT), with Oniguruma's meaning of \s.
//   added_tokens   split out before pre-tokenizing, longest match first, with single_word, lstrip,
//                  rstrip; ids assigned the way the library assigns them.
//   post_processor null, ByteLevel, TemplateProcessing ("single"), RobertaProcessing,
//                  BertProcessing, or a Sequence of them: used when add_special_tokens is true.
//   decoder        ByteLevel; invalid UTF-8 decodes to U+FFFD per maximal invalid subsequence.
//
// encode() takes valid UTF-8 only (std::invalid_argument naming the byte offset otherwise), as the
// library takes Python str. Results of pre-tokens are cached in a bounded table shared by all
// threads; encode/decode are thread-safe.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "grpo/data/tokenizer.h"

namespace grpo::data {

class BpeTokenizer final : public Tokenizer {
 public:
  // Reads a tokenizer.json (or DIR/tokenizer.json when `path` is a folder).
  static std::unique_ptr<BpeTokenizer> from_file(const std::string& path);
  // Parses tokenizer.json text; `source` names it in error messages.
  static std::unique_ptr<BpeTokenizer> from_json(const std::string& json_text, const std::string& source);

  ~BpeTokenizer() override;

  std::vector<int64_t> encode(std::string_view text, bool add_special_tokens = false) const override;
  std::string decode(const std::vector<int64_t>& ids, bool skip_special_tokens = false) const override;
  int64_t vocab_size() const override;
  std::optional<int64_t> token_to_id(std::string_view token) const override;
  std::optional<std::string> id_to_token(int64_t id) const override;
  bool is_special(int64_t id) const override;

  struct Impl;

 private:
  explicit BpeTokenizer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// A tokenizer.json for tiny models: a BPE with the 256 byte symbols as ids 0..255 (in byte order),
// no merges, a ByteLevel pre-tokenizer without regex or prefix space, a ByteLevel decoder, and
// `special_tokens` as special added tokens with ids 256, 257, ... The HF library and transformers'
// PreTrainedTokenizerFast load it and encode exactly as grpo does: one id per UTF-8 byte, special
// tokens written in the text as one id each.
std::string byte_tokenizer_json(const std::vector<std::string>& special_tokens);

}  // namespace grpo::data
