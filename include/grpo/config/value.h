// grpo::config::Value: a parsed YAML document that remembers where each value was written.
//
// Scalars keep their text and whether they were quoted; they get a type only when bound to a
// config struct (config.h), which is where type errors are reported, with the location kept here.
// Command-line overrides (`--set a.b=c`) are parsed into the same tree, with the override itself
// as their location, so they pass through exactly the same validation as the file.
#pragma once

#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace grpo::config {

// Where a value came from.
struct Location {
  std::string source;  // file path, or the override text "--set a.b=c"; empty for built-in defaults
  int line = 0;        // 1-based line in `source`; 0 when the source has no lines
  int column = 0;      // 1-based column; 0 when unknown

  // "configs/x.yaml:12:3", "--set trainer.lr=abc", or "<defaults>".
  std::string str() const;
};

// Every configuration problem: one line, starting with the location.
class ConfigError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Throws ConfigError("<loc>: <message>").
[[noreturn]] void fail(const Location& loc, const std::string& message);

struct Value {
  enum class Kind { null, scalar, list, map };

  Kind kind = Kind::null;
  std::string text;                                    // scalar text as written
  bool quoted = false;                                 // scalar was quoted: always a string
  std::vector<Value> items;                            // list elements
  std::vector<std::pair<std::string, Value>> entries;  // map entries, in written order
  Location loc;                                        // where the value starts
  Location key_loc;                                    // where its key was written (map entries)
  std::string comment;                                 // written as "# ..." above it by emit_yaml

  static Value make_scalar(std::string text, bool quoted, Location loc = {});
  static Value make_map(Location loc = {});
  static Value make_list(Location loc = {});

  bool is_null() const { return kind == Kind::null; }
  bool is_scalar() const { return kind == Kind::scalar; }
  bool is_list() const { return kind == Kind::list; }
  bool is_map() const { return kind == Kind::map; }

  // Map lookup; nullptr when absent (or when this is not a map).
  const Value* find(std::string_view key) const;
  Value* find(std::string_view key);

  // What a type error says was found: "'abc'", "the string \"1\"", "a mapping", "a list", "null".
  std::string describe() const;
};

// Reads and parses a YAML file. Throws ConfigError for a missing or unreadable file, invalid YAML
// (with its line and column) and duplicate keys.
Value parse_yaml_file(const std::string& path);
// Parses YAML text; `source` names it in locations. With track_lines false (text that is not a
// file, such as an override) every location is just `source`.
Value parse_yaml_string(std::string_view text, const std::string& source, bool track_lines = true);

// Writes a Value tree as block YAML, with each value's comment above it. parse_yaml_string of the
// result gives back the same tree (up to locations and comments).
std::string emit_yaml(const Value& root);

// Applies one override "a.b.c=value" to `root`: the value is parsed as YAML ("3e-6", "[1, 2]",
// "'text'") and placed at the dotted path, creating maps on the way; a numeric segment indexes a
// list. Throws ConfigError naming the override when it is malformed or the path crosses a scalar.
void apply_override(Value& root, std::string_view assignment);
// The same with every location inside the override named `source` instead of "--set a.b=c": for a
// program's own flag that stands for a key ("--top-p 2" for generation.sampling.top_p=2), so that
// its errors name the flag as typed: "--top-p 2: generation.sampling.top_p: must be in (0, 1], found 2".
void apply_override(Value& root, std::string_view assignment, const std::string& source);

// The entry of `known` nearest to `key` by edit distance, or "" when none is close enough to be a
// plausible typo.
std::string suggest(std::string_view key, const std::vector<std::string>& known);

// Scalar conversions used by the binder. Each throws ConfigError at `v.loc` naming `path` and what
// was expected and found.
bool scalar_to_bool(const Value& v, const std::string& path);
long long scalar_to_int(const Value& v, const std::string& path);
double scalar_to_double(const Value& v, const std::string& path);
std::string scalar_to_string(const Value& v, const std::string& path);

// Every leaf of `v` as ("path", "text"), in written order: maps and lists are walked ("a.b",
// "functions.0.name"), a scalar is its text (a quoted one in double quotes: "\"format\""), null is
// "null", an empty list "[]", an empty map "{}". `prefix` starts every path. For fingerprints of
// settings (what a finished stage or a resumable file ran with) and for naming what changed.
std::vector<std::pair<std::string, std::string>> leaf_values(const Value& v, const std::string& prefix = "");

// Shortest decimal text that parses back to exactly `x` ("0.0003", "1e-06", ".inf").
std::string double_to_text(double x);

}  // namespace grpo::config
