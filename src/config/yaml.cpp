// YAML text <-> grpo::config::Value. yaml-cpp parses; the emitter is ours so that comments,
// quoting and layout are exactly what docs/config.md shows.
#include <yaml-cpp/yaml.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "grpo/config/value.h"

namespace grpo::config {
namespace {

// Where a parsed node or error was: line and column from yaml-cpp, or only `source` for text
// that has no lines of its own.
struct Origin {
  std::string source;
  bool track_lines = true;

  Location at(const YAML::Mark& mark) const {
    if (!track_lines) return Location{source, 0, 0};
    // yaml-cpp marks are 0-based, and -1 when unknown.
    return Location{source, mark.line >= 0 ? mark.line + 1 : 0, mark.column >= 0 ? mark.column + 1 : 0};
  }
};

Value convert(const YAML::Node& node, const Origin& source, const Location& fallback) {
  Location loc = source.at(node.Mark());
  if (loc.line == 0) loc = fallback;
  switch (node.Type()) {
    case YAML::NodeType::Undefined:
    case YAML::NodeType::Null: {
      Value v;
      v.loc = loc;
      return v;
    }
    case YAML::NodeType::Scalar:
      // yaml-cpp tags plain scalars "?"; quoted ones "!"; explicit tags (!!str) make strings too.
      return Value::make_scalar(node.Scalar(), node.Tag() != "?", loc);
    case YAML::NodeType::Sequence: {
      Value v = Value::make_list(loc);
      for (const auto& item : node) v.items.push_back(convert(item, source, loc));
      return v;
    }
    case YAML::NodeType::Map: {
      Value v = Value::make_map(loc);
      for (const auto& kv : node) {
        const Location key_loc = source.at(kv.first.Mark());
        if (!kv.first.IsScalar()) fail(key_loc, "mapping keys must be plain names");
        const std::string key = kv.first.Scalar();
        if (v.find(key) != nullptr) fail(key_loc, "duplicate key '" + key + "'");
        Value child = convert(kv.second, source, key_loc);
        child.key_loc = key_loc;
        v.entries.emplace_back(key, std::move(child));
      }
      return v;
    }
  }
  return {};
}

// [A-Za-z0-9_.+-]+, scanned (std::regex_match recurses per character).
bool is_simple_plain(const std::string& s) {
  if (s.empty()) return false;
  for (const char c : s) {
    const bool ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' ||
                    c == '.' || c == '+' || c == '-';
    if (!ok) return false;
  }
  return true;
}

std::string quote(const std::string& s) {
  std::string out = "\"";
  for (const unsigned char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\t': out += "\\t"; break;
      case '\r': out += "\\r"; break;
      default:
        if (c < 0x20 || c == 0x7f) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\x%02x", c);
          out += buf;
        } else {
          out += static_cast<char>(c);
        }
    }
  }
  return out + "\"";
}

std::string scalar_text(const Value& v) {
  if (v.is_null()) return "null";
  return v.quoted || !is_simple_plain(v.text) ? quote(v.text) : v.text;
}

std::string key_text(const std::string& k) { return is_simple_plain(k) ? k : quote(k); }

// A list written inline: only scalars that are safe there.
bool is_flow_list(const Value& v) {
  for (const auto& item : v.items) {
    if (!item.is_scalar() && !item.is_null()) return false;
  }
  return true;
}

std::string flow_list(const Value& v) {
  std::string s = "[";
  for (std::size_t i = 0; i < v.items.size(); ++i) s += (i ? ", " : "") + scalar_text(v.items[i]);
  return s + "]";
}

void emit_comment(const std::string& comment, const std::string& pad, std::ostringstream& out) {
  if (comment.empty()) return;
  std::istringstream lines(comment);
  std::string line;
  while (std::getline(lines, line)) out << pad << "# " << line << "\n";
}

void emit_map(const Value& v, int indent, bool comments, std::ostringstream& out);
void emit_list(const Value& v, int indent, std::ostringstream& out);

// Writes what follows "key:" or "- ": the rest of the line and any nested block.
void emit_after_indicator(const Value& v, int indent, std::ostringstream& out) {
  if (v.is_map()) {
    if (v.entries.empty()) {
      out << " {}\n";
    } else {
      out << "\n";
      emit_map(v, indent + 2, true, out);
    }
  } else if (v.is_list()) {
    if (is_flow_list(v)) {
      out << " " << flow_list(v) << "\n";
    } else {
      out << "\n";
      emit_list(v, indent + 2, out);
    }
  } else {
    out << " " << scalar_text(v) << "\n";
  }
}

void emit_map(const Value& v, int indent, bool comments, std::ostringstream& out) {
  const std::string pad(indent, ' ');
  for (const auto& [key, child] : v.entries) {
    if (comments) emit_comment(child.comment, pad, out);
    out << pad << key_text(key) << ":";
    emit_after_indicator(child, indent, out);
  }
}

void emit_list(const Value& v, int indent, std::ostringstream& out) {
  const std::string pad(indent, ' ');
  for (const auto& item : v.items) {
    if (item.is_map() && !item.entries.empty()) {
      // "- first: 1" then the other keys aligned under "first"; no comments inside list items.
      std::ostringstream body;
      emit_map(item, indent + 2, false, body);
      std::string text = body.str();
      text.replace(0, indent + 2, pad + "- ");
      out << text;
    } else {
      out << pad << "-";
      emit_after_indicator(item, indent, out);
    }
  }
}

}  // namespace

Value parse_yaml_string(std::string_view text, const std::string& source, bool track_lines) {
  const Origin origin{source, track_lines};
  YAML::Node node;
  try {
    node = YAML::Load(std::string(text));
  } catch (const YAML::Exception& e) {
    fail(origin.at(e.mark), "invalid YAML: " + e.msg);
  }
  const Location start = track_lines ? Location{source, 1, 1} : Location{source, 0, 0};
  Value v = convert(node, origin, start);
  if (v.loc.line == 0) v.loc = start;
  return v;
}

Value parse_yaml_file(const std::string& path) {
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) {
    throw ConfigError("config file '" + path + "' does not exist");
  }
  if (std::filesystem::is_directory(path, ec)) {
    throw ConfigError("config file '" + path + "' is a directory, expected a YAML file");
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) throw ConfigError("config file '" + path + "' cannot be read");
  std::ostringstream text;
  text << in.rdbuf();
  Value root = parse_yaml_string(text.str(), path);
  if (root.is_null()) return Value::make_map(Location{path, 1, 1});  // an empty file
  if (!root.is_map()) fail(root.loc, "expected a mapping of keys at the top level, found " + root.describe());
  return root;
}

std::string emit_yaml(const Value& root) {
  std::ostringstream out;
  if (root.is_map()) {
    emit_map(root, 0, true, out);
  } else if (root.is_list()) {
    emit_list(root, 0, out);
  } else {
    out << scalar_text(root) << "\n";
  }
  return out.str();
}

}  // namespace grpo::config
