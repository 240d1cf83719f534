// Byte-level BPE tokenizer: hand-made tokenizer.json files for each rule (merge order, both merge
// forms, ignore_merges, added tokens and their options, Split behaviours, Oniguruma's \s,
// post-processors, lossy UTF-8 decoding), the byte tokenizer, encode_batch, every load error with
// its message, and (TokenizerOracle, with GRPO_TOKENIZER_ORACLE_DIR from tokenizer_oracle.py
// generate) identical ids to the HF `tokenizers` library on every line of its corpus.
#include "grpo/data/bpe_tokenizer.h"

#include <nlohmann/json.hpp>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "test_util.h"

namespace grpo::data {
namespace {

using json = nlohmann::json;
using grpo::test::TempDir;
using Ids = std::vector<int64_t>;

// GPT-2's byte-to-unicode symbol of byte b, as UTF-8.
std::string byte_symbol(unsigned char b) {
  const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
  int n = 0;
  for (int c = 0; c < b; ++c) {
    if (!((c >= '!' && c <= '~') || (c >= 0xA1 && c <= 0xAC) || (c >= 0xAE))) ++n;
  }
  const char32_t cp = printable ? b : 256 + n;
  std::string s;
  if (cp < 0x80) {
    s += static_cast<char>(cp);
  } else {
    s += static_cast<char>(0xC0 | (cp >> 6));
    s += static_cast<char>(0x80 | (cp & 0x3F));
  }
  return s;
}

// A byte-level BPE tokenizer.json: the 256 byte symbols as ids 0..255, then `extra` tokens
// (written with byte symbols, e.g. "Ġthe") as 256, 257, ..., `merges` as given.
json make_tokenizer(const std::vector<std::string>& extra, const json& merges) {
  json vocab = json::object();
  for (int b = 0; b < 256; ++b) vocab[byte_symbol(static_cast<unsigned char>(b))] = b;
  for (size_t i = 0; i < extra.size(); ++i) vocab[extra[i]] = 256 + static_cast<int>(i);
  const json byte_level = {
      {"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", true}};
  return {{"version", "1.0"},
          {"added_tokens", json::array()},
          {"normalizer", nullptr},
          {"pre_tokenizer", byte_level},
          {"post_processor", nullptr},
          {"decoder", byte_level},
          {"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", merges}}}};
}

std::unique_ptr<BpeTokenizer> load(const json& j) { return BpeTokenizer::from_json(j.dump(), "test.json"); }

// Ids of the bytes of `s` (a tokenizer without merges).
Ids bytes_of(std::string_view s) {
  Ids out;
  for (const char c : s) out.push_back(static_cast<unsigned char>(c));
  return out;
}

json added_token(const std::string& content, int id, bool special, json extra = json::object()) {
  json t = {{"id", id},        {"content", content},     {"single_word", false}, {"lstrip", false},
            {"rstrip", false}, {"normalized", !special}, {"special", special}};
  for (auto& [k, v] : extra.items()) t[k] = v;
  return t;
}

TEST(BpeTokenizer, MergesLowestRankFirstThenLeftmost) {
  // a b c with merges: (b c) first, then (a bc); "ab" exists but ranks after.
  auto tok = load(make_tokenizer({"bc", "abc", "ab"}, json::array({"b c", "a bc", "a b"})));
  EXPECT_EQ(tok->encode("abc"), (Ids{257}));
  EXPECT_EQ(tok->encode("ab"), (Ids{258}));
  EXPECT_EQ(tok->encode("abab"), (Ids{258, 258}));
  // Ties in rank resolve leftmost: "aaa" with (a a) gives "aa" + "a".
  auto tok2 = load(make_tokenizer({"aa"}, json::array({"a a"})));
  EXPECT_EQ(tok2->encode("aaa"), (Ids{256, 'a'}));
  EXPECT_EQ(tok2->encode("aaaa"), (Ids{256, 256}));
  // A long word takes the heap path: the same rule.
  EXPECT_EQ(tok2->encode(std::string(101, 'a')), [] {
    Ids ids(50, 256);
    ids.push_back('a');
    return ids;
  }());
}

TEST(BpeTokenizer, MergesAsStringsOrPairsGiveTheSameIds) {
  const std::vector<std::string> extra = {"Ġt", "he", "Ġthe"};
  auto strings = load(make_tokenizer(extra, json::array({"Ġ t", "h e", "Ġt he"})));
  auto pairs = load(make_tokenizer(
      extra, json::array({json::array({"Ġ", "t"}), json::array({"h", "e"}), json::array({"Ġt", "he"})})));
  auto mixed = load(make_tokenizer(extra, json::array({"Ġ t", json::array({"h", "e"}), "Ġt he"})));
  const std::string text = "in the theme, the end";
  EXPECT_EQ(strings->encode(" the"), (Ids{258}));
  EXPECT_EQ(strings->encode(text), pairs->encode(text));
  EXPECT_EQ(strings->encode(text), mixed->encode(text));
  EXPECT_EQ(strings->decode(strings->encode(text)), text);
  // Without "Ġ t", "Ġt" is never formed, so neither is "Ġthe".
  auto partial = load(make_tokenizer(extra, json::array({"h e", "Ġt he"})));
  EXPECT_EQ(partial->encode(" the"), (Ids{' ', 't', 257}));
}

TEST(BpeTokenizer, IgnoreMergesEmitsVocabularyWordsWhole) {
  // "abc" is in the vocabulary but no merge chain builds it.
  json j = make_tokenizer({"ab", "abc"}, json::array({"a b"}));
  EXPECT_EQ(load(j)->encode("abc"), (Ids{256, 'c'}));
  j["model"]["ignore_merges"] = true;
  EXPECT_EQ(load(j)->encode("abc"), (Ids{257}));
  EXPECT_EQ(load(j)->encode("abcab"), (Ids{256, 'c', 256}));  // "abcab" is not in the vocabulary
}

TEST(BpeTokenizer, UnknownBytesBecomeUnkOrAreDropped) {
  json j = make_tokenizer({"<unk>"}, json::array());
  j["model"]["vocab"].erase(byte_symbol('x'));
  j["model"]["vocab"].erase(byte_symbol('y'));
  EXPECT_EQ(load(j)->encode("axyb"), (Ids{'a', 'b'}));
  j["model"]["unk_token"] = "<unk>";
  EXPECT_EQ(load(j)->encode("axyb"), (Ids{'a', 256, 256, 'b'}));
  j["model"]["fuse_unk"] = true;
  EXPECT_EQ(load(j)->encode("axyb"), (Ids{'a', 256, 'b'}));
}

TEST(BpeTokenizer, AddedTokensAreSplitOutLongestFirstAndNeverMerged) {
  json j = make_tokenizer({"<a", "<a>"}, json::array({"< a", "<a >"}));
  j["added_tokens"] = json::array(
      {added_token("<a>", 257, true), added_token("<a><b>", 258, true), added_token("end", 259, false)});
  auto tok = load(j);
  EXPECT_EQ(tok->vocab_size(), 260);
  // "<a><b>" is longer than "<a>" at the same position; "<a>" keeps its model id.
  EXPECT_EQ(tok->encode("x<a><b><a>y"), (Ids{'x', 258, 257, 'y'}));
  EXPECT_EQ(tok->encode("weekend"), (Ids{'w', 'e', 'e', 'k', 259}));
  EXPECT_EQ(tok->token_to_id("<a><b>"), 258);
  EXPECT_EQ(tok->id_to_token(259), "end");
  EXPECT_TRUE(tok->is_special(258));
  EXPECT_FALSE(tok->is_special(259));
  EXPECT_FALSE(tok->is_special(5));
  EXPECT_EQ(tok->decode({'x', 258, 259}), "x<a><b>end");
  EXPECT_EQ(tok->decode({'x', 258, 259, 257}, true), "xend");
}

TEST(BpeTokenizer, AddedTokenIdsAreAssignedAsTheLibraryDoes) {
  // The library ignores the ids written in added_tokens (it warns): known contents keep their
  // id, new ones count up from the model's vocabulary size.
  json j = make_tokenizer({"known"}, json::array());
  j["added_tokens"] = json::array({added_token("new", 999, true), added_token("known", 5, true)});
  auto tok = load(j);
  EXPECT_EQ(tok->token_to_id("new"), 257);
  EXPECT_EQ(tok->token_to_id("known"), 256);
  EXPECT_EQ(tok->vocab_size(), 258);
  EXPECT_EQ(tok->encode("a new known"), (Ids{'a', ' ', 257, ' ', 256}));
}

TEST(BpeTokenizer, AddedTokenOptions) {
  json j = make_tokenizer({}, json::array());
  j["added_tokens"] = json::array({added_token("[W]", 256, false, {{"single_word", true}}),
                                   added_token("<L>", 257, true, {{"lstrip", true}}),
                                   added_token("<R>", 258, true, {{"rstrip", true}})});
  auto tok = load(j);
  EXPECT_EQ(tok->encode("a [W] b"), (Ids{'a', ' ', 256, ' ', 'b'}));
  EXPECT_EQ(tok->encode("a[W] b"), bytes_of("a[W] b"));  // a word character before it
  EXPECT_EQ(tok->encode("[W]é"), bytes_of("[W]é"));      // é is a word character
  EXPECT_EQ(tok->encode("a  \t<L>b"), (Ids{'a', 257, 'b'}));
  EXPECT_EQ(tok->encode("a<R> \u3000 b"), (Ids{'a', 258, 'b'}));
}

TEST(BpeTokenizer, SplitBehaviours) {
  // With no merges, a pre-token's ids are its bytes, so only Removed pieces show; the behaviours
  // that merge pieces are checked against the library in TokenizerOracle (split_behaviors).
  json j = make_tokenizer({}, json::array());
  const json byte_level = {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", false}};
  j["pre_tokenizer"] = {
      {"type", "Sequence"},
      {"pretokenizers",
       json::array({{{"type", "Split"}, {"pattern", {{"Regex", "\\s+"}}}, {"behavior", "Removed"}, {"invert", false}},
                    byte_level})}};
  // Oniguruma's \s (as the library's): U+0085 and U+3000 are whitespace, U+180E and U+200B are not.
  EXPECT_EQ(load(j)->encode("a b\u0085c\u3000d\u180ee\u200bf"), bytes_of("abcd\u180ee\u200bf"));
  j["pre_tokenizer"]["pretokenizers"][0]["invert"] = true;  // now the non-space runs are removed
  EXPECT_EQ(load(j)->encode("a b\u0085c"), bytes_of(" \u0085"));
  j["pre_tokenizer"]["pretokenizers"][0]["pattern"] = {{"String", "."}};  // a literal dot
  j["pre_tokenizer"]["pretokenizers"][0]["invert"] = false;
  EXPECT_EQ(load(j)->encode("a.b.c"), bytes_of("abc"));
}

TEST(BpeTokenizer, ByteLevelAddPrefixSpace) {
  json j = make_tokenizer({"Ġa"}, json::array({"Ġ a"}));
  j["pre_tokenizer"]["add_prefix_space"] = true;
  j["added_tokens"] = json::array({added_token("<s>", 257, true)});
  auto tok = load(j);
  EXPECT_EQ(tok->encode("a"), (Ids{256}));
  EXPECT_EQ(tok->encode(" a"), (Ids{256}));
  EXPECT_EQ(tok->encode("a<s>a"), (Ids{256, 257, 256}));  // each piece between added tokens
}

TEST(BpeTokenizer, PostProcessorAddsSpecialTokensOnRequest) {
  json j = make_tokenizer({}, json::array());
  j["added_tokens"] = json::array({added_token("<bos>", 256, true), added_token("<eos>", 257, true)});
  const auto special = [](const std::string& name) { return json{{"SpecialToken", {{"id", name}, {"type_id", 0}}}}; };
  const auto entry = [](const std::string& name, int id) {
    return json{{"id", name}, {"ids", json::array({id})}, {"tokens", json::array({name})}};
  };
  json template_processing = {
      {"type", "TemplateProcessing"},
      {"single", json::array({special("<bos>"), json{{"Sequence", {{"id", "A"}, {"type_id", 0}}}}, special("<eos>")})},
      {"pair", json::array()},
      {"special_tokens", {{"<bos>", entry("<bos>", 256)}, {"<eos>", entry("<eos>", 257)}}}};
  json byte_level = {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", false}};
  j["post_processor"] = {{"type", "Sequence"}, {"processors", json::array({byte_level, template_processing})}};
  auto tok = load(j);
  EXPECT_EQ(tok->encode("hi"), (Ids{'h', 'i'}));
  EXPECT_EQ(tok->encode("hi", true), (Ids{256, 'h', 'i', 257}));
  EXPECT_EQ(tok->encode("", true), (Ids{256, 257}));
  j["post_processor"] = {
      {"type", "RobertaProcessing"}, {"sep", json::array({"<eos>", 257})}, {"cls", json::array({"<bos>", 256})}};
  EXPECT_EQ(load(j)->encode("hi", true), (Ids{256, 'h', 'i', 257}));
}

TEST(BpeTokenizer, DecodeReplacesInvalidUtf8AsTheLibraryDoes) {
  auto tok = load(make_tokenizer({}, json::array()));
  // Each maximal invalid subsequence becomes one U+FFFD (Rust's from_utf8_lossy, Python's "replace").
  EXPECT_EQ(tok->decode(bytes_of("\xED\xA0\x80")), "\uFFFD\uFFFD\uFFFD");
  EXPECT_EQ(tok->decode(bytes_of("\xE2\x82"
                                 "a\xF0\x9F\xC0\x80\xF4\x90\x80")),
            "\uFFFD"
            "a\uFFFD\uFFFD\uFFFD\uFFFD\uFFFD\uFFFD");
  EXPECT_EQ(tok->decode(bytes_of("\xF0\x9F\x98\x80")), "\U0001F600");
  EXPECT_EQ(tok->decode(bytes_of("\xF0\x9F\x98")), "\uFFFD");
}

TEST(BpeTokenizer, ByteTokenizerJson) {
  const std::vector<std::string> specials = {"<|im_start|>", "<|im_end|>", "<think>"};
  auto tok = BpeTokenizer::from_json(byte_tokenizer_json(specials), "byte");
  EXPECT_EQ(tok->vocab_size(), 259);
  const std::string text = "<|im_start|>user\nhé 😀<think>\t</think><|im_end|>";
  Ids expected = {256};
  for (const int64_t b : bytes_of("user\nhé 😀")) expected.push_back(b);
  expected.push_back(258);
  for (const int64_t b : bytes_of("\t</think>")) expected.push_back(b);
  expected.push_back(257);
  EXPECT_EQ(tok->encode(text), expected);
  EXPECT_EQ(tok->encode(text, true), expected);  // no post-processor
  EXPECT_EQ(tok->decode(expected), text);
  EXPECT_EQ(tok->decode(expected, true), "user\nhé 😀\t</think>");
  EXPECT_EQ(tok->token_to_id("<think>"), 258);
  EXPECT_EQ(tok->token_to_id("Ġ"), 32);
  EXPECT_EQ(tok->id_to_token(10), "Ċ");
  EXPECT_TRUE(tok->is_special(256));
  GRPO_EXPECT_THROW_MESSAGE(byte_tokenizer_json({"<a>", "<a>"}), std::invalid_argument,
                            "byte_tokenizer_json: special token \"<a>\" must be non-empty valid UTF-8, not a byte "
                            "symbol, and given once");
}

TEST(BpeTokenizer, EncodeBatchEqualsEncode) {
  auto tok = BpeTokenizer::from_json(byte_tokenizer_json({"<s>"}), "byte");
  std::vector<std::string> texts;
  for (int i = 0; i < 500; ++i) texts.push_back(std::string(i % 37, 'a') + "<s>" + std::to_string(i));
  const auto batch = tok->encode_batch(texts, false, 4);
  ASSERT_EQ(batch.size(), texts.size());
  for (size_t i = 0; i < texts.size(); ++i) EXPECT_EQ(batch[i], tok->encode(texts[i])) << i;
  EXPECT_EQ(tok->encode_batch({}, false, 4).size(), 0u);
  texts[321] = "bad \xFF byte";
  GRPO_EXPECT_THROW_MESSAGE(tok->encode_batch(texts, false, 4), std::invalid_argument,
                            "encode: text is not valid UTF-8 (byte 4 of 10)");
}

TEST(BpeTokenizer, LongRunsDoNotOverflowTheRegexStack) {
  json j = make_tokenizer({"ĠĠ"}, json::array({"Ġ Ġ"}));
  auto tok = load(j);
  const std::string spaces(200000, ' ');
  const Ids ids = tok->encode(spaces + "x");
  EXPECT_EQ(tok->decode(ids), spaces + "x");
  EXPECT_EQ(ids.size(), 100002u);  // 199999 spaces: 99999 "ĠĠ" and one "Ġ"; then " x": "Ġ" "x"
}

TEST(BpeTokenizer, LoadsAFolderWithTokenizerJson) {
  TempDir dir;
  dir.write("model/tokenizer.json", byte_tokenizer_json({}));
  EXPECT_EQ(load_tokenizer(dir.path("model"))->encode("hi"), (Ids{'h', 'i'}));
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

void expect_load_error(const json& j, const std::string& message) {
  TempDir dir;
  const std::string path = dir.write("tokenizer.json", j.dump());
  GRPO_EXPECT_THROW_MESSAGE(load_tokenizer(path), std::runtime_error, path + ": " + message);
}

TEST(BpeTokenizerErrors, UnsupportedModelType) {
  json j = make_tokenizer({}, json::array());
  j["model"]["type"] = "WordPiece";
  expect_load_error(j, "model type 'WordPiece' is not supported (expected 'BPE')");
}

TEST(BpeTokenizerErrors, UnsupportedPreTokenizer) {
  json j = make_tokenizer({}, json::array());
  j["pre_tokenizer"] = {{"type", "Metaspace"}, {"replacement", "▁"}};
  expect_load_error(j,
                    "pre_tokenizer 'Metaspace' is not supported (expected ByteLevel, or a Sequence of Split "
                    "steps ending with ByteLevel)");
  j["pre_tokenizer"] = nullptr;
  expect_load_error(j,
                    "pre_tokenizer 'null' is not supported (expected ByteLevel, or a Sequence of Split steps "
                    "ending with ByteLevel)");
  j["pre_tokenizer"] = {{"type", "Sequence"},
                        {"pretokenizers", json::array({{{"type", "ByteLevel"}, {"use_regex", false}},
                                                       {{"type", "Digits"}, {"individual_digits", true}}})}};
  expect_load_error(j,
                    "pre_tokenizer.pretokenizers[0] ByteLevel must be the last step (expected ByteLevel, or a "
                    "Sequence of Split steps ending with ByteLevel)");
  j["pre_tokenizer"]["pretokenizers"] = json::array(
      {{{"type", "Split"}, {"pattern", {{"Regex", "[a-z&&[^b]]"}}}, {"behavior", "Isolated"}, {"invert", false}},
       {{"type", "ByteLevel"}}});
  expect_load_error(j,
                    "pre_tokenizer.pretokenizers[0]: regex \"[a-z&&[^b]]\" uses a nested character class or '&&' "
                    "(Oniguruma only), which is not "
                    "supported");
  j["pre_tokenizer"]["pretokenizers"][0]["pattern"] = {{"Regex", "(a"}};
  expect_load_error(j,
                    "pre_tokenizer.pretokenizers[0]: cannot compile regex \"(a\": missing closing parenthesis at "
                    "offset 2");
  j["pre_tokenizer"]["pretokenizers"][0]["pattern"] = {{"Regex", "a"}};
  j["pre_tokenizer"]["pretokenizers"][0]["behavior"] = "Sideways";
  expect_load_error(j,
                    "pre_tokenizer.pretokenizers[0] Split behavior \"Sideways\" is not one of Removed, Isolated, "
                    "MergedWithPrevious, MergedWithNext, Contiguous");
}

TEST(BpeTokenizerErrors, UnsupportedNormalizerDecoderPostProcessor) {
  json j = make_tokenizer({}, json::array());
  j["normalizer"] = {{"type", "NFKC"}};
  expect_load_error(j, "normalizer 'NFKC' is not supported (expected null or NFC)");
  j["normalizer"] = nullptr;
  j["decoder"] = {{"type", "WordPiece"}, {"prefix", "##"}};
  expect_load_error(j, "decoder 'WordPiece' is not supported (expected ByteLevel)");
  j["decoder"] = {{"type", "ByteLevel"}};
  j["post_processor"] = {{"type", "BertLike"}};
  expect_load_error(j,
                    "post_processor 'BertLike' is not supported (expected null, ByteLevel, TemplateProcessing, "
                    "RobertaProcessing, BertProcessing or a Sequence of them)");
  j["post_processor"] = nullptr;
  j["model"]["dropout"] = 0.1;
  expect_load_error(j, "BPE dropout 0.1 is not supported (expected null)");
}

TEST(BpeTokenizerErrors, MissingFileAndMalformedJson) {
  TempDir dir;
  const std::string missing = dir.path("nope.json");
  GRPO_EXPECT_THROW_MESSAGE(load_tokenizer(missing), std::runtime_error,
                            "cannot read '" + missing + "': No such file or directory");
  const std::string bad = dir.write("bad.json", "{\"model\": {\"type\": \"BPE\",}");
  try {
    load_tokenizer(bad);
    ADD_FAILURE() << "expected a JSON error";
  } catch (const std::runtime_error& e) {
    const std::string what = e.what();
    EXPECT_EQ(what.rfind(bad + ": invalid JSON: [json.exception.parse_error.101] parse error at line 1, column 26", 0),
              0u)
        << what;
  }
}

TEST(BpeTokenizerErrors, MergesWithUnknownTokens) {
  expect_load_error(make_tokenizer({}, json::array({"a zz"})),
                    "model.merges[0] (\"a\", \"zz\"): \"zz\" is not in the vocabulary");
  expect_load_error(make_tokenizer({"ab"}, json::array({"a b", "ab c"})),
                    "model.merges[1] (\"ab\", \"c\"): the merged token \"abc\" is not in the vocabulary");
  expect_load_error(make_tokenizer({}, json::array({"a b c"})),
                    "model.merges[0] \"a b c\" must be two tokens separated by one space");
  expect_load_error(make_tokenizer({}, json::array({json::array({"a"})})),
                    "model.merges[0] must be \"a b\" or [\"a\", \"b\"], found [\"a\"]");
}

TEST(BpeTokenizerErrors, DecodeOutOfRangeAndInvalidUtf8) {
  auto tok = BpeTokenizer::from_json(byte_tokenizer_json({"<s>"}), "byte.json");
  GRPO_EXPECT_THROW_MESSAGE(tok->decode({1, 257}), std::out_of_range,
                            "decode: id 257 is not in the vocabulary (byte.json: ids 0..256)");
  GRPO_EXPECT_THROW_MESSAGE(tok->decode({-1}), std::out_of_range,
                            "decode: id -1 is not in the vocabulary (byte.json: ids 0..256)");
  GRPO_EXPECT_THROW_MESSAGE(tok->encode("ok\xC3("), std::invalid_argument,
                            "encode: text is not valid UTF-8 (byte 2 of 4)");
  EXPECT_EQ(tok->id_to_token(257), std::nullopt);
  EXPECT_EQ(tok->token_to_id("nope"), std::nullopt);
}

// ---------------------------------------------------------------------------------------------
// Against the HF tokenizers library (fixtures from tests/data/tokenizer_oracle.py generate)
// ---------------------------------------------------------------------------------------------

class TokenizerOracle : public ::testing::Test {
 protected:
  void SetUp() override {
    const char* dir = std::getenv("GRPO_TOKENIZER_ORACLE_DIR");
    if (dir == nullptr || !*dir) GTEST_SKIP() << "GRPO_TOKENIZER_ORACLE_DIR is not set (tokenizer_oracle.py generate)";
    dir_ = dir;
    manifest_ = json::parse(grpo::test::read_text(dir_ + "/manifest.json"));
    for (const json& line : read_jsonl(dir_ + "/" + manifest_["corpus"].get<std::string>())) {
      corpus_.push_back(line.get<std::string>());
    }
    ASSERT_GE(corpus_.size(), 10000u);
  }

  static std::vector<json> read_jsonl(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    EXPECT_TRUE(in) << "cannot read " << path;
    std::vector<json> out;
    std::string line;
    while (std::getline(in, line)) out.push_back(json::parse(line));
    return out;
  }

  static std::string show(const Ids& ids) {
    std::ostringstream s;
    s << "[";
    for (size_t i = 0; i < ids.size() && i < 400; ++i) s << (i ? ", " : "") << ids[i];
    if (ids.size() > 400) s << ", ... (" << ids.size() << " ids)";
    s << "]";
    return s.str();
  }

  static std::string excerpt(const std::string& text) {
    return json(text.size() > 400 ? text.substr(0, 400) + "..." : text)
        .dump(-1, ' ', false, json::error_handler_t::replace);
  }

  std::string dir_;
  json manifest_;
  std::vector<std::string> corpus_;
};

TEST_F(TokenizerOracle, EncodeGivesTheLibrarysIdsOnEveryLine) {
  for (const json& entry : manifest_["tokenizers"]) {
    const std::string name = entry["name"];
    SCOPED_TRACE(name);
    auto tok = load_tokenizer(dir_ + "/" + entry["file"].get<std::string>());
    EXPECT_EQ(tok->vocab_size(), entry["vocab_size"].get<int64_t>());
    const auto expected = read_jsonl(dir_ + "/" + entry["ids"].get<std::string>());
    ASSERT_EQ(expected.size(), corpus_.size());
    size_t mismatches = 0, special_mismatches = 0, roundtrip_failures = 0;
    for (size_t i = 0; i < corpus_.size(); ++i) {
      const Ids ours = tok->encode(corpus_[i]);
      const Ids theirs = expected[i]["ids"].get<Ids>();
      if (ours != theirs && ++mismatches <= 5) {
        ADD_FAILURE() << name << " line " << i << ": " << excerpt(corpus_[i]) << "\n  ours:       " << show(ours)
                      << "\n  tokenizers: " << show(theirs);
      }
      const Ids ours_special = tok->encode(corpus_[i], true);
      if (ours_special != expected[i]["special"].get<Ids>() && ++special_mismatches <= 5) {
        ADD_FAILURE() << name << " line " << i << " (add_special_tokens): " << excerpt(corpus_[i])
                      << "\n  ours:       " << show(ours_special)
                      << "\n  tokenizers: " << show(expected[i]["special"].get<Ids>());
      }
      if (entry["roundtrip"].get<bool>() && tok->decode(ours) != corpus_[i] && ++roundtrip_failures <= 5) {
        ADD_FAILURE() << name << " line " << i << ": decode(encode(x)) != x for " << excerpt(corpus_[i]);
      }
    }
    EXPECT_EQ(mismatches, 0u) << name << ": lines whose ids differ from the library's, of " << corpus_.size();
    EXPECT_EQ(special_mismatches, 0u) << name << ": lines whose ids with special tokens differ";
    EXPECT_EQ(roundtrip_failures, 0u) << name << ": lines that do not round-trip";
  }
}

TEST_F(TokenizerOracle, DecodeGivesTheLibrarysText) {
  for (const json& entry : manifest_["tokenizers"]) {
    const std::string name = entry["name"];
    auto tok = load_tokenizer(dir_ + "/" + entry["file"].get<std::string>());
    size_t failures = 0;
    for (const json& c : read_jsonl(dir_ + "/" + entry["decode_cases"].get<std::string>())) {
      const Ids ids = c["ids"].get<Ids>();
      const std::string text = tok->decode(ids), skip = tok->decode(ids, true);
      if ((text != c["text"].get<std::string>() || skip != c["skip"].get<std::string>()) && ++failures <= 5) {
        ADD_FAILURE() << name << " decode " << show(ids) << "\n  ours:       " << excerpt(text) << " / "
                      << excerpt(skip) << "\n  tokenizers: " << excerpt(c["text"]) << " / " << excerpt(c["skip"]);
      }
    }
    EXPECT_EQ(failures, 0u) << name;
  }
}

TEST_F(TokenizerOracle, EncodeBatchOnThreadsEqualsEncode) {
  const json& entry = manifest_["tokenizers"][0];
  auto tok = load_tokenizer(dir_ + "/" + entry["file"].get<std::string>());
  const auto batch = tok->encode_batch(corpus_, false, 8);
  const auto expected = read_jsonl(dir_ + "/" + entry["ids"].get<std::string>());
  for (size_t i = 0; i < corpus_.size(); ++i) ASSERT_EQ(batch[i], expected[i]["ids"].get<Ids>()) << "line " << i;
}

// Writes the byte tokenizer and its ids of the corpus for `tokenizer_oracle.py check`, which
// loads it with the library and with transformers.
TEST_F(TokenizerOracle, ByteTokenizerForTheLibrary) {
  const std::vector<std::string> specials = {"<|im_start|>", "<|im_end|>", "<think>", "</think>", "<|endoftext|>"};
  const std::string out = dir_ + "/ours";
  std::filesystem::create_directories(out);
  const std::string text = byte_tokenizer_json(specials);
  std::ofstream(out + "/byte_tokenizer.json", std::ios::binary) << text;
  std::ofstream(out + "/byte_specials.json", std::ios::binary) << json(specials).dump();
  auto tok = load_tokenizer(out + "/byte_tokenizer.json");
  std::ofstream ids(out + "/byte_ids.jsonl", std::ios::binary);
  for (const std::string& line : corpus_) {
    const Ids encoded = tok->encode(line);
    ASSERT_EQ(tok->decode(encoded), line);
    ids << json(encoded).dump() << "\n";
  }
}

TEST(BpeTokenizer, NfcNormalizerComposesBeforeTokenizing) {
  // Qwen2 ships an NFC normalizer: "e" + U+0301 (combining acute) and the precomposed U+00E9 must
  // give the same ids, and decoding gives the composed form. A non-normalized added token is
  // matched on the raw text, before normalization.
  json j = json::parse(byte_tokenizer_json({"<x\u0301>"}));
  j["normalizer"] = {{"type", "Sequence"}, {"normalizers", json::array({{{"type", "NFC"}}})}};
  const auto tok = load(j);
  const std::string decomposed = "cafe\xCC\x81";
  const std::string composed = "caf\xC3\xA9";
  EXPECT_EQ(tok->encode(decomposed), tok->encode(composed));
  EXPECT_EQ(tok->encode(composed), (Ids{'c', 'a', 'f', 0xC3, 0xA9}));
  EXPECT_EQ(tok->decode(tok->encode(decomposed)), composed);
  const auto special = tok->token_to_id("<x\xCC\x81>");
  ASSERT_TRUE(special.has_value());
  EXPECT_EQ(tok->encode("a<x\xCC\x81>b"), (Ids{'a', *special, 'b'}));
}

}  // namespace
}  // namespace grpo::data
