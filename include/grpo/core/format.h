// grpo::format: "{}" substitution for log lines and error messages.
//
// Why not fmt: LibTorch's wheel ships fmt 12 headers while Debian's spdlog is built against fmt 9
// (libfmt.so.9). A translation unit that sees torch's include path and spdlog compiles against one
// and links against the other. Public grpo headers therefore use neither; this formatter covers
// what log lines need and writes values with operator<< (so tensors, sizes and enums work).
//
// Supported replacement fields:
//   {}        the value as operator<< writes it (bool as true/false)
//   {:.Nf}    fixed with N decimals        {:.Ne}  scientific with N decimals
//   {:.Ng}    general with N significant   {:N}    right-aligned in a field of width N
//   {:<N}     left-aligned in width N      {{ }}   literal braces
// A field that does not parse, or a mismatch between fields and arguments, throws
// std::invalid_argument naming the format string: a bad format is a programming error.
#pragma once

#include <cstddef>
#include <ostream>
#include <sstream>
#include <string>
#include <string_view>
#include <type_traits>

namespace grpo {
namespace detail {

// One parsed "{...}" field.
struct FormatSpec {
  char style = 0;      // 0 (default), 'f', 'e' or 'g'
  int precision = -1;  // digits after the point (f, e) or significant digits (g); -1 = default
  int width = 0;       // minimum field width; 0 = none
  bool left = false;   // left-align within width
};

// Parses the text between '{' and '}' (exclusive). Throws std::invalid_argument on bad input.
FormatSpec parse_format_spec(std::string_view fmt, std::string_view spec);

// Writes `value` to `out` following `spec`.
template <class T>
void format_value(std::ostream& out, const FormatSpec& spec, const T& value) {
  std::ostringstream tmp;
  if (spec.style == 'f') tmp << std::fixed;
  if (spec.style == 'e') tmp << std::scientific;
  if (spec.precision >= 0) tmp.precision(spec.precision);
  if constexpr (std::is_same_v<T, bool>) {
    tmp << (value ? "true" : "false");
  } else {
    tmp << value;
  }
  std::string s = tmp.str();
  if (static_cast<int>(s.size()) < spec.width) {
    std::string pad(spec.width - s.size(), ' ');
    s = spec.left ? s + pad : pad + s;
  }
  out << s;
}

// Writes the literal text from `pos` up to the next replacement field ("{{" and "}}" become
// braces), stores the field's spec in `spec`, moves `pos` past it and returns true; returns false
// once the end is reached with no field left. Throws std::invalid_argument on an unmatched brace.
bool next_format_field(std::string_view fmt, std::size_t& pos, std::ostream& out, std::string_view& spec);

[[noreturn]] void throw_format_arg_count(std::string_view fmt, std::size_t given);

inline void format_rest(std::ostream& out, std::string_view fmt, std::size_t pos, std::size_t given) {
  std::string_view spec;
  if (next_format_field(fmt, pos, out, spec)) throw_format_arg_count(fmt, given);
}

template <class First, class... Rest>
void format_rest(std::ostream& out, std::string_view fmt, std::size_t pos, std::size_t given, const First& first,
                 const Rest&... rest) {
  std::string_view spec;
  if (!next_format_field(fmt, pos, out, spec)) throw_format_arg_count(fmt, given);
  format_value(out, parse_format_spec(fmt, spec), first);
  format_rest(out, fmt, pos, given, rest...);
}

}  // namespace detail

// format("step {} loss {:.4f}", 12, 0.5) == "step 12 loss 0.5000"
template <class... Args>
std::string format(std::string_view fmt, const Args&... args) {
  std::ostringstream out;
  detail::format_rest(out, fmt, 0, sizeof...(Args), args...);
  return out.str();
}

}  // namespace grpo
