// Parsing half of grpo::format (see include/grpo/core/format.h).
#include "grpo/core/format.h"

#include <stdexcept>

namespace grpo::detail {
namespace {

[[noreturn]] void throw_bad_format(std::string_view fmt, std::string_view why) {
  throw std::invalid_argument("grpo::format: " + std::string(why) + " in format string \"" + std::string(fmt) + "\"");
}

// Reads a run of decimal digits starting at `i`; returns -1 when there is none.
int read_number(std::string_view s, std::size_t& i) {
  int n = -1;
  while (i < s.size() && s[i] >= '0' && s[i] <= '9') {
    n = (n < 0 ? 0 : n * 10) + (s[i] - '0');
    if (n > 1000) return 1001;
    ++i;
  }
  return n;
}

}  // namespace

FormatSpec parse_format_spec(std::string_view fmt, std::string_view spec) {
  FormatSpec out;
  if (spec.empty()) return out;
  if (spec[0] != ':') throw_bad_format(fmt, "field '{" + std::string(spec) + "}' is not supported");
  std::size_t i = 1;
  if (i < spec.size() && spec[i] == '<') {
    out.left = true;
    ++i;
  }
  const int width = read_number(spec, i);
  if (width > 1000) throw_bad_format(fmt, "field width over 1000");
  if (width > 0) out.width = width;
  if (i < spec.size() && spec[i] == '.') {
    ++i;
    out.precision = read_number(spec, i);
    if (out.precision < 0 || out.precision > 100) throw_bad_format(fmt, "bad precision");
  }
  if (i < spec.size() && (spec[i] == 'f' || spec[i] == 'e' || spec[i] == 'g')) out.style = spec[i++];
  if (i != spec.size()) {
    throw_bad_format(fmt, "field '{" + std::string(spec) + "}' is not supported");
  }
  return out;
}

bool next_format_field(std::string_view fmt, std::size_t& pos, std::ostream& out, std::string_view& spec) {
  while (pos < fmt.size()) {
    const char c = fmt[pos];
    if (c == '{') {
      if (pos + 1 < fmt.size() && fmt[pos + 1] == '{') {
        out << '{';
        pos += 2;
        continue;
      }
      const std::size_t close = fmt.find('}', pos + 1);
      if (close == std::string_view::npos) throw_bad_format(fmt, "unmatched '{'");
      spec = fmt.substr(pos + 1, close - pos - 1);
      pos = close + 1;
      return true;
    }
    if (c == '}') {
      if (pos + 1 < fmt.size() && fmt[pos + 1] == '}') {
        out << '}';
        pos += 2;
        continue;
      }
      throw_bad_format(fmt, "unmatched '}'");
    }
    out << c;
    ++pos;
  }
  return false;
}

void throw_format_arg_count(std::string_view fmt, std::size_t given) {
  throw_bad_format(fmt, "the number of fields does not match the " + std::to_string(given) + " argument(s) given");
}

}  // namespace grpo::detail
