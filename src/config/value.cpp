// Value helpers, scalar conversions, overrides and key suggestions (see grpo/config/value.h).
#include "grpo/config/value.h"

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>

#include "grpo/config/config.h"

namespace grpo::config {

std::string Location::str() const {
  if (source.empty()) return "<defaults>";
  if (line <= 0) return source;
  std::string out = source;
  out += ':';
  out += std::to_string(line);
  if (column > 0) {
    out += ':';
    out += std::to_string(column);
  }
  return out;
}

void fail(const Location& loc, const std::string& message) { throw ConfigError(loc.str() + ": " + message); }

Value Value::make_scalar(std::string text, bool quoted, Location loc) {
  Value v;
  v.kind = Kind::scalar;
  v.text = std::move(text);
  v.quoted = quoted;
  v.loc = std::move(loc);
  return v;
}

Value Value::make_map(Location loc) {
  Value v;
  v.kind = Kind::map;
  v.loc = std::move(loc);
  return v;
}

Value Value::make_list(Location loc) {
  Value v;
  v.kind = Kind::list;
  v.loc = std::move(loc);
  return v;
}

const Value* Value::find(std::string_view key) const {
  if (kind != Kind::map) return nullptr;
  for (const auto& [k, v] : entries) {
    if (k == key) return &v;
  }
  return nullptr;
}

Value* Value::find(std::string_view key) { return const_cast<Value*>(static_cast<const Value&>(*this).find(key)); }

std::string Value::describe() const {
  switch (kind) {
    case Kind::null: return "null";
    case Kind::list: return "a list";
    case Kind::map: return "a mapping";
    case Kind::scalar: break;
  }
  // A long scalar is named by its start and length.
  const std::string shown = text.size() > 80
                                ? text.substr(0, 40) + "... (" + std::to_string(text.size()) + " characters)"
                                : text;
  return quoted ? "the string \"" + shown + "\"" : "'" + shown + "'";
}

namespace {

// Linear scanners (std::regex_match recurses once per character: a scalar of some 30,000 digits
// overflowed the stack).
bool digit(char c) { return c >= '0' && c <= '9'; }

// Skips digits from i; whether there was at least one.
bool skip_digits(const std::string& s, std::size_t& i) {
  const std::size_t begin = i;
  while (i < s.size() && digit(s[i])) ++i;
  return i > begin;
}

void skip_sign(const std::string& s, std::size_t& i) {
  if (i < s.size() && (s[i] == '+' || s[i] == '-')) ++i;
}

// A plain decimal number as YAML writes it: 12, -3.5, .5, 1e-3, 2.E+4
// ([+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?).
bool looks_like_decimal(const std::string& s) {
  std::size_t i = 0;
  skip_sign(s, i);
  if (skip_digits(s, i)) {
    if (i < s.size() && s[i] == '.') {
      ++i;
      skip_digits(s, i);
    }
  } else {
    if (i >= s.size() || s[i] != '.') return false;
    ++i;
    if (!skip_digits(s, i)) return false;
  }
  if (i < s.size() && (s[i] == 'e' || s[i] == 'E')) {
    ++i;
    skip_sign(s, i);
    if (!skip_digits(s, i)) return false;
  }
  return i == s.size();
}

// [+-]?\d+
bool looks_like_integer(const std::string& s) {
  std::size_t i = 0;
  skip_sign(s, i);
  return skip_digits(s, i) && i == s.size();
}

// Numbers longer than this are refused before they are converted (no configuration value needs
// more digits than a double holds; the message would otherwise repeat the whole text).
constexpr std::size_t kMaxNumberChars = 400;

void check_number_length(const Value& v, const std::string& path) {
  if (v.text.size() > kMaxNumberChars) {
    fail(v.loc, path + ": a number of " + std::to_string(v.text.size()) + " characters (at most " +
                    std::to_string(kMaxNumberChars) + "), starting '" + v.text.substr(0, 20) + "...'");
  }
}

[[noreturn]] void fail_type(const Value& v, const std::string& path, const std::string& expected) {
  fail(v.loc, path + ": expected " + expected + ", found " + v.describe());
}

std::string lower(std::string s) {
  for (auto& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

std::size_t edit_distance(std::string_view a, std::string_view b) {
  std::vector<std::size_t> prev(b.size() + 1), cur(b.size() + 1);
  for (std::size_t j = 0; j <= b.size(); ++j) prev[j] = j;
  for (std::size_t i = 1; i <= a.size(); ++i) {
    cur[0] = i;
    for (std::size_t j = 1; j <= b.size(); ++j) {
      const std::size_t sub = prev[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1);
      cur[j] = std::min({prev[j] + 1, cur[j - 1] + 1, sub});
    }
    std::swap(prev, cur);
  }
  return prev[b.size()];
}

}  // namespace

bool scalar_to_bool(const Value& v, const std::string& path) {
  if (v.is_scalar() && !v.quoted) {
    const std::string s = lower(v.text);
    if (s == "true" || s == "yes" || s == "on") return true;
    if (s == "false" || s == "no" || s == "off") return false;
  }
  fail_type(v, path, "true or false");
}

long long scalar_to_int(const Value& v, const std::string& path) {
  if (!v.is_scalar() || v.quoted) fail_type(v, path, "an integer");
  check_number_length(v, path);
  if (looks_like_integer(v.text)) {
    errno = 0;
    const long long x = std::strtoll(v.text.c_str(), nullptr, 10);
    if (errno == ERANGE) fail(v.loc, path + ": " + v.text + " is out of the 64-bit integer range");
    return x;
  }
  if (looks_like_decimal(v.text)) {
    // Accept integral values written in floating form, such as 1e6.
    const double x = std::strtod(v.text.c_str(), nullptr);
    if (std::isfinite(x) && x == std::floor(x) && std::fabs(x) < 9.2e18) {
      return static_cast<long long>(x);
    }
  }
  fail_type(v, path, "an integer");
}

double scalar_to_double(const Value& v, const std::string& path) {
  if (!v.is_scalar() || v.quoted) fail_type(v, path, "a number");
  const std::string s = lower(v.text);
  if (s == ".inf" || s == "+.inf") return std::numeric_limits<double>::infinity();
  if (s == "-.inf") return -std::numeric_limits<double>::infinity();
  if (s == ".nan") return std::numeric_limits<double>::quiet_NaN();
  check_number_length(v, path);
  if (!looks_like_decimal(v.text)) fail_type(v, path, "a number");
  errno = 0;
  const double x = std::strtod(v.text.c_str(), nullptr);
  if (errno == ERANGE && std::isinf(x)) {
    fail(v.loc, path + ": " + v.text + " is out of the range of a double");
  }
  return x;
}

std::string scalar_to_string(const Value& v, const std::string& path) {
  if (!v.is_scalar()) fail_type(v, path, "a string");
  return v.text;
}

std::string double_to_text(double x) {
  if (std::isnan(x)) return ".nan";
  if (std::isinf(x)) return x > 0 ? ".inf" : "-.inf";
  char buf[64];
  for (int precision = 1; precision <= 17; ++precision) {
    std::snprintf(buf, sizeof buf, "%.*g", precision, x);
    if (std::strtod(buf, nullptr) == x) break;
  }
  return buf;
}

std::string suggest(std::string_view key, const std::vector<std::string>& known) {
  std::string best;
  std::size_t best_distance = std::string::npos;
  const std::string key_lower = lower(std::string(key));
  for (const auto& k : known) {
    const std::size_t d = edit_distance(key_lower, lower(k));
    if (d < best_distance) {
      best_distance = d;
      best = k;
    }
  }
  const std::size_t allowed = std::max<std::size_t>(1, std::min<std::size_t>(3, key.size() / 3));
  if (best_distance <= allowed) return best;
  // A known key that the typed one starts with, or the reverse ("optimizer" for "optim").
  for (const auto& k : known) {
    const std::string k_lower = lower(k);
    const bool prefix = key_lower.size() >= 3 && k_lower.size() >= 3 &&
                        (key_lower.rfind(k_lower, 0) == 0 || k_lower.rfind(key_lower, 0) == 0);
    if (prefix) return k;
  }
  return "";
}

void apply_override(Value& root, std::string_view assignment) {
  // Errors name the override; a long one by its start.
  const std::string shown = assignment.size() > 80 ? std::string(assignment.substr(0, 60)) + "..."
                                                   : std::string(assignment);
  apply_override(root, assignment, "--set " + shown);
}

void apply_override(Value& root, std::string_view assignment, const std::string& source) {
  const Location loc{source, 0, 0};
  const std::size_t eq = assignment.find('=');
  if (eq == std::string_view::npos || eq == 0) {
    fail(loc, "expected key=value, such as trainer.lr=3e-6");
  }
  const std::string key(assignment.substr(0, eq));
  const std::string text(assignment.substr(eq + 1));

  std::vector<std::string> segments;
  std::size_t start = 0;
  while (true) {
    const std::size_t dot = key.find('.', start);
    segments.push_back(key.substr(start, dot - start));
    if (dot == std::string::npos) break;
    start = dot + 1;
  }
  for (const auto& s : segments) {
    if (s.empty()) fail(loc, "empty key segment in '" + key + "'");
  }

  // Every location inside the override is the override itself.
  Value value = parse_yaml_string(text, loc.source, /*track_lines=*/false);
  value.key_loc = loc;

  Value* node = &root;
  std::string walked;
  for (std::size_t i = 0; i < segments.size(); ++i) {
    const std::string& seg = segments[i];
    const bool last = i + 1 == segments.size();
    if (node->is_null()) {
      Value map = Value::make_map(loc);
      map.key_loc = node->key_loc.source.empty() ? loc : node->key_loc;
      *node = std::move(map);
    }
    if (node->is_list()) {
      if (!looks_like_integer(seg)) {
        fail(loc, "'" + walked + "' is a list: index it with a number, found '" + seg + "'");
      }
      const long long index = std::strtoll(seg.c_str(), nullptr, 10);
      if (index < 0 || index >= static_cast<long long>(node->items.size())) {
        fail(loc, "index " + seg + " is out of range for '" + walked + "', which has " +
                      std::to_string(node->items.size()) + " item(s)");
      }
      node = &node->items[static_cast<std::size_t>(index)];
    } else if (node->is_map()) {
      Value* child = node->find(seg);
      if (child == nullptr) {
        Value fresh;
        fresh.loc = loc;
        fresh.key_loc = loc;
        node->entries.emplace_back(seg, std::move(fresh));
        child = &node->entries.back().second;
      }
      node = child;
    } else {
      fail(loc, "'" + walked + "' is a single value (" + node->describe() + "), so it has no key '" + seg + "'");
    }
    walked += (walked.empty() ? "" : ".") + seg;
    if (last) *node = std::move(value);
  }
}

std::string join_path(const std::string& parent, std::string_view key) {
  return parent.empty() ? std::string(key) : parent + "." + std::string(key);
}

void Reader::finish(const RemovedKey* removed, std::size_t removed_count) const {
  for (const auto& [key, value] : node_.entries) {
    if (std::find(known_.begin(), known_.end(), key) != known_.end()) continue;
    for (std::size_t i = 0; i < removed_count; ++i) {
      if (key == removed[i].key) {
        fail(value.key_loc, "unknown key '" + join_path(path_, key) + "' (removed: " + removed[i].hint + ")");
      }
    }
    const std::string hint = suggest(key, known_);
    fail(value.key_loc, "unknown key '" + join_path(path_, key) + "'" +
                            (hint.empty() ? "" : " (did you mean '" + join_path(path_, hint) + "'?)"));
  }
}

std::string Check::describe() const {
  std::vector<std::string> parts;
  if (!choices.empty()) {
    std::string s = "one of: ";
    for (std::size_t i = 0; i < choices.size(); ++i) s += (i ? ", " : "") + choices[i];
    parts.push_back(s);
  }
  if (lo && hi) {
    parts.push_back(std::string("in ") + (lo_open ? "(" : "[") + double_to_text(*lo) + ", " + double_to_text(*hi) +
                    (hi_open ? ")" : "]"));
  } else if (lo) {
    parts.push_back(std::string(lo_open ? "> " : ">= ") + double_to_text(*lo));
  } else if (hi) {
    parts.push_back(std::string(hi_open ? "< " : "<= ") + double_to_text(*hi));
  }
  if (non_empty) parts.push_back("non-empty");
  if (is_required) parts.push_back("required");
  std::string out;
  for (std::size_t i = 0; i < parts.size(); ++i) out += (i ? "; " : "") + parts[i];
  return out;
}

void Check::check_number(double x, const Value& v, const std::string& path) const {
  const bool below = lo && (lo_open ? !(x > *lo) : !(x >= *lo));
  const bool above = hi && (hi_open ? !(x < *hi) : !(x <= *hi));
  if (below || above || std::isnan(x)) {
    Check bounds = *this;
    bounds.choices.clear();
    bounds.non_empty = bounds.is_required = false;
    fail(v.loc, path + ": must be " + bounds.describe() + ", found " + v.text);
  }
}

void Check::check_string(const std::string& s, const Value& v, const std::string& path) const {
  if (non_empty && s.empty()) fail(v.loc, path + ": must not be empty");
  if (choices.empty() || std::find(choices.begin(), choices.end(), s) != choices.end()) return;
  std::string names;
  for (std::size_t i = 0; i < choices.size(); ++i) names += (i ? ", " : "") + choices[i];
  const std::string hint = suggest(s, choices);
  fail(v.loc, path + ": expected one of " + names + ", found " + v.describe() +
                  (hint.empty() ? "" : " (did you mean '" + hint + "'?)"));
}

namespace {

std::string flow_text(const Value& v) {
  switch (v.kind) {
    case Value::Kind::null: return "null";
    case Value::Kind::scalar: return v.quoted ? "\"" + v.text + "\"" : v.text;
    case Value::Kind::map: return v.entries.empty() ? "{}" : "{...}";
    case Value::Kind::list: {
      std::string s = "[";
      for (std::size_t i = 0; i < v.items.size(); ++i) s += (i ? ", " : "") + flow_text(v.items[i]);
      return s + "]";
    }
  }
  return "";
}

void describe_into(const Value& v, const std::string& path, std::vector<KeyDoc>& out) {
  for (const auto& [key, child] : v.entries) {
    const std::string p = join_path(path, key);
    if (child.is_map() && !child.entries.empty()) {
      describe_into(child, p, out);
    } else {
      out.push_back({p, flow_text(child), child.comment});
    }
  }
}

void leaves_into(const Value& v, const std::string& path, std::vector<std::pair<std::string, std::string>>& out) {
  const auto child = [&](const std::string& key) { return path.empty() ? key : path + "." + key; };
  switch (v.kind) {
    case Value::Kind::map:
      if (v.entries.empty()) out.emplace_back(path, "{}");
      for (const auto& [k, c] : v.entries) leaves_into(c, child(k), out);
      break;
    case Value::Kind::list:
      if (v.items.empty()) out.emplace_back(path, "[]");
      for (size_t i = 0; i < v.items.size(); ++i) leaves_into(v.items[i], child(std::to_string(i)), out);
      break;
    case Value::Kind::scalar: out.emplace_back(path, v.quoted ? "\"" + v.text + "\"" : v.text); break;
    case Value::Kind::null: out.emplace_back(path, "null"); break;
  }
}

}  // namespace

std::vector<std::pair<std::string, std::string>> leaf_values(const Value& v, const std::string& prefix) {
  std::vector<std::pair<std::string, std::string>> out;
  leaves_into(v, prefix, out);
  return out;
}

std::vector<KeyDoc> describe_keys(const Value& defaults) {
  std::vector<KeyDoc> out;
  describe_into(defaults, "", out);
  return out;
}

}  // namespace grpo::config
