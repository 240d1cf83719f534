// Byte-level BPE, following the HF `tokenizers` library (0.23) step by step:
//
//   text ─► added tokens split out (non-normalized ones, then normalized ones in the gaps)
//        ─► each gap through the pre-tokenizer steps (Split ..., ByteLevel) ─► pre-tokens
//        ─► each pre-token: ignore_merges lookup, word cache, or BPE merges over its bytes ─► ids
//        ─► post-processor (only with add_special_tokens)
//
// Internally a pre-token stays as raw bytes: the GPT-2 byte-to-unicode mapping is applied to the
// vocabulary once at load (a byte string per token) instead of to the text, so BPE starts from one
// symbol per byte. The library's regexes are Oniguruma (Ruby syntax); ours are PCRE2 with the
// translation in translate_pattern().
#include "grpo/data/bpe_tokenizer.h"

#include <unicode/normalizer2.h>
#include <unicode/unistr.h>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <array>
#include <atomic>
#include <climits>
#include <cstring>
#include <filesystem>
#include <functional>
#include <stdexcept>
#include <unordered_map>
#include <unordered_set>

#include "grpo/core/files.h"
#include "grpo/core/log.h"

namespace grpo::data {
namespace {

using json = nlohmann::json;

// ---------------------------------------------------------------------------------------------
// GPT-2's byte <-> unicode mapping: printable bytes map to themselves, the others to U+0100 on.
// ---------------------------------------------------------------------------------------------

struct ByteUnicode {
  std::array<char32_t, 256> byte_to_cp{};
  std::array<int16_t, 512> cp_to_byte{};  // -1: not a mapped code point (all mapped ones are < 512)
};

const ByteUnicode& byte_unicode() {
  static const ByteUnicode table = [] {
    ByteUnicode t;
    t.cp_to_byte.fill(-1);
    int n = 0;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      t.byte_to_cp[b] = printable ? static_cast<char32_t>(b) : static_cast<char32_t>(256 + n++);
      t.cp_to_byte[t.byte_to_cp[b]] = static_cast<int16_t>(b);
    }
    return t;
  }();
  return table;
}

// ---------------------------------------------------------------------------------------------
// UTF-8
// ---------------------------------------------------------------------------------------------

void utf8_append(std::string& out, char32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

// Length of the well-formed UTF-8 sequence at s[i] (Unicode Table 3-7), or 0 when there is none;
// `valid_prefix` then gets the length of its maximal valid prefix (at least 1 byte is consumed).
size_t utf8_sequence(std::string_view s, size_t i, size_t& valid_prefix) {
  const auto at = [&](size_t k) { return static_cast<unsigned char>(s[k]); };
  const unsigned char b = at(i);
  size_t width = 0;
  unsigned char lo = 0x80, hi = 0xBF;
  if (b < 0x80) return 1;
  if (b >= 0xC2 && b <= 0xDF) {
    width = 2;
  } else if (b >= 0xE0 && b <= 0xEF) {
    width = 3;
    if (b == 0xE0) lo = 0xA0;
    if (b == 0xED) hi = 0x9F;
  } else if (b >= 0xF0 && b <= 0xF4) {
    width = 4;
    if (b == 0xF0) lo = 0x90;
    if (b == 0xF4) hi = 0x8F;
  } else {
    valid_prefix = 1;
    return 0;
  }
  for (size_t k = 1; k < width; ++k) {
    const bool ok = i + k < s.size() && at(i + k) >= (k == 1 ? lo : 0x80) && at(i + k) <= (k == 1 ? hi : 0xBF);
    if (!ok) {
      valid_prefix = k;
      return 0;
    }
  }
  return width;
}

// Offset of the first byte that does not start a well-formed UTF-8 sequence, or npos.
size_t utf8_invalid_offset(std::string_view s) {
  size_t i = 0;
  const size_t n = s.size();
  while (i < n) {
    if (i + 8 <= n) {  // fast path: 8 ASCII bytes at a time
      uint64_t w;
      std::memcpy(&w, s.data() + i, 8);
      if ((w & 0x8080808080808080ull) == 0) {
        i += 8;
        continue;
      }
    }
    size_t prefix = 0;
    const size_t len = utf8_sequence(s, i, prefix);
    if (len == 0) return i;
    i += len;
  }
  return std::string_view::npos;
}

// Rust's String::from_utf8_lossy: each maximal invalid subsequence becomes one U+FFFD.
std::string utf8_lossy(std::string&& bytes) {
  if (utf8_invalid_offset(bytes) == std::string_view::npos) return std::move(bytes);
  std::string out;
  out.reserve(bytes.size() + 16);
  const std::string_view s(bytes);
  size_t i = 0;
  while (i < s.size()) {
    size_t prefix = 0;
    const size_t len = utf8_sequence(s, i, prefix);
    if (len > 0) {
      out.append(s.substr(i, len));
      i += len;
    } else {
      out += "\xEF\xBF\xBD";
      i += prefix;
    }
  }
  return out;
}

// The code point at s[i] (valid UTF-8) and its length.
char32_t utf8_decode(std::string_view s, size_t i, size_t& len) {
  const auto b = [&](size_t k) { return static_cast<char32_t>(static_cast<unsigned char>(s[i + k])); };
  const char32_t c = b(0);
  if (c < 0x80) {
    len = 1;
    return c;
  }
  if (c < 0xE0) {
    len = 2;
    return ((c & 0x1F) << 6) | (b(1) & 0x3F);
  }
  if (c < 0xF0) {
    len = 3;
    return ((c & 0x0F) << 12) | ((b(1) & 0x3F) << 6) | (b(2) & 0x3F);
  }
  len = 4;
  return ((c & 0x07) << 18) | ((b(1) & 0x3F) << 12) | ((b(2) & 0x3F) << 6) | (b(3) & 0x3F);
}

size_t utf8_char_length(unsigned char lead) { return lead < 0x80 ? 1 : lead < 0xE0 ? 2 : lead < 0xF0 ? 3 : 4; }

// Start of the last character of s[0, end).
size_t utf8_last_start(std::string_view s, size_t end) {
  size_t i = end - 1;
  while (i > 0 && (static_cast<unsigned char>(s[i]) & 0xC0) == 0x80) --i;
  return i;
}

// A readable form of a token or text for error messages.
std::string quote_json(std::string_view s) {
  return json(std::string(s)).dump(-1, ' ', false, json::error_handler_t::replace);
}

// ---------------------------------------------------------------------------------------------
// Hashing and the word cache
// ---------------------------------------------------------------------------------------------

uint64_t mix64(uint64_t x) {
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdull;
  x ^= x >> 33;
  x *= 0xc4ceb9fe1a85ec53ull;
  x ^= x >> 33;
  return x;
}

uint64_t hash_bytes(std::string_view s) {
  const char* p = s.data();
  size_t n = s.size();
  uint64_t h = 0x9E3779B97F4A7C15ull ^ (n * 0x2545F4914F6CDD1Dull);
  while (n >= 8) {
    uint64_t k;
    std::memcpy(&k, p, 8);
    h = (h ^ k) * 0x9FB21C651E98DF25ull;
    h ^= h >> 29;
    p += 8;
    n -= 8;
  }
  if (n > 0) {
    uint64_t k = 0;
    std::memcpy(&k, p, n);
    h = (h ^ k) * 0x9FB21C651E98DF25ull;
  }
  return mix64(h);
}

struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return hash_bytes(s); }
};
using StringMap = std::unordered_map<std::string, int32_t, StringHash, std::equal_to<>>;

// Pre-token bytes -> ids, shared by all threads without locks: an insert-only open-addressing
// table whose slots are published with release stores. It stops taking entries when half full
// (about kWordCacheSlots / 2 words), as the library's cache stops at its capacity.
class WordCache {
 public:
  static constexpr size_t kSlots = size_t{1} << 18;
  static constexpr size_t kMaxWordBytes = 255;  // longer pre-tokens are not cached (as in the library)

  WordCache() : slots_(new std::atomic<Entry*>[kSlots]) {
    for (size_t i = 0; i < kSlots; ++i) slots_[i].store(nullptr, std::memory_order_relaxed);
  }
  ~WordCache() {
    for (size_t i = 0; i < kSlots; ++i) ::operator delete(slots_[i].load(std::memory_order_relaxed));
  }
  WordCache(const WordCache&) = delete;
  WordCache& operator=(const WordCache&) = delete;

  bool lookup(std::string_view key, uint64_t hash, std::vector<int64_t>& out) const {
    for (size_t i = hash & (kSlots - 1);; i = (i + 1) & (kSlots - 1)) {
      const Entry* e = slots_[i].load(std::memory_order_acquire);
      if (e == nullptr) return false;
      if (e->hash == hash && e->key_len == key.size() && std::memcmp(e->key(), key.data(), key.size()) == 0) {
        const int32_t* ids = e->ids();
        out.insert(out.end(), ids, ids + e->n_ids);
        return true;
      }
    }
  }

  void insert(std::string_view key, uint64_t hash, const int64_t* ids, size_t n) {
    if (size_.load(std::memory_order_relaxed) >= kSlots / 2) return;
    const size_t ids_offset = (sizeof(Entry) + key.size() + 3) & ~size_t{3};
    auto* e = static_cast<Entry*>(::operator new(ids_offset + n * sizeof(int32_t)));
    e->hash = hash;
    e->key_len = static_cast<uint32_t>(key.size());
    e->n_ids = static_cast<uint32_t>(n);
    e->ids_offset = static_cast<uint32_t>(ids_offset);
    std::memcpy(e->key(), key.data(), key.size());
    for (size_t k = 0; k < n; ++k) e->ids()[k] = static_cast<int32_t>(ids[k]);
    for (size_t i = hash & (kSlots - 1);; i = (i + 1) & (kSlots - 1)) {
      Entry* cur = slots_[i].load(std::memory_order_acquire);
      if (cur == nullptr) {
        if (slots_[i].compare_exchange_strong(cur, e, std::memory_order_release, std::memory_order_acquire)) {
          size_.fetch_add(1, std::memory_order_relaxed);
          return;
        }
      }
      // `cur` is the entry now in the slot (another thread may just have put it there).
      if (cur->hash == hash && cur->key_len == key.size() && std::memcmp(cur->key(), key.data(), key.size()) == 0) {
        ::operator delete(e);
        return;
      }
    }
  }

 private:
  struct Entry {
    uint64_t hash;
    uint32_t key_len, n_ids, ids_offset;
    char* key() { return reinterpret_cast<char*>(this + 1); }
    const char* key() const { return reinterpret_cast<const char*>(this + 1); }
    int32_t* ids() { return reinterpret_cast<int32_t*>(reinterpret_cast<char*>(this) + ids_offset); }
    const int32_t* ids() const {
      return reinterpret_cast<const int32_t*>(reinterpret_cast<const char*>(this) + ids_offset);
    }
  };
  std::unique_ptr<std::atomic<Entry*>[]> slots_;
  std::atomic<size_t> size_{0};
};

// (left id, right id) -> (rank, merged id): open addressing over 64-bit keys.
class MergeTable {
 public:
  struct Value {
    int32_t rank = -1;
    int32_t id = -1;
  };

  void reserve(size_t n) {
    size_t cap = 16;
    while (cap < 2 * n) cap *= 2;
    keys_.assign(cap, kEmpty);
    values_.assign(cap, Value{});
    mask_ = cap - 1;
  }
  bool empty() const { return size_ == 0; }

  // Later entries for the same pair replace earlier ones (the library collects into a map).
  void put(int32_t a, int32_t b, Value v) {
    const uint64_t key = pack(a, b);
    for (size_t i = mix64(key) & mask_;; i = (i + 1) & mask_) {
      if (keys_[i] == kEmpty) {
        keys_[i] = key;
        values_[i] = v;
        ++size_;
        return;
      }
      if (keys_[i] == key) {
        values_[i] = v;
        return;
      }
    }
  }

  Value get(int32_t a, int32_t b) const {
    if (size_ == 0) return {};
    const uint64_t key = pack(a, b);
    for (size_t i = mix64(key) & mask_;; i = (i + 1) & mask_) {
      if (keys_[i] == key) return values_[i];
      if (keys_[i] == kEmpty) return {};
    }
  }

 private:
  static constexpr uint64_t kEmpty = ~uint64_t{0};  // ids are < 2^31, so no pair packs to this
  static uint64_t pack(int32_t a, int32_t b) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
  }
  std::vector<uint64_t> keys_;
  std::vector<Value> values_;
  size_t mask_ = 0;
  size_t size_ = 0;
};

// ---------------------------------------------------------------------------------------------
// Regexes (PCRE2) with the library's Oniguruma semantics
// ---------------------------------------------------------------------------------------------

// Per-thread PCRE2 state: match data for one match, a JIT stack large enough for long runs.
struct RegexThreadState {
  pcre2_match_data* match_data = nullptr;
  pcre2_match_context* context = nullptr;
  pcre2_jit_stack* jit_stack = nullptr;
  RegexThreadState() {
    match_data = pcre2_match_data_create(1, nullptr);
    context = pcre2_match_context_create(nullptr);
    jit_stack = pcre2_jit_stack_create(64 * 1024, 8 * 1024 * 1024, nullptr);
    if (!match_data || !context || !jit_stack) throw std::bad_alloc();
    pcre2_jit_stack_assign(context, nullptr, jit_stack);
  }
  ~RegexThreadState() {
    pcre2_jit_stack_free(jit_stack);
    pcre2_match_context_free(context);
    pcre2_match_data_free(match_data);
  }
  RegexThreadState(const RegexThreadState&) = delete;
  RegexThreadState& operator=(const RegexThreadState&) = delete;
};

RegexThreadState& regex_thread_state() {
  thread_local RegexThreadState state;
  return state;
}

// Oniguruma's Ruby syntax (the library's SysRegex) to PCRE2:
//   \s \S      Oniguruma's whitespace is Unicode White_Space (U+0085 included, U+180E not);
//              PCRE2's \s is not, so they become \p{White_Space} / \P{White_Space}.
//   \h \H      hex digits in Ruby (horizontal space in PCRE2): \p{AHex} / \P{AHex}.
//   (?m)       dot-matches-newline in Ruby: (?s). ^ and $ always match at line ends in Ruby, so
//              patterns compile with PCRE2_MULTILINE.
//   [a&&b], nested [...] in a class: not available in PCRE2 10.42: rejected.
std::string translate_pattern(std::string_view p, const std::string& where) {
  std::string out;
  out.reserve(p.size() + 32);
  bool in_class = false;
  for (size_t i = 0; i < p.size(); ++i) {
    const char c = p[i];
    if (c == '\\' && i + 1 < p.size()) {
      const char d = p[i + 1];
      ++i;
      if (d == 'Q') {  // \Q...\E quotes literally
        const size_t end = p.find("\\E", i + 1);
        const size_t stop = end == std::string_view::npos ? p.size() : end + 2;
        out.append(p.substr(i - 1, stop - (i - 1)));
        i = stop - 1;
        continue;
      }
      switch (d) {
        case 's': out += "\\p{White_Space}"; break;
        case 'S': out += "\\P{White_Space}"; break;
        case 'h': out += "\\p{AHex}"; break;
        case 'H': out += "\\P{AHex}"; break;
        default: out += c; out += d;
      }
      continue;
    }
    if (in_class) {
      if (c == '[' && i + 1 < p.size() && p[i + 1] == ':') {  // [:alpha:]
        const size_t end = p.find(":]", i + 2);
        if (end == std::string_view::npos) throw std::runtime_error(where + ": unterminated [: in regex");
        out.append(p.substr(i, end + 2 - i));
        i = end + 1;
        continue;
      }
      if (c == '[' || (c == '&' && i + 1 < p.size() && p[i + 1] == '&')) {
        throw std::runtime_error(where + ": regex " + quote_json(p) +
                                 " uses a nested character class or '&&' (Oniguruma only), which is not supported");
      }
      if (c == ']') in_class = false;
      out += c;
      continue;
    }
    out += c;
    if (c == '[') {
      in_class = true;
      if (i + 1 < p.size() && p[i + 1] == '^') out += p[++i];
      if (i + 1 < p.size() && p[i + 1] == ']') out += p[++i];  // a leading ] is literal
    } else if (c == '(' && i + 1 < p.size() && p[i + 1] == '?') {
      out += p[++i];
      while (i + 1 < p.size() && std::strchr("imx-", p[i + 1]) != nullptr) {
        const char o = p[++i];
        out += (o == 'm') ? 's' : o;
      }
    }
  }
  return out;
}

class Regex {
 public:
  Regex(const std::string& pattern, bool literal, const std::string& where) : pattern_(pattern) {
    const std::string translated = literal ? pattern : translate_pattern(pattern, where);
    pcre2_compile_context* cc = pcre2_compile_context_create(nullptr);
    pcre2_set_newline(cc, PCRE2_NEWLINE_LF);
    int error = 0;
    PCRE2_SIZE offset = 0;
    const uint32_t options = literal ? PCRE2_UTF | PCRE2_LITERAL : PCRE2_UTF | PCRE2_UCP | PCRE2_MULTILINE;
    code_ = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(translated.data()), translated.size(), options, &error, &offset,
                          cc);
    pcre2_compile_context_free(cc);
    if (code_ == nullptr) {
      PCRE2_UCHAR message[256];
      pcre2_get_error_message(error, message, sizeof(message));
      throw std::runtime_error(where + ": cannot compile regex " + quote_json(pattern) + ": " +
                               reinterpret_cast<const char*>(message) + " at offset " + std::to_string(offset));
    }
    jit_ = pcre2_jit_compile(code_, PCRE2_JIT_COMPLETE) == 0;
    if (!jit_) log::warn("{}: regex {} runs without PCRE2 JIT (slower)", where, quote_json(pattern));
  }
  ~Regex() { pcre2_code_free(code_); }
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;

  // First match in s at or after `from` (a character boundary): true and [start, end), or false.
  bool search(std::string_view s, size_t from, size_t& start, size_t& end) const {
    RegexThreadState& st = regex_thread_state();
    const auto* subject = reinterpret_cast<PCRE2_SPTR>(s.data());
    const int rc = jit_ ? pcre2_jit_match(code_, subject, s.size(), from, 0, st.match_data, st.context)
                        : pcre2_match(code_, subject, s.size(), from, PCRE2_NO_UTF_CHECK, st.match_data, st.context);
    if (rc == PCRE2_ERROR_NOMATCH) return false;
    if (rc < 0) {
      PCRE2_UCHAR message[256];
      pcre2_get_error_message(rc, message, sizeof(message));
      throw std::runtime_error("regex " + quote_json(pattern_) + " failed on a text of " + std::to_string(s.size()) +
                               " bytes: " + reinterpret_cast<const char*>(message));
    }
    const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(st.match_data);
    start = ov[0];
    end = ov[1];
    return true;
  }

  // Calls f(start, end, is_match) for consecutive pieces covering s, as the library's
  // Pattern::find_matches over onig's find_iter: an empty match right after the previous match
  // is skipped by one character. An empty `s` gives one empty non-match.
  template <class F>
  void find_matches(std::string_view s, F&& f) const {
    if (s.empty()) {
      f(size_t{0}, size_t{0}, false);
      return;
    }
    size_t prev = 0, last_end = 0, start = 0, end = 0;
    size_t last_match_end = std::string_view::npos;
    while (last_end <= s.size()) {
      if (!search(s, last_end, start, end)) break;
      if (start == end && last_match_end == end) {
        last_end += last_end < s.size() ? utf8_char_length(static_cast<unsigned char>(s[last_end])) : 1;
        continue;
      }
      last_end = end;
      last_match_end = end;
      if (prev != start) f(prev, start, false);
      f(start, end, true);
      prev = end;
    }
    if (prev != s.size()) f(prev, s.size(), false);
  }

 private:
  std::string pattern_;
  pcre2_code* code_ = nullptr;
  bool jit_ = false;
};

// One-character tests with the Rust `regex` crate's meanings, used around added tokens.
bool is_rust_word_char(char32_t c) {  // \w: Alphabetic, M, Nd, Pc, Join_Control
  static const Regex word("^[\\p{Alphabetic}\\p{M}\\p{Nd}\\p{Pc}\\p{Join_Control}]$", false, "added tokens");
  std::string s;
  utf8_append(s, c);
  size_t a = 0, b = 0;
  return word.search(s, 0, a, b);
}
bool is_white_space(char32_t c) {  // \s: White_Space
  switch (c) {
    case 0x09:
    case 0x0A:
    case 0x0B:
    case 0x0C:
    case 0x0D:
    case 0x20:
    case 0x85:
    case 0xA0:
    case 0x1680:
    case 0x2028:
    case 0x2029:
    case 0x202F:
    case 0x205F:
    case 0x3000: return true;
    default: return c >= 0x2000 && c <= 0x200A;
  }
}

// ---------------------------------------------------------------------------------------------
// Configuration read from tokenizer.json
// ---------------------------------------------------------------------------------------------

enum class SplitBehavior { removed, isolated, merged_with_previous, merged_with_next, contiguous };

struct SplitStep {
  std::unique_ptr<Regex> regex;
  SplitBehavior behavior = SplitBehavior::isolated;
  bool invert = false;
};

struct AddedToken {
  std::string content;
  int32_t id = 0;
  bool special = false, single_word = false, lstrip = false, rstrip = false, normalized = true;
};

// Leftmost-longest matching of a set of strings (the library uses an Aho-Corasick automaton with
// MatchKind::LeftmostLongest: at the leftmost position where some string matches, the longest).
// A byte trie walked from each position.
class AddedTokenMatcher {
 public:
  AddedTokenMatcher() { root_.fill(-1); }

  void add(std::string_view content, int index) {
    const auto first = static_cast<unsigned char>(content[0]);
    if (root_[first] < 0) root_[first] = new_node();
    int32_t node = root_[first];
    for (size_t k = 1; k < content.size(); ++k) {
      const auto byte = static_cast<unsigned char>(content[k]);
      int32_t child = find_child(node, byte);
      if (child < 0) {
        child = new_node();
        nodes_[node].children.push_back({byte, child});
      }
      node = child;
    }
    nodes_[node].token = index;
  }
  bool empty() const { return nodes_.empty(); }

  // The leftmost-longest match at or after `from`: true with its [start, end) and index.
  bool next(std::string_view s, size_t from, size_t& start, size_t& end, int& index) const {
    for (size_t i = from; i < s.size(); ++i) {
      int32_t node = root_[static_cast<unsigned char>(s[i])];
      if (node < 0) continue;
      int best = -1;
      for (size_t j = i + 1;; ++j) {
        if (nodes_[node].token >= 0) {
          best = nodes_[node].token;
          end = j;
        }
        if (j == s.size() || (node = find_child(node, static_cast<unsigned char>(s[j]))) < 0) break;
      }
      if (best >= 0) {
        start = i;
        index = best;
        return true;
      }
    }
    return false;
  }

 private:
  struct Node {
    std::vector<std::pair<unsigned char, int32_t>> children;
    int token = -1;
  };
  int32_t new_node() {
    nodes_.emplace_back();
    return static_cast<int32_t>(nodes_.size() - 1);
  }
  int32_t find_child(int32_t node, unsigned char byte) const {
    for (const auto& [b, child] : nodes_[node].children) {
      if (b == byte) return child;
    }
    return -1;
  }
  std::array<int32_t, 256> root_;
  std::vector<Node> nodes_;
};

struct Segment {
  size_t start, end;
  int added = -1;  // index into added tokens, or -1 for text to pre-tokenize
};

// Unicode NFC (canonical composition) through ICU; ASCII and already-composed text is returned
// unchanged without conversion.
std::string nfc_normalize(std::string_view s) {
  bool ascii = true;
  for (const unsigned char c : s) ascii &= c < 0x80;
  if (ascii) return std::string(s);
  UErrorCode status = U_ZERO_ERROR;
  const icu::Normalizer2* nfc = icu::Normalizer2::getNFCInstance(status);
  if (U_FAILURE(status))
    throw std::runtime_error(std::string("ICU NFC normalizer unavailable: ") + u_errorName(status));
  const icu::UnicodeString u = icu::UnicodeString::fromUTF8(icu::StringPiece(s.data(), static_cast<int32_t>(s.size())));
  if (nfc->isNormalized(u, status) && U_SUCCESS(status)) return std::string(s);
  status = U_ZERO_ERROR;
  const icu::UnicodeString normalized = nfc->normalize(u, status);
  if (U_FAILURE(status)) throw std::runtime_error(std::string("NFC normalization failed: ") + u_errorName(status));
  std::string out;
  normalized.toUTF8String(out);
  return out;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// The tokenizer
// ---------------------------------------------------------------------------------------------

struct BpeTokenizer::Impl {
  std::string source;

  // Model.
  StringMap vocab;                      // token (as written in tokenizer.json) -> id
  StringMap vocab_bytes;                // token as raw bytes -> id (ignore_merges lookups)
  std::vector<std::string> id_tokens;   // id -> token string (model or added), "" if none
  std::vector<char> id_present;         // id -> 1 when the id names a token
  std::array<int32_t, 256> byte_ids{};  // byte -> id of its one-symbol token, -1 if absent
  MergeTable merges;
  bool ignore_merges = false;
  int32_t unk_id = -1;
  bool fuse_unk = false;

  // Added tokens and their two matching passes.
  std::vector<AddedToken> added;
  StringMap added_ids;  // content -> id
  AddedTokenMatcher non_normalized, normalized;

  // Pre-tokenizer: Split steps, then ByteLevel.
  std::vector<SplitStep> splits;
  bool add_prefix_space = false;
  bool use_regex = true;
  std::unique_ptr<Regex> gpt2_regex;

  // Post-processor (add_special_tokens) and decoder.
  std::vector<int64_t> prefix_ids, suffix_ids;
  std::string decoded;                  // bytes of every id, back to back
  std::vector<uint32_t> decoded_begin;  // id -> offset in `decoded` (size vocab_size + 1)
  std::vector<char> skip_if_special;    // id -> 1 when skip_special_tokens drops it
  std::vector<char> special;            // id -> 1 for special added tokens

  mutable WordCache cache;

  void load(const json& j);
  void load_model(const json& model);
  void load_added_tokens(const json& list);
  void load_pre_tokenizer(const json& pre);
  void load_post_processor(const json& post);
  void finish_vocabulary();

  std::vector<Segment> split_added(std::string_view text) const;
  void load_normalizer(const json& norm);
  bool nfc = false;  // NFC-normalize text outside non-normalized added tokens
  void find_added(std::string_view s, size_t base, const AddedTokenMatcher& matcher, std::vector<Segment>& out) const;
  void pre_tokenize(std::string_view text, size_t step, std::vector<int64_t>& out) const;
  void byte_level(std::string_view text, std::vector<int64_t>& out) const;
  void encode_word(std::string_view word, std::vector<int64_t>& out) const;
  void merge_word(std::string_view word, std::vector<int64_t>& out) const;

  [[noreturn]] void fail(const std::string& what) const { throw std::runtime_error(source + ": " + what); }
};

namespace {

// j[key] as a bool (`fallback` when absent or null); `where` names j in the error.
bool get_bool(const json& j, const char* key, bool fallback, const std::string& where) {
  const auto it = j.find(key);
  if (it == j.end() || it->is_null()) return fallback;
  if (!it->is_boolean()) throw std::runtime_error(where + "." + key + " must be true or false, found " + it->dump());
  return it->get<bool>();
}

std::string type_of(const json& j) {
  if (j.is_null()) return "null";
  if (!j.is_object()) return j.dump();
  const auto it = j.find("type");
  return it != j.end() && it->is_string() ? it->get<std::string>() : "(no type)";
}

// Raw bytes of a token written with the byte-to-unicode mapping; false if a character is not a
// mapped one (such tokens decode as their UTF-8 text and are never produced by BPE).
bool token_to_bytes(std::string_view token, std::string& out) {
  const auto& bu = byte_unicode();
  out.clear();
  size_t i = 0;
  while (i < token.size()) {
    size_t len = 0;
    const char32_t cp = utf8_decode(token, i, len);
    if (cp >= 512 || bu.cp_to_byte[cp] < 0) return false;
    out += static_cast<char>(bu.cp_to_byte[cp]);
    i += len;
  }
  return true;
}

}  // namespace

// null, NFC, or a Sequence of those (Qwen2 ships NFC). Anything else is refused.
void BpeTokenizer::Impl::load_normalizer(const json& norm) {
  if (norm.is_null()) return;
  const std::string type = type_of(norm);
  if (type == "NFC") {
    nfc = true;
    return;
  }
  if (type == "Sequence" && norm.contains("normalizers") && norm["normalizers"].is_array()) {
    for (const auto& n : norm["normalizers"]) load_normalizer(n);
    return;
  }
  fail("normalizer '" + type + "' is not supported (expected null or NFC)");
}

void BpeTokenizer::Impl::load(const json& j) {
  if (!j.is_object()) fail("expected a JSON object (a tokenizer.json), found " + std::string(j.type_name()));
  if (!j.contains("model") || !j["model"].is_object()) fail("missing \"model\" object");
  load_model(j["model"]);

  load_normalizer(j.value("normalizer", json()));
  load_pre_tokenizer(j.value("pre_tokenizer", json()));
  const json& dec = j.value("decoder", json());
  if (type_of(dec) != "ByteLevel") fail("decoder '" + type_of(dec) + "' is not supported (expected ByteLevel)");
  load_added_tokens(j.value("added_tokens", json::array()));
  finish_vocabulary();
  load_post_processor(j.value("post_processor", json()));
  for (const char* key : {"truncation", "padding"}) {
    if (j.contains(key) && !j[key].is_null()) log::warn("{}: \"{}\" is ignored (batches set lengths)", source, key);
  }
}

void BpeTokenizer::Impl::load_model(const json& model) {
  const std::string type = type_of(model);
  if (type != "BPE") fail("model type '" + type + "' is not supported (expected 'BPE')");
  try {
    if (model.contains("dropout") && !model["dropout"].is_null() && model["dropout"].get<double>() != 0.0) {
      fail("BPE dropout " + model["dropout"].dump() + " is not supported (expected null)");
    }
    for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
      if (model.contains(key) && !model[key].is_null() && !model[key].get<std::string>().empty()) {
        fail(std::string("BPE ") + key + " " + model[key].dump() + " is not supported (expected null)");
      }
    }
    const std::string where = source + ": model";
    ignore_merges = get_bool(model, "ignore_merges", false, where);
    fuse_unk = get_bool(model, "fuse_unk", false, where);
    const bool byte_fallback = get_bool(model, "byte_fallback", false, where);

    if (!model.contains("vocab") || !model["vocab"].is_object()) fail("model.vocab must be an object {token: id}");
    int64_t max_id = -1;
    for (const auto& [token, id] : model["vocab"].items()) {
      if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() > INT32_MAX) {
        fail("model.vocab[" + quote_json(token) + "] must be an id in [0, 2^31), found " + id.dump());
      }
      vocab[token] = static_cast<int32_t>(id.get<int64_t>());
      max_id = std::max(max_id, id.get<int64_t>());
    }
    id_tokens.assign(static_cast<size_t>(max_id + 1), std::string());
    id_present.assign(static_cast<size_t>(max_id + 1), 0);
    std::string bytes;
    for (const auto& [token, id] : vocab) {
      id_tokens[id] = token;
      id_present[id] = 1;
      if (ignore_merges && token_to_bytes(token, bytes)) vocab_bytes[bytes] = id;
    }
    const auto& bu = byte_unicode();
    bool all_bytes = true;
    for (int b = 0; b < 256; ++b) {
      std::string symbol;
      utf8_append(symbol, bu.byte_to_cp[b]);
      const auto it = vocab.find(symbol);
      byte_ids[b] = it == vocab.end() ? -1 : it->second;
      all_bytes = all_bytes && it != vocab.end();
    }
    if (model.contains("unk_token") && !model["unk_token"].is_null()) {
      const std::string unk = model["unk_token"].get<std::string>();
      const auto it = vocab.find(unk);
      if (it == vocab.end()) fail("BPE unk_token " + quote_json(unk) + " is not in the vocabulary");
      unk_id = it->second;
    }
    if (byte_fallback && !all_bytes) {
      fail("BPE byte_fallback with a vocabulary that lacks some of the 256 byte symbols is not supported");
    }

    const json& list = model.value("merges", json::array());
    if (!list.is_array()) fail("model.merges must be a list, found " + std::string(list.type_name()));
    merges.reserve(list.size());
    int32_t rank = 0;
    for (size_t i = 0; i < list.size(); ++i) {
      const json& m = list[i];
      std::string a, b;
      if (m.is_string()) {
        const std::string line = m.get<std::string>();
        if (line.rfind("#version", 0) == 0) continue;
        const size_t space = line.find(' ');
        if (space == std::string::npos || line.find(' ', space + 1) != std::string::npos) {
          fail("model.merges[" + std::to_string(i) + "] " + quote_json(line) +
               " must be two tokens separated by one space");
        }
        a = line.substr(0, space);
        b = line.substr(space + 1);
      } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
        a = m[0].get<std::string>();
        b = m[1].get<std::string>();
      } else {
        fail("model.merges[" + std::to_string(i) + "] must be \"a b\" or [\"a\", \"b\"], found " + m.dump());
      }
      const std::string where = "model.merges[" + std::to_string(i) + "] (" + quote_json(a) + ", " + quote_json(b) +
                                "): ";
      const auto ia = vocab.find(a), ib = vocab.find(b), iab = vocab.find(a + b);
      if (ia == vocab.end()) fail(where + quote_json(a) + " is not in the vocabulary");
      if (ib == vocab.end()) fail(where + quote_json(b) + " is not in the vocabulary");
      if (iab == vocab.end()) fail(where + "the merged token " + quote_json(a + b) + " is not in the vocabulary");
      merges.put(ia->second, ib->second, {rank++, iab->second});
    }
  } catch (const json::exception& e) {
    fail(std::string("invalid model: ") + e.what());
  }
}

// Ids as the library assigns them (TokenizerImpl::add_tokens): an added token whose content is
// already known (an earlier added token, or the model vocabulary) takes that id, the others take
// the next free id from the model's vocabulary size on. The "id" written in the file is only
// checked, as the library does (it warns).
void BpeTokenizer::Impl::load_added_tokens(const json& list) {
  if (!list.is_array()) fail("added_tokens must be a list, found " + std::string(list.type_name()));
  int64_t next_id = static_cast<int64_t>(vocab.size());
  std::unordered_map<int32_t, size_t> by_id;
  for (size_t i = 0; i < list.size(); ++i) {
    const json& t = list[i];
    const std::string where = "added_tokens[" + std::to_string(i) + "]";
    if (!t.is_object() || !t.contains("content") || !t["content"].is_string()) {
      fail(where + " must be an object with a string \"content\"");
    }
    AddedToken tok;
    const std::string context = source + ": " + where;
    tok.content = t["content"].get<std::string>();
    tok.special = get_bool(t, "special", false, context);
    tok.single_word = get_bool(t, "single_word", false, context);
    tok.lstrip = get_bool(t, "lstrip", false, context);
    tok.rstrip = get_bool(t, "rstrip", false, context);
    tok.normalized = get_bool(t, "normalized", true, context);
    if (tok.content.empty()) continue;
    if (utf8_invalid_offset(tok.content) != std::string_view::npos) fail(where + ": content is not valid UTF-8");
    if (const auto it = added_ids.find(tok.content); it != added_ids.end()) {
      tok.id = it->second;
    } else if (const auto iv = vocab.find(tok.content); iv != vocab.end()) {
      tok.id = iv->second;
    } else {
      tok.id = static_cast<int32_t>(next_id++);
    }
    if (t.contains("id") && t["id"].is_number_integer() && t["id"].get<int64_t>() != tok.id) {
      log::warn("{}: {} {} has id {} in the file; the tokenizers library (and grpo) give it id {}", source, where,
                quote_json(tok.content), t["id"].get<int64_t>(), tok.id);
    }
    added_ids[tok.content] = tok.id;
    if (const auto it = by_id.find(tok.id); it != by_id.end()) {
      added[it->second] = tok;  // same content again: its latest properties win
    } else {
      by_id[tok.id] = added.size();
      added.push_back(tok);
    }
  }
  for (size_t k = 0; k < added.size(); ++k) {
    (added[k].normalized ? normalized : non_normalized).add(added[k].content, static_cast<int>(k));
  }
}

void BpeTokenizer::Impl::load_pre_tokenizer(const json& pre) {
  const std::string expected = "(expected ByteLevel, or a Sequence of Split steps ending with ByteLevel)";
  std::vector<const json*> steps;
  if (type_of(pre) == "Sequence") {
    if (!pre.contains("pretokenizers") || !pre["pretokenizers"].is_array()) {
      fail("pre_tokenizer Sequence needs a \"pretokenizers\" list");
    }
    for (const json& s : pre["pretokenizers"]) steps.push_back(&s);
  } else {
    steps.push_back(&pre);
  }
  for (size_t i = 0; i < steps.size(); ++i) {
    const json& s = *steps[i];
    const std::string type = type_of(s);
    const bool last = i + 1 == steps.size();
    const std::string where = "pre_tokenizer" + (steps.size() > 1 || type_of(pre) == "Sequence"
                                                     ? ".pretokenizers[" + std::to_string(i) + "]"
                                                     : std::string());
    if (type == "ByteLevel") {
      if (!last) fail(where + " ByteLevel must be the last step " + expected);
      add_prefix_space = get_bool(s, "add_prefix_space", true, source + ": " + where);
      use_regex = get_bool(s, "use_regex", true, source + ": " + where);
      if (use_regex) {
        gpt2_regex = std::make_unique<Regex>(
            "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+", false, source);
      }
    } else if (type == "Split") {
      if (last) fail(where + " the last step is Split; a byte-level BPE needs ByteLevel last " + expected);
      SplitStep step;
      const json& pattern = s.value("pattern", json());
      const bool is_regex = pattern.is_object() && pattern.contains("Regex") && pattern["Regex"].is_string();
      const bool is_string = pattern.is_object() && pattern.contains("String") && pattern["String"].is_string();
      if (!is_regex && !is_string) fail(where + " Split pattern must be {\"Regex\": ...} or {\"String\": ...}");
      const std::string text = pattern[is_regex ? "Regex" : "String"].get<std::string>();
      if (text.empty()) fail(where + " Split pattern is empty");
      step.regex = std::make_unique<Regex>(text, is_string, source + ": " + where);
      const std::string behavior = s.value("behavior", "");
      static const std::pair<const char*, SplitBehavior> kBehaviors[] = {
          {"Removed", SplitBehavior::removed},
          {"Isolated", SplitBehavior::isolated},
          {"MergedWithPrevious", SplitBehavior::merged_with_previous},
          {"MergedWithNext", SplitBehavior::merged_with_next},
          {"Contiguous", SplitBehavior::contiguous}};
      bool found = false;
      for (const auto& [name, value] : kBehaviors) {
        if (behavior == name) {
          step.behavior = value;
          found = true;
        }
      }
      if (!found) {
        fail(where + " Split behavior " + quote_json(behavior) +
             " is not one of Removed, Isolated, MergedWithPrevious, MergedWithNext, Contiguous");
      }
      step.invert = get_bool(s, "invert", false, source + ": " + where);
      splits.push_back(std::move(step));
    } else {
      fail(where + " '" + type + "' is not supported " + expected);
    }
  }
}

void BpeTokenizer::Impl::load_post_processor(const json& post) {
  // Applies one processor: its tokens go around everything added so far.
  std::function<void(const json&, const std::string&)> apply = [&](const json& p, const std::string& where) {
    const std::string type = type_of(p);
    if (type == "null" || type == "ByteLevel") return;
    if (type == "Sequence") {
      const json& list = p.value("processors", json::array());
      for (size_t i = 0; i < list.size(); ++i) apply(list[i], where + ".processors[" + std::to_string(i) + "]");
      return;
    }
    std::vector<int64_t> pre, suf;
    if (type == "TemplateProcessing") {
      const json& single = p.value("single", json::array());
      const json& tokens = p.value("special_tokens", json::object());
      bool seen_sequence = false;
      for (const json& piece : single) {
        if (piece.contains("Sequence")) {
          const std::string id = piece["Sequence"].value("id", "");
          if (id != "A") fail(where + " TemplateProcessing single uses sequence " + quote_json(id) + " (expected A)");
          seen_sequence = true;
        } else if (piece.contains("SpecialToken")) {
          const std::string name = piece["SpecialToken"].value("id", "");
          if (!tokens.contains(name) || !tokens[name].contains("ids")) {
            fail(where + " TemplateProcessing: special token " + quote_json(name) + " is missing from special_tokens");
          }
          for (const json& id : tokens[name]["ids"]) (seen_sequence ? suf : pre).push_back(id.get<int64_t>());
        } else {
          fail(where + " TemplateProcessing single has an unknown piece " + piece.dump());
        }
      }
    } else if (type == "RobertaProcessing" || type == "BertProcessing") {
      for (const char* key : {"cls", "sep"}) {
        if (!p.contains(key) || !p[key].is_array() || p[key].size() != 2) {
          fail(where + " " + type + " needs \"" + key + "\": [token, id]");
        }
      }
      pre.push_back(p["cls"][1].get<int64_t>());
      suf.push_back(p["sep"][1].get<int64_t>());
    } else {
      fail(where + " '" + type +
           "' is not supported (expected null, ByteLevel, TemplateProcessing, RobertaProcessing, BertProcessing or "
           "a Sequence of them)");
    }
    prefix_ids.insert(prefix_ids.begin(), pre.begin(), pre.end());
    suffix_ids.insert(suffix_ids.end(), suf.begin(), suf.end());
  };
  try {
    apply(post, "post_processor");
  } catch (const json::exception& e) {
    fail(std::string("invalid post_processor: ") + e.what());
  }
}

// Tokens of added ids, bytes each id decodes to, special flags.
void BpeTokenizer::Impl::finish_vocabulary() {
  int64_t size = static_cast<int64_t>(id_tokens.size());
  for (const AddedToken& t : added) size = std::max<int64_t>(size, t.id + 1);
  id_tokens.resize(size);
  id_present.resize(size, 0);
  special.assign(size, 0);
  std::unordered_set<std::string> special_contents;
  for (const AddedToken& t : added) {
    id_tokens[t.id] = t.content;  // the library decodes an added id as its content
    id_present[t.id] = 1;
    special[t.id] = t.special;
    if (t.special) special_contents.insert(t.content);
  }
  // skip_special_tokens drops every token whose string is a special token's content.
  skip_if_special.assign(size, 0);
  decoded.clear();
  decoded_begin.assign(size + 1, 0);
  std::string bytes;
  for (int64_t id = 0; id < size; ++id) {
    decoded_begin[id] = static_cast<uint32_t>(decoded.size());
    if (!id_present[id]) continue;
    const std::string& token = id_tokens[id];
    skip_if_special[id] = special_contents.count(token) ? 1 : 0;
    decoded += token_to_bytes(token, bytes) ? bytes : token;
  }
  decoded_begin[size] = static_cast<uint32_t>(decoded.size());
}

// ---------------------------------------------------------------------------------------------
// Encoding
// ---------------------------------------------------------------------------------------------

// AddedVocabulary::find_matches on s (which starts at `base` in the text).
void BpeTokenizer::Impl::find_added(std::string_view s, size_t base, const AddedTokenMatcher& matcher,
                                    std::vector<Segment>& out) const {
  if (matcher.empty()) {
    out.push_back({base, base + s.size(), -1});
    return;
  }
  size_t start_offset = 0, from = 0, start = 0, stop = 0;
  int index = -1;
  while (matcher.next(s, from, start, stop, index)) {
    from = stop;
    const AddedToken& t = added[index];
    if (t.single_word) {
      size_t len = 0;
      const bool start_space = start == 0 || !is_rust_word_char(utf8_decode(s, utf8_last_start(s, start), len));
      const bool stop_space = stop == s.size() || !is_rust_word_char(utf8_decode(s, stop, len));
      if (!start_space || !stop_space) continue;
    }
    if (t.lstrip) {
      size_t new_start = start;
      while (new_start > 0) {
        size_t len = 0;
        const size_t prev = utf8_last_start(s, new_start);
        if (!is_white_space(utf8_decode(s, prev, len))) break;
        new_start = prev;
      }
      start = std::max(new_start, start_offset);
    }
    if (t.rstrip) {
      while (stop < s.size()) {
        size_t len = 0;
        if (!is_white_space(utf8_decode(s, stop, len))) break;
        stop += len;
      }
    }
    if (start_offset < start) out.push_back({base + start_offset, base + start, -1});
    out.push_back({base + start, base + stop, index});
    start_offset = stop;
  }
  if (start_offset != s.size()) out.push_back({base + start_offset, base + s.size(), -1});
}

// Non-normalized added tokens in the whole text, then normalized ones in the gaps (the
// normalizer is null, so the gaps are matched as they are).
std::vector<Segment> BpeTokenizer::Impl::split_added(std::string_view text) const {
  std::vector<Segment> first, out;
  find_added(text, 0, non_normalized, first);
  if (normalized.empty()) return first;
  for (const Segment& seg : first) {
    if (seg.added >= 0 || seg.start == seg.end) {
      out.push_back(seg);
    } else {
      find_added(text.substr(seg.start, seg.end - seg.start), seg.start, normalized, out);
    }
  }
  return out;
}

// Split step `step` (or ByteLevel when all are done) on `text`; empty pieces are dropped.
void BpeTokenizer::Impl::pre_tokenize(std::string_view text, size_t step, std::vector<int64_t>& out) const {
  if (text.empty()) return;
  if (step == splits.size()) {
    byte_level(text, out);
    return;
  }
  const SplitStep& split = splits[step];
  if (split.behavior == SplitBehavior::isolated) {  // every piece, match or not, on its own
    split.regex->find_matches(text, [&](size_t a, size_t b, bool) {
      if (b > a) pre_tokenize(text.substr(a, b - a), step + 1, out);
    });
    return;
  }
  struct Piece {
    size_t start, end;
    bool match;
  };
  std::vector<Piece> pieces;
  split.regex->find_matches(text, [&](size_t a, size_t b, bool m) { pieces.push_back({a, b, m != split.invert}); });
  std::vector<Piece> kept;  // NormalizedString::split: (offsets, remove)
  bool previous_match = false;
  switch (split.behavior) {
    case SplitBehavior::removed: kept = pieces; break;
    case SplitBehavior::contiguous:
      for (const Piece& p : pieces) {
        if (p.match == previous_match && !kept.empty()) {
          kept.back().end = p.end;
        } else {
          kept.push_back({p.start, p.end, false});
        }
        previous_match = p.match;
      }
      break;
    case SplitBehavior::merged_with_previous:
      for (const Piece& p : pieces) {
        if (p.match && !previous_match && !kept.empty()) {
          kept.back().end = p.end;
        } else {
          kept.push_back({p.start, p.end, false});
        }
        previous_match = p.match;
      }
      break;
    case SplitBehavior::merged_with_next:
      for (auto it = pieces.rbegin(); it != pieces.rend(); ++it) {
        if (it->match && !previous_match && !kept.empty()) {
          kept.back().start = it->start;
        } else {
          kept.push_back({it->start, it->end, false});
        }
        previous_match = it->match;
      }
      std::reverse(kept.begin(), kept.end());
      break;
    case SplitBehavior::isolated: break;
  }
  for (const Piece& p : kept) {
    if (!p.match && p.end > p.start) pre_tokenize(text.substr(p.start, p.end - p.start), step + 1, out);
  }
}

// The ByteLevel step: the prefix space, the GPT-2 regex, then BPE on each pre-token's bytes.
void BpeTokenizer::Impl::byte_level(std::string_view text, std::vector<int64_t>& out) const {
  std::string prefixed;
  if (add_prefix_space && text[0] != ' ') {
    prefixed.reserve(text.size() + 1);
    prefixed += ' ';
    prefixed += text;
    text = prefixed;
  }
  if (!use_regex) {
    encode_word(text, out);
    return;
  }
  gpt2_regex->find_matches(text, [&](size_t a, size_t b, bool) {
    if (b > a) encode_word(text.substr(a, b - a), out);
  });
}

void BpeTokenizer::Impl::encode_word(std::string_view word, std::vector<int64_t>& out) const {
  if (ignore_merges) {
    const auto it = vocab_bytes.find(word);
    if (it != vocab_bytes.end()) {
      out.push_back(it->second);
      return;
    }
  }
  if (merges.empty() || word.size() > WordCache::kMaxWordBytes) {
    merge_word(word, out);
    return;
  }
  const uint64_t hash = hash_bytes(word);
  if (cache.lookup(word, hash, out)) return;
  const size_t before = out.size();
  merge_word(word, out);
  cache.insert(word, hash, out.data() + before, out.size() - before);
}

// BPE on one pre-token: repeatedly merge the adjacent pair of lowest rank, leftmost first. This is
// what the library's Word::merge_all computes with its heap; short words use a scan over a small
// array instead, long ones the heap.
void BpeTokenizer::Impl::merge_word(std::string_view word, std::vector<int64_t>& out) const {
  thread_local std::vector<int32_t> symbols;
  symbols.clear();
  // Symbols: the byte tokens; bytes without one become unk (fused if fuse_unk) or are dropped.
  bool pending_unk = false;
  for (const char ch : word) {
    const int32_t id = byte_ids[static_cast<unsigned char>(ch)];
    if (id >= 0) {
      if (pending_unk) symbols.push_back(unk_id);
      pending_unk = false;
      symbols.push_back(id);
    } else if (unk_id >= 0) {
      if (pending_unk && !fuse_unk) symbols.push_back(unk_id);
      pending_unk = true;
    }
  }
  if (pending_unk) symbols.push_back(unk_id);
  const size_t n = symbols.size();
  if (merges.empty() || n < 2) {
    out.insert(out.end(), symbols.begin(), symbols.end());
    return;
  }

  constexpr size_t kScanLimit = 48;
  if (n <= kScanLimit) {
    std::array<MergeTable::Value, kScanLimit> pair;  // pair[i]: merge of symbols i and i + 1
    size_t m = n;
    for (size_t i = 0; i + 1 < m; ++i) pair[i] = merges.get(symbols[i], symbols[i + 1]);
    while (m > 1) {
      size_t best = SIZE_MAX;
      int32_t best_rank = INT32_MAX;
      for (size_t i = 0; i + 1 < m; ++i) {
        if (pair[i].rank >= 0 && pair[i].rank < best_rank) {
          best_rank = pair[i].rank;
          best = i;
        }
      }
      if (best == SIZE_MAX) break;
      symbols[best] = pair[best].id;
      for (size_t i = best + 1; i + 1 < m; ++i) symbols[i] = symbols[i + 1];
      for (size_t i = best + 1; i + 2 < m; ++i) pair[i] = pair[i + 1];
      --m;
      if (best > 0) pair[best - 1] = merges.get(symbols[best - 1], symbols[best]);
      if (best + 1 < m) pair[best] = merges.get(symbols[best], symbols[best + 1]);
    }
    out.insert(out.end(), symbols.begin(), symbols.begin() + static_cast<std::ptrdiff_t>(m));
    return;
  }

  // Long words: symbols as a linked list, a min-heap of (rank, position) candidates; an entry
  // is stale when its pair no longer merges into the same id (as in Word::merge_all).
  struct Candidate {
    int32_t rank;
    int32_t pos;
    int32_t id;
    bool operator>(const Candidate& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
  };
  thread_local std::vector<int32_t> prev, next;
  thread_local std::vector<char> alive;
  thread_local std::vector<Candidate> heap;
  prev.resize(n);
  next.resize(n);
  alive.assign(n, 1);
  heap.clear();
  for (size_t i = 0; i < n; ++i) {
    prev[i] = static_cast<int32_t>(i) - 1;
    next[i] = i + 1 < n ? static_cast<int32_t>(i + 1) : -1;
  }
  for (size_t i = 0; i + 1 < n; ++i) {
    const auto v = merges.get(symbols[i], symbols[i + 1]);
    if (v.rank >= 0) heap.push_back({v.rank, static_cast<int32_t>(i), v.id});
  }
  std::make_heap(heap.begin(), heap.end(), std::greater<>());
  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end(), std::greater<>());
    const Candidate top = heap.back();
    heap.pop_back();
    if (!alive[top.pos] || next[top.pos] < 0) continue;
    const int32_t right = next[top.pos];
    const auto v = merges.get(symbols[top.pos], symbols[right]);
    if (v.rank < 0 || v.id != top.id) continue;
    symbols[top.pos] = top.id;
    alive[right] = 0;
    next[top.pos] = next[right];
    if (next[right] >= 0) prev[next[right]] = top.pos;
    if (prev[top.pos] >= 0) {
      const auto l = merges.get(symbols[prev[top.pos]], top.id);
      if (l.rank >= 0) {
        heap.push_back({l.rank, prev[top.pos], l.id});
        std::push_heap(heap.begin(), heap.end(), std::greater<>());
      }
    }
    if (next[top.pos] >= 0) {
      const auto r = merges.get(top.id, symbols[next[top.pos]]);
      if (r.rank >= 0) {
        heap.push_back({r.rank, top.pos, r.id});
        std::push_heap(heap.begin(), heap.end(), std::greater<>());
      }
    }
  }
  for (int32_t i = 0; i >= 0; i = next[i]) out.push_back(symbols[i]);
}

// ---------------------------------------------------------------------------------------------
// Public API
// ---------------------------------------------------------------------------------------------

BpeTokenizer::BpeTokenizer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
BpeTokenizer::~BpeTokenizer() = default;

std::unique_ptr<BpeTokenizer> BpeTokenizer::from_json(const std::string& json_text, const std::string& source) {
  json j;
  try {
    j = json::parse(json_text);
  } catch (const json::exception& e) {
    throw std::runtime_error(source + ": invalid JSON: " + e.what());
  }
  auto impl = std::make_unique<Impl>();
  impl->source = source;
  impl->load(j);
  return std::unique_ptr<BpeTokenizer>(new BpeTokenizer(std::move(impl)));
}

std::unique_ptr<BpeTokenizer> BpeTokenizer::from_file(const std::string& path) {
  std::string file = path;
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) file = (std::filesystem::path(path) / "tokenizer.json").string();
  return from_json(read_file(file), file);
}

std::vector<int64_t> BpeTokenizer::encode(std::string_view text, bool add_special_tokens) const {
  const Impl& m = *impl_;
  if (const size_t bad = utf8_invalid_offset(text); bad != std::string_view::npos) {
    throw std::invalid_argument("encode: text is not valid UTF-8 (byte " + std::to_string(bad) + " of " +
                                std::to_string(text.size()) + ")");
  }
  std::vector<int64_t> out;
  out.reserve(text.size() / 3 + 8);
  if (add_special_tokens) out.insert(out.end(), m.prefix_ids.begin(), m.prefix_ids.end());
  if (m.nfc) {
    // Non-normalized added tokens match the raw text; the gaps are NFC-normalized, then searched
    // for normalized added tokens and pre-tokenized.
    std::vector<Segment> raw;
    if (m.non_normalized.empty()) {
      raw.push_back({0, text.size(), -1});
    } else {
      m.find_added(text, 0, m.non_normalized, raw);
    }
    for (const Segment& seg : raw) {
      if (seg.added >= 0) {
        out.push_back(m.added[seg.added].id);
        continue;
      }
      const std::string gap = nfc_normalize(text.substr(seg.start, seg.end - seg.start));
      std::vector<Segment> inner;
      if (m.normalized.empty()) {
        inner.push_back({0, gap.size(), -1});
      } else {
        m.find_added(gap, 0, m.normalized, inner);
      }
      for (const Segment& piece : inner) {
        if (piece.added >= 0) {
          out.push_back(m.added[piece.added].id);
        } else {
          m.pre_tokenize(std::string_view(gap).substr(piece.start, piece.end - piece.start), 0, out);
        }
      }
    }
  } else if (m.non_normalized.empty() && m.normalized.empty()) {
    m.pre_tokenize(text, 0, out);
  } else {
    for (const Segment& seg : m.split_added(text)) {
      if (seg.added >= 0) {
        out.push_back(m.added[seg.added].id);
      } else {
        m.pre_tokenize(text.substr(seg.start, seg.end - seg.start), 0, out);
      }
    }
  }
  if (add_special_tokens) out.insert(out.end(), m.suffix_ids.begin(), m.suffix_ids.end());
  return out;
}

std::string BpeTokenizer::decode(const std::vector<int64_t>& ids, bool skip_special_tokens) const {
  const Impl& m = *impl_;
  const int64_t size = static_cast<int64_t>(m.id_present.size());
  std::string bytes;
  for (const int64_t id : ids) {
    if (id < 0 || id >= size || !m.id_present[id]) {
      throw std::out_of_range("decode: id " + std::to_string(id) + " is not in the vocabulary (" + m.source +
                              ": ids 0.." + std::to_string(size - 1) + ")");
    }
    if (skip_special_tokens && m.skip_if_special[id]) continue;
    bytes.append(m.decoded, m.decoded_begin[id], m.decoded_begin[id + 1] - m.decoded_begin[id]);
  }
  return utf8_lossy(std::move(bytes));
}

int64_t BpeTokenizer::vocab_size() const { return static_cast<int64_t>(impl_->id_present.size()); }

std::optional<int64_t> BpeTokenizer::token_to_id(std::string_view token) const {
  if (const auto it = impl_->added_ids.find(token); it != impl_->added_ids.end()) return it->second;
  if (const auto it = impl_->vocab.find(token); it != impl_->vocab.end()) return it->second;
  return std::nullopt;
}

std::optional<std::string> BpeTokenizer::id_to_token(int64_t id) const {
  if (id < 0 || id >= vocab_size() || !impl_->id_present[id]) return std::nullopt;
  return impl_->id_tokens[id];
}

bool BpeTokenizer::is_special(int64_t id) const { return id >= 0 && id < vocab_size() && impl_->special[id] != 0; }

std::string byte_tokenizer_json(const std::vector<std::string>& special_tokens) {
  const auto& bu = byte_unicode();
  json vocab = json::object();
  for (int b = 0; b < 256; ++b) {
    std::string symbol;
    utf8_append(symbol, bu.byte_to_cp[b]);
    vocab[symbol] = b;
  }
  json added = json::array();
  std::unordered_set<std::string> seen;
  for (size_t i = 0; i < special_tokens.size(); ++i) {
    const std::string& t = special_tokens[i];
    if (t.empty() || utf8_invalid_offset(t) != std::string_view::npos || !seen.insert(t).second || vocab.contains(t)) {
      throw std::invalid_argument("byte_tokenizer_json: special token " + quote_json(t) +
                                  " must be non-empty valid UTF-8, not a byte symbol, and given once");
    }
    added.push_back({{"id", 256 + static_cast<int64_t>(i)},
                     {"content", t},
                     {"single_word", false},
                     {"lstrip", false},
                     {"rstrip", false},
                     {"normalized", false},
                     {"special", true}});
  }
  const json byte_level = {
      {"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", false}, {"use_regex", false}};
  const json j = {{"version", "1.0"},
                  {"truncation", nullptr},
                  {"padding", nullptr},
                  {"added_tokens", added},
                  {"normalizer", nullptr},
                  {"pre_tokenizer", byte_level},
                  {"post_processor", nullptr},
                  {"decoder", byte_level},
                  {"model",
                   {{"type", "BPE"},
                    {"dropout", nullptr},
                    {"unk_token", nullptr},
                    {"continuing_subword_prefix", nullptr},
                    {"end_of_word_suffix", nullptr},
                    {"fuse_unk", false},
                    {"byte_fallback", false},
                    {"ignore_merges", false},
                    {"vocab", vocab},
                    {"merges", json::array()}}}};
  return j.dump(1, ' ', false);
}

}  // namespace grpo::data
