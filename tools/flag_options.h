// Command-line flags bound through the config system: internal to tools/ and bench/, not installed.
//
// A program keeps its options in a typed struct with a `visit` (config.h) and lists its flags once,
// each an alias of one key of that struct:
//
//   const std::vector<Flag> flags = {
//       {"--model", "model", FlagKind::text, "DIR"},
//       {"--top-p", "generation.sampling.top_p", FlagKind::value, "P"},
//       {"--stop", "generation.stop_strings", FlagKind::append_text, "TEXT"},
//       {"--ignore-eos", "generation.ignore_eos", FlagKind::on},
//       {"--set", "", FlagKind::set, "KEY=VALUE"},
//   };
//   const ParsedFlags parsed = scan_flags(args, flags, "generate");  // unknown flags, missing values
//   const auto opts = bind_flags<GenerateOptions>(parsed, flags);     // types, bounds, required keys
//
// The command line becomes a config::Value tree, which config::from_value binds, so every type,
// bound and unknown-key check is the config system's, reported in its one-line format at the flag
// as the user typed it:
//   --top-p 2: generation.sampling.top_p: must be in (0, 1], found 2
//   --set generation.sampling.top_k=-1: generation.sampling.top_k: must be >= 0, found -1
//   command line: missing required key 'model' (pass --model DIR)
//   unknown flag '--top-q' for 'generate' (did you mean '--top-p'?)
// Free text (paths, prompts, stop strings) goes into the tree as a quoted string scalar exactly as
// typed, never through YAML, so "a: b", "</answer>", "[x]", "# c" and leading spaces arrive verbatim;
// only numbers and booleans (FlagKind::value) and --set are read as YAML.
#pragma once

#include <cstddef>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "grpo/config/config.h"

namespace grpo::tools {

enum class FlagKind {
  value,        // --flag V: key=V with V read as YAML, like --set (numbers, booleans): "--top-p 0.9"
  text,         // --flag V: key is the string V exactly as typed (paths, names, choices)
  on,           // --flag: key=true
  off,          // --flag: key=false ("--no-cache")
  append_text,  // --flag V (repeatable): appends the string V to the list at key ("--stop </answer>")
  append_ids,   // --flag 1,2,3 (repeatable): appends the list [1, 2, 3] to the list at key
  set,          // --set KEY=VALUE (repeatable): any key of the struct, VALUE read as YAML
  custom,       // a flag the program handles itself (--config FILE): bind_flags leaves it alone
};

struct Flag {
  std::string_view name;  // "--top-p"
  std::string_view key;   // "generation.sampling.top_p"; empty for set and custom
  FlagKind kind;
  std::string_view arg = {};  // what its value is, for messages: "P", "DIR"; empty for switches
};

// A flag that is gone, with what to use instead (the unknown-flag error quotes it).
struct RemovedFlag {
  std::string_view name;
  std::string_view hint;
};

// One flag as given on the command line.
struct FlagUse {
  const Flag* flag = nullptr;
  std::string value;   // the value; "" for switches
  std::string source;  // the flag as typed, for error locations: "--top-p 2", "--top-p=2", "--json"
};

struct ParsedFlags {
  std::vector<FlagUse> uses;  // in command-line order
  bool help = false;          // --help or -h was given

  // The uses of flag `name`, in order.
  std::vector<const FlagUse*> uses_of(std::string_view name) const {
    std::vector<const FlagUse*> out;
    for (const auto& u : uses) {
      if (u.flag->name == name) out.push_back(&u);
    }
    return out;
  }
};

inline bool flag_takes_value(FlagKind kind) { return kind != FlagKind::on && kind != FlagKind::off; }

// "--model DIR, --top-p P, --json": the flags for messages.
inline std::string flag_list(const std::vector<Flag>& flags) {
  std::string out;
  for (const auto& f : flags) {
    if (!out.empty()) out += ", ";
    out += f.name;
    if (!f.arg.empty()) {
      out += ' ';
      out += f.arg;
    }
  }
  return out;
}

inline std::string strip_dashes(std::string_view s) {
  const std::size_t start = s.find_first_not_of('-');
  return start == std::string_view::npos ? std::string() : std::string(s.substr(start));
}

[[noreturn]] inline void unknown_flag(const std::string& name, const std::vector<Flag>& flags, std::string_view command,
                                      const std::vector<RemovedFlag>& removed) {
  const std::string what = "unknown flag '" + name + "' for '" + std::string(command) + "'";
  for (const auto& r : removed) {
    if (r.name == name) throw std::invalid_argument(what + " (removed: " + std::string(r.hint) + ")");
  }
  std::vector<std::string> known;
  for (const auto& f : flags) known.push_back(strip_dashes(f.name));
  const std::string bare = strip_dashes(name);
  const std::string hint = bare.empty() ? std::string() : config::suggest(bare, known);
  if (!hint.empty()) throw std::invalid_argument(what + " (did you mean '--" + hint + "'?)");
  throw std::invalid_argument(what + "; the flags are " + flag_list(flags) + ", --help");
}

// Splits `args` (the words after the command) into flag uses. Accepts "--flag VALUE" and
// "--flag=VALUE"; throws std::invalid_argument for an unknown flag (with a did-you-mean or the list
// of flags), a flag missing its value, a value given to a switch and a word that is not a flag.
inline ParsedFlags scan_flags(const std::vector<std::string>& args, const std::vector<Flag>& flags,
                              std::string_view command, const std::vector<RemovedFlag>& removed = {}) {
  ParsedFlags out;
  for (std::size_t i = 0; i < args.size(); ++i) {
    const std::string& arg = args[i];
    if (arg == "--help" || arg == "-h") {
      out.help = true;
      continue;
    }
    if (arg.rfind("--", 0) != 0) {
      throw std::invalid_argument("unexpected argument '" + arg + "' for '" + std::string(command) +
                                  "'; the flags are " + flag_list(flags) + ", --help");
    }
    const std::size_t eq = arg.find('=');
    const std::string name = eq == std::string::npos ? arg : arg.substr(0, eq);
    const Flag* flag = nullptr;
    for (const auto& f : flags) {
      if (f.name == name) {
        flag = &f;
        break;
      }
    }
    if (flag == nullptr) unknown_flag(name, flags, command, removed);
    FlagUse use;
    use.flag = flag;
    if (!flag_takes_value(flag->kind)) {
      if (eq != std::string::npos) throw std::invalid_argument(name + " takes no value, found '" + arg + "'");
      use.source = name;
    } else if (eq != std::string::npos) {
      use.value = arg.substr(eq + 1);
      use.source = arg;
    } else {
      if (i + 1 >= args.size()) {
        throw std::invalid_argument(name + " needs a value" +
                                    (flag->arg.empty() ? std::string() : " (" + std::string(flag->arg) + ")"));
      }
      use.value = args[++i];
      use.source = name + " " + use.value;
    }
    out.uses.push_back(std::move(use));
  }
  return out;
}

// Where a tree made from flags says a value came from when no single flag did.
inline config::Location command_line_location() { return config::Location{"command line", 0, 0}; }

// The node at dotted `key` under `root`, creating maps on the way and a null leaf when absent, all
// located at `loc`. Fails at `loc` when the path crosses a value that is not a mapping.
inline config::Value& node_at(config::Value& root, std::string_view key, const config::Location& loc) {
  config::Value* node = &root;
  std::string walked;
  std::size_t start = 0;
  while (true) {
    const std::size_t dot = key.find('.', start);
    const std::string segment(key.substr(start, dot == std::string_view::npos ? std::string_view::npos : dot - start));
    if (node->is_null()) {
      config::Value map = config::Value::make_map(loc);
      map.key_loc = node->key_loc.source.empty() ? loc : node->key_loc;
      *node = std::move(map);
    }
    if (!node->is_map()) {
      config::fail(loc, "'" + walked + "' is " + node->describe() + ", so it has no key '" + segment + "'");
    }
    config::Value* child = node->find(segment);
    if (child == nullptr) {
      config::Value fresh;
      fresh.loc = loc;
      fresh.key_loc = loc;
      node->entries.emplace_back(segment, std::move(fresh));
      child = &node->entries.back().second;
    }
    node = child;
    walked += (walked.empty() ? "" : ".") + segment;
    if (dot == std::string_view::npos) break;
    start = dot + 1;
  }
  return *node;
}

// Makes every mapping that a flag's key lies in (for "generation.sampling.top_p": generation and
// generation.sampling) where it is absent or null, located at the command line, so that the
// mappings are not located at whichever flag happened to create them. Leaves anything else as it is
// (the binder reports it).
inline void ensure_flag_maps(config::Value& root, const std::vector<Flag>& flags) {
  const config::Location loc = command_line_location();
  for (const auto& f : flags) {
    const std::size_t last_dot = f.key.rfind('.');
    if (last_dot == std::string_view::npos) continue;
    config::Value* node = &root;
    std::size_t start = 0;
    while (node->is_map() && start < last_dot) {
      const std::size_t dot = f.key.find('.', start);
      const std::string segment(f.key.substr(start, dot - start));
      config::Value* child = node->find(segment);
      if (child == nullptr) {
        config::Value map = config::Value::make_map(loc);
        map.key_loc = loc;
        node->entries.emplace_back(segment, std::move(map));
        child = &node->entries.back().second;
      } else if (child->is_null()) {
        config::Value map = config::Value::make_map(child->loc.source.empty() ? loc : child->loc);
        map.key_loc = child->key_loc;
        *child = std::move(map);
      }
      node = child;
      start = dot + 1;
    }
  }
}

// An empty tree for `flags`: the root and the mappings their keys lie in.
inline config::Value flag_tree(const std::vector<Flag>& flags) {
  config::Value root = config::Value::make_map(command_line_location());
  ensure_flag_maps(root, flags);
  return root;
}

// "1, 2,3" -> the list [1, 2, 3] of unquoted scalars (the binder checks that they are integers).
inline config::Value id_list(const std::string& text, const config::Location& loc) {
  config::Value list = config::Value::make_list(loc);
  list.key_loc = loc;
  std::size_t start = 0;
  while (true) {
    const std::size_t comma = text.find(',', start);
    std::string item = text.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
    const std::size_t first = item.find_first_not_of(" \t");
    const std::size_t last = item.find_last_not_of(" \t");
    item = first == std::string::npos ? std::string() : item.substr(first, last - first + 1);
    list.items.push_back(config::Value::make_scalar(std::move(item), false, loc));
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  return list;
}

inline void append_at(config::Value& root, std::string_view key, config::Value item, const config::Location& loc) {
  config::Value& list = node_at(root, key, loc);
  if (list.is_null()) {
    list = config::Value::make_list(loc);
    list.key_loc = loc;
  }
  if (!list.is_list()) {
    config::fail(loc, std::string(key) + ": expected a list to add to, found " + list.describe());
  }
  list.items.push_back(std::move(item));
}

// Writes one flag use into the tree (custom flags: nothing).
inline void apply_flag(config::Value& root, const FlagUse& use) {
  const Flag& f = *use.flag;
  const config::Location loc{use.source, 0, 0};
  const std::string key(f.key);
  switch (f.kind) {
    case FlagKind::value: config::apply_override(root, key + "=" + use.value, use.source); break;
    case FlagKind::on: config::apply_override(root, key + "=true", use.source); break;
    case FlagKind::off: config::apply_override(root, key + "=false", use.source); break;
    case FlagKind::text: {
      config::Value& node = node_at(root, key, loc);
      node = config::Value::make_scalar(use.value, true, loc);
      node.key_loc = loc;
      break;
    }
    case FlagKind::append_text: append_at(root, key, config::Value::make_scalar(use.value, true, loc), loc); break;
    case FlagKind::append_ids: append_at(root, key, id_list(use.value, loc), loc); break;
    case FlagKind::set: config::apply_override(root, use.value); break;
    case FlagKind::custom: break;
  }
}

// Every use in command-line order, so a later flag overrides an earlier one.
inline void apply_flags(config::Value& root, const ParsedFlags& parsed) {
  for (const auto& use : parsed.uses) apply_flag(root, use);
}

// A "missing required key 'model'" message with the flag that sets it: "... (pass --model DIR)".
inline std::string name_missing_flag(const std::string& message, const std::vector<Flag>& flags) {
  static const std::string marker = "missing required key '";
  const std::size_t at = message.find(marker);
  if (at == std::string::npos) return message;
  const std::size_t start = at + marker.size();
  const std::size_t end = message.find('\'', start);
  if (end == std::string::npos) return message;
  const std::string key = message.substr(start, end - start);
  for (const auto& f : flags) {
    if (f.kind != FlagKind::set && f.kind != FlagKind::custom && f.key == key) {
      std::string hint = message + " (pass ";
      hint += f.name;
      if (!f.arg.empty()) {
        hint += ' ';
        hint += f.arg;
      }
      return hint + ")";
    }
  }
  return message;
}

// Binds the tree to T with config::from_value: its errors, with the flag named for a missing key.
template <class T>
T bind_tree(const config::Value& root, const std::vector<Flag>& flags) {
  try {
    return config::from_value<T>(root);
  } catch (const config::ConfigError& e) {
    throw config::ConfigError(name_missing_flag(e.what(), flags));
  }
}

// flag_tree + apply_flags + bind_tree.
template <class T>
T bind_flags(const ParsedFlags& parsed, const std::vector<Flag>& flags) {
  config::Value root = flag_tree(flags);
  apply_flags(root, parsed);
  return bind_tree<T>(root, flags);
}

}  // namespace grpo::tools
