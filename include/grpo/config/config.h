// Typed configuration structs, loaded from YAML with every problem reported at start.
//
// A component owns a plain struct whose members carry their defaults, and lists its fields once in
// a `visit` member template; the same list drives loading, validation, printing and the generated
// key reference:
//
//   struct OptimizerConfig {
//     double lr = 3e-4;  // peak learning rate after warmup
//     std::string schedule = "cosine";
//     template <class V> void visit(V& v) {
//       v("lr", lr, "peak learning rate after warmup", Check().gt(0));
//       v("schedule", schedule, "cosine | linear | constant", Check().one_of({"cosine", "linear", "constant"}));
//     }
//     // Optional: checks across fields; return "" when fine, else the problem.
//     std::string validate() const;
//   };
//
//   auto cfg = grpo::config::load<JobConfig>("configs/x.yaml", {"optim.lr=1e-4"});
//
// Field types: bool, integers, float/double, std::string, enums (with config_enum_names, below),
// std::optional<T>, std::vector<T>, nested structs with a visit member, and Value (kept as parsed,
// for options that a plugin interprets). Errors are ConfigError, one line each:
//   configs/x.yaml:7:7: optim.lr: expected a number, found 'fast'
//   configs/x.yaml:7:3: unknown key 'optim.lrr' (did you mean 'optim.lr'?)
//   configs/x.yaml:2:1: missing required key 'model.preset'
//   --set optim.lr=-1: optim.lr: must be > 0, found -1
#pragma once

#include <cmath>
#include <concepts>
#include <initializer_list>
#include <limits>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "grpo/config/value.h"

namespace grpo::config {

// Constraints on one field, passed as the fourth argument of a visit call.
struct Check {
  std::optional<double> lo, hi;           // numeric bounds
  bool lo_open = false, hi_open = false;  // strict (>, <) rather than (>=, <=)
  std::vector<std::string> choices;       // allowed string values; empty = any
  bool is_required = false;               // the key must be written
  bool non_empty = false;                 // a string or list must not be empty

  Check& ge(double x) {
    lo = x;
    lo_open = false;
    return *this;
  }
  Check& gt(double x) {
    lo = x;
    lo_open = true;
    return *this;
  }
  Check& le(double x) {
    hi = x;
    hi_open = false;
    return *this;
  }
  Check& lt(double x) {
    hi = x;
    hi_open = true;
    return *this;
  }
  Check& in(double a, double b) { return ge(a).le(b); }
  Check& one_of(std::initializer_list<std::string> c) {
    choices.assign(c);
    return *this;
  }
  Check& required() {
    is_required = true;
    return *this;
  }
  Check& nonempty() {
    non_empty = true;
    return *this;
  }

  // "> 0", "in [0, 1]", "one of: a, b"; "" when unconstrained. Used in messages and docs.
  std::string describe() const;
  // Throws ConfigError at `v.loc` when `x` is out of bounds.
  void check_number(double x, const Value& v, const std::string& path) const;
  void check_string(const std::string& s, const Value& v, const std::string& path) const;
};

// Enums bind by name. Declare, next to the enum, a function found by argument-dependent lookup:
//   constexpr auto config_enum_names(LossType) {
//     return std::array{std::pair{LossType::grpo, "grpo"}, std::pair{LossType::dapo, "dapo"}};
//   }
template <class E>
concept NamedEnum = std::is_enum_v<E> && requires(E e) {
  config_enum_names(e);
};

template <NamedEnum E>
std::string_view enum_name(E e) {
  for (const auto& [value, name] : config_enum_names(E{})) {
    if (value == e) return name;
  }
  return "?";
}

// The enum value named `name`, or nullopt.
template <NamedEnum E>
std::optional<E> enum_from_name(std::string_view name) {
  for (const auto& [value, n] : config_enum_names(E{})) {
    if (name == n) return value;
  }
  return std::nullopt;
}

// "a, b or c": the names of E for messages.
template <NamedEnum E>
std::string enum_names_text() {
  const auto names = config_enum_names(E{});
  std::string out;
  for (std::size_t i = 0; i < names.size(); ++i) {
    if (i > 0) out += i + 1 == names.size() ? " or " : ", ";
    out += names[i].second;
  }
  return out;
}

class Reader;
class Writer;

// A key a section no longer has, and what to write instead. A section lists them as
//   static constexpr std::array<config::RemovedKey, 1> removed_keys{{{"temperature", "use ..."}}};
// and a config that still sets one gets the unknown-key error with that hint:
//   x.yaml:9:3: unknown key 'grpo.loss.temperature' (removed: use ...)
struct RemovedKey {
  const char* key;
  const char* hint;
};

template <class T>
concept Section = std::is_class_v<T> && requires(T& t, Reader& r) {
  t.visit(r);
};

template <class T>
concept HasRemovedKeys = requires {
  T::removed_keys.size();
  T::removed_keys[0].key;
};

template <class T>
concept HasValidate = requires(const T& t) {
  { t.validate() } -> std::convertible_to<std::string>;
};

template <class T>
struct is_optional : std::false_type {};
template <class T>
struct is_optional<std::optional<T>> : std::true_type {};
template <class T>
struct is_vector : std::false_type {};
template <class T, class A>
struct is_vector<std::vector<T, A>> : std::true_type {};

std::string join_path(const std::string& parent, std::string_view key);

// Reads `v` into `out`, checking its type and `check`.
template <class T>
void read_value(const Value& v, T& out, const std::string& path, const Check& check);

// Visitor that reads one YAML mapping into a struct.
class Reader {
 public:
  Reader(const Value& node, std::string path) : node_(node), path_(std::move(path)) {}

  template <class T>
  Reader& operator()(std::string_view key, T& field, std::string_view help = {}, const Check& check = {}) {
    (void)help;
    known_.emplace_back(key);
    const std::string path = join_path(path_, key);
    const Value* v = node_.find(key);
    if (v == nullptr) {
      if (check.is_required) {
        fail(node_.key_loc.line > 0 ? node_.key_loc : node_.loc, "missing required key '" + path + "'");
      }
      if constexpr (Section<T>) {
        // An absent section is read as an empty one, so that its own required keys are reported.
        Value empty = Value::make_map(node_.loc);
        empty.key_loc = node_.key_loc;
        read_value(empty, field, path, check);
      }
      return *this;
    }
    read_value(*v, field, path, check);
    return *this;
  }

  // Reports keys in the mapping that no field claimed (a removed key with its hint).
  void finish(const RemovedKey* removed = nullptr, std::size_t removed_count = 0) const;

 private:
  const Value& node_;
  std::string path_;
  std::vector<std::string> known_;
};

// Visitor that writes a struct as a Value tree with the help texts as comments.
class Writer {
 public:
  explicit Writer(Value& node) : node_(node) {}

  template <class T>
  Writer& operator()(std::string_view key, const T& field, std::string_view help = {}, const Check& check = {}) {
    Value v = to_value(field);
    v.comment = std::string(help);
    const std::string constraint = check.describe();
    if (!constraint.empty()) {
      if (!v.comment.empty()) v.comment += ' ';
      v.comment += '(';
      v.comment += constraint;
      v.comment += ')';
    }
    node_.entries.emplace_back(std::string(key), std::move(v));
    return *this;
  }

  template <class T>
  static Value to_value(const T& x) {
    if constexpr (std::is_same_v<T, Value>) {
      return x;
    } else if constexpr (std::is_same_v<T, bool>) {
      return Value::make_scalar(x ? "true" : "false", false);
    } else if constexpr (NamedEnum<T>) {
      return Value::make_scalar(std::string(enum_name(x)), true);
    } else if constexpr (std::is_integral_v<T>) {
      return Value::make_scalar(std::to_string(x), false);
    } else if constexpr (std::is_floating_point_v<T>) {
      return Value::make_scalar(double_to_text(static_cast<double>(x)), false);
    } else if constexpr (std::is_convertible_v<T, std::string_view>) {
      return Value::make_scalar(std::string(std::string_view(x)), true);
    } else if constexpr (is_optional<T>::value) {
      return x.has_value() ? to_value(*x) : Value{};
    } else if constexpr (is_vector<T>::value) {
      Value list = Value::make_list();
      for (const auto& item : x) list.items.push_back(to_value(item));
      return list;
    } else {
      static_assert(Section<T>, "unsupported config field type");
      Value map = Value::make_map();
      Writer w(map);
      T copy = x;  // visit is a non-const member
      copy.visit(w);
      return map;
    }
  }

 private:
  Value& node_;
};

template <class T>
void read_value(const Value& v, T& out, const std::string& path, const Check& check) {
  if constexpr (std::is_same_v<T, Value>) {
    out = v;
  } else if constexpr (is_optional<T>::value) {
    if (v.is_null()) {
      out.reset();
    } else {
      typename T::value_type inner{};
      if (out.has_value()) inner = *out;
      read_value(v, inner, path, check);
      out = std::move(inner);
    }
  } else if constexpr (is_vector<T>::value) {
    if (!v.is_list()) fail(v.loc, path + ": expected a list, found " + v.describe());
    if (check.non_empty && v.items.empty()) fail(v.loc, path + ": must not be empty");
    T result;
    result.reserve(v.items.size());
    Check element = check;
    element.non_empty = false;
    element.is_required = false;
    for (std::size_t i = 0; i < v.items.size(); ++i) {
      typename T::value_type item{};
      read_value(v.items[i], item, path + "[" + std::to_string(i) + "]", element);
      result.push_back(std::move(item));
    }
    out = std::move(result);
  } else if constexpr (Section<T>) {
    if (v.is_null()) {
      Value empty = Value::make_map(v.loc);
      empty.key_loc = v.key_loc;
      read_value(empty, out, path, check);
      return;
    }
    if (!v.is_map()) fail(v.loc, path + ": expected a mapping of keys, found " + v.describe());
    Reader r(v, path);
    out.visit(r);
    if constexpr (HasRemovedKeys<T>) {
      r.finish(T::removed_keys.data(), T::removed_keys.size());
    } else {
      r.finish();
    }
    if constexpr (HasValidate<T>) {
      const std::string problem = out.validate();
      if (!problem.empty()) fail(v.loc, (path.empty() ? "" : path + ": ") + problem);
    }
  } else if constexpr (std::is_same_v<T, bool>) {
    out = scalar_to_bool(v, path);
  } else if constexpr (NamedEnum<T>) {
    const std::string s = scalar_to_string(v, path);
    std::vector<std::string> names;
    for (const auto& [value, name] : config_enum_names(T{})) {
      if (s == name) {
        out = value;
        return;
      }
      names.emplace_back(name);
    }
    Check choices;
    choices.choices = names;
    choices.check_string(s, v, path);  // fails with the list of names and a suggestion
  } else if constexpr (std::is_integral_v<T>) {
    const long long x = scalar_to_int(v, path);
    if (x < static_cast<long long>(std::numeric_limits<T>::min()) ||
        (x > 0 &&
         static_cast<unsigned long long>(x) > static_cast<unsigned long long>(std::numeric_limits<T>::max()))) {
      fail(v.loc, path + ": " + std::to_string(x) + " does not fit in this field's " + std::to_string(sizeof(T) * 8) +
                      "-bit integer");
    }
    check.check_number(static_cast<double>(x), v, path);
    out = static_cast<T>(x);
  } else if constexpr (std::is_floating_point_v<T>) {
    const double x = scalar_to_double(v, path);
    check.check_number(x, v, path);
    out = static_cast<T>(x);
  } else if constexpr (std::is_same_v<T, std::string>) {
    out = scalar_to_string(v, path);
    check.check_string(out, v, path);
  } else {
    static_assert(sizeof(T) == 0, "unsupported config field type");
  }
}

// Binds a whole document to T: unknown keys, types, ranges, required keys and validate().
template <class T>
T from_value(const Value& root) {
  T cfg{};
  read_value(root, cfg, "", Check{});
  return cfg;
}

// Loads `path` (when given) and applies `overrides` ("a.b=c", as given to --set), then binds.
template <class T>
T load(const std::optional<std::string>& path, const std::vector<std::string>& overrides = {}) {
  Value root = path ? parse_yaml_file(*path) : Value::make_map();
  for (const auto& o : overrides) apply_override(root, o);
  return from_value<T>(root);
}

// The effective configuration as commented YAML; load() of it gives back `cfg`.
template <class T>
std::string to_yaml(const T& cfg) {
  return emit_yaml(Writer::to_value(cfg));
}

// One row per leaf key, for generated documentation: {"optim.lr", "0.0003", "peak ... (> 0)"}.
struct KeyDoc {
  std::string path, default_value, help;
};
std::vector<KeyDoc> describe_keys(const Value& defaults);

template <class T>
std::vector<KeyDoc> describe_keys() {
  return describe_keys(Writer::to_value(T{}));
}

}  // namespace grpo::config
