// Extraction, parsing and comparison of math answers; see grpo/rewards/math_answer.h.
#include "grpo/rewards/math_answer.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <numeric>
#include <utility>

namespace grpo::rewards {
namespace {

bool is_space(char c) { return std::isspace(static_cast<unsigned char>(c)) != 0; }
bool is_digit(char c) { return c >= '0' && c <= '9'; }

std::string_view trim(std::string_view s) {
  while (!s.empty() && is_space(s.front())) s.remove_prefix(1);
  while (!s.empty() && is_space(s.back())) s.remove_suffix(1);
  return s;
}

bool starts_with(std::string_view s, std::string_view p) { return s.substr(0, p.size()) == p; }

void replace_all(std::string& s, std::string_view from, std::string_view to) {
  std::string out;
  size_t start = 0;
  for (size_t pos = s.find(from); pos != std::string::npos; pos = s.find(from, start)) {
    out.append(s, start, pos - start);
    out.append(to);
    start = pos + from.size();
  }
  out.append(s, start, std::string::npos);
  s = std::move(out);
}

// Index just past the brace group opening at s[open] ('{'), or npos when it never closes.
size_t match_brace(std::string_view s, size_t open) {
  int depth = 0;
  for (size_t i = open; i < s.size(); ++i) {
    if (s[i] == '\\' && i + 1 < s.size() && (s[i + 1] == '{' || s[i + 1] == '}')) {
      ++i;
      continue;
    }
    if (s[i] == '{') ++depth;
    if (s[i] == '}' && --depth == 0) return i + 1;
  }
  return std::string_view::npos;
}

// A marked answer found in the text: its content and where its marker ends.
struct Found {
  std::string content;
  size_t end = 0;
};

std::optional<Found> last_boxed(std::string_view s) {
  std::optional<Found> best;
  for (std::string_view command : {"\\boxed", "\\fbox"}) {
    for (size_t pos = s.find(command); pos != std::string_view::npos; pos = s.find(command, pos + 1)) {
      size_t i = pos + command.size();
      while (i < s.size() && is_space(s[i])) ++i;
      if (i >= s.size()) continue;
      if (s[i] == '{') {
        size_t end = match_brace(s, i);
        if (end == std::string_view::npos) continue;
        if (!best || end > best->end) best = Found{std::string(s.substr(i + 1, end - i - 2)), end};
      } else if (command == "\\boxed" && pos + command.size() < s.size() && s[pos + command.size()] == ' ') {
        // "\boxed 5": the next token.
        size_t end = i;
        while (end < s.size() && !is_space(s[end]) && s[end] != '$') ++end;
        if (!best || end > best->end) best = Found{std::string(s.substr(i, end - i)), end};
      }
    }
  }
  return best;
}

std::optional<Found> last_answer_tag(std::string_view s) {
  size_t close = s.rfind("</answer>");
  if (close == std::string_view::npos) return std::nullopt;
  size_t open = s.rfind("<answer>", close);
  if (open == std::string_view::npos) return std::nullopt;
  std::string_view inner = s.substr(open + 8, close - open - 8);
  if (auto boxed = last_boxed(inner)) return Found{boxed->content, close + 9};
  return Found{std::string(trim(inner)), close + 9};
}

// The last number in free text: digits with thousands separators and a decimal part, a/b,
// \frac{a}{b}, an optional sign and a trailing percent sign.
std::optional<std::string> last_number(std::string_view s) {
  std::optional<std::string> best;
  size_t i = 0;
  while (i < s.size()) {
    size_t start = i;
    if (starts_with(s.substr(i), "\\frac") || starts_with(s.substr(i), "\\dfrac") ||
        starts_with(s.substr(i), "\\tfrac")) {
      size_t j = s.find('{', i);
      size_t mid = j == std::string_view::npos ? j : match_brace(s, j);
      size_t end = (mid == std::string_view::npos || mid >= s.size() || s[mid] != '{') ? std::string_view::npos
                                                                                       : match_brace(s, mid);
      if (end != std::string_view::npos) {
        size_t sign = start;
        if (sign > 0 && s[sign - 1] == '-') --sign;
        best = std::string(s.substr(sign, end - sign));
        i = end;
        continue;
      }
      i += 5;
      continue;
    }
    bool leading_point = s[i] == '.' && i + 1 < s.size() && is_digit(s[i + 1]) && (i == 0 || !is_digit(s[i - 1]));
    if (!is_digit(s[i]) && !leading_point) {
      ++i;
      continue;
    }
    size_t j = i;
    while (j < s.size() && is_digit(s[j])) ++j;
    // Thousands groups: ",ddd" not followed by another digit.
    while (j + 3 < s.size() && s[j] == ',' && is_digit(s[j + 1]) && is_digit(s[j + 2]) && is_digit(s[j + 3]) &&
           (j + 4 >= s.size() || !is_digit(s[j + 4]))) {
      j += 4;
    }
    if (j + 1 < s.size() && s[j] == '.' && is_digit(s[j + 1])) {
      ++j;
      while (j < s.size() && is_digit(s[j])) ++j;
    }
    if (j + 1 < s.size() && s[j] == '/' && is_digit(s[j + 1])) {
      ++j;
      while (j < s.size() && is_digit(s[j])) ++j;
    }
    if (j + 1 < s.size() && s[j] == '^' && is_digit(s[j + 1])) {  // 10^3 (math-verify reads it; not 10^{-3})
      j += 2;
      while (j < s.size() && is_digit(s[j])) ++j;
    }
    if (j < s.size() && s[j] == '%') ++j;
    else if (j + 1 < s.size() && s[j] == '\\' && s[j + 1] == '%') j += 2;
    size_t sign = start;
    if (sign > 0 && s[sign - 1] == '-') --sign;
    best = std::string(s.substr(sign, j - sign));
    i = j;
  }
  return best;
}

// ---- numbers ---------------------------------------------------------------------------------

using i128 = __int128;

ParsedNumber make_rational(i128 num, i128 den, bool decimal) {
  ParsedNumber n;
  n.decimal = decimal;
  if (den < 0) num = -num, den = -den;
  i128 a = num < 0 ? -num : num, b = den;
  while (b != 0) {
    i128 t = a % b;
    a = b;
    b = t;
  }
  if (a > 1) num /= a, den /= a;
  n.value = static_cast<double>(num) / static_cast<double>(den);
  constexpr i128 kMax = static_cast<i128>(INT64_MAX);
  if (num > kMax || num < -kMax || den > kMax) {
    n.exact = false;
  } else {
    n.numerator = static_cast<std::int64_t>(num);
    n.denominator = static_cast<std::int64_t>(den);
  }
  return n;
}

ParsedNumber make_inexact(double value, bool decimal) {
  ParsedNumber n;
  n.exact = false;
  n.value = value;
  n.decimal = decimal;
  return n;
}

// a + b and a * b, exact where both are.
std::optional<ParsedNumber> add(const ParsedNumber& a, const ParsedNumber& b) {
  if (a.exact && b.exact) {
    i128 num = static_cast<i128>(a.numerator) * b.denominator + static_cast<i128>(b.numerator) * a.denominator;
    i128 den = static_cast<i128>(a.denominator) * b.denominator;
    return make_rational(num, den, a.decimal || b.decimal);
  }
  return make_inexact(a.value + b.value, a.decimal || b.decimal);
}

ParsedNumber divide(const ParsedNumber& a, const ParsedNumber& b) {
  if (a.exact && b.exact && b.numerator != 0) {
    return make_rational(static_cast<i128>(a.numerator) * b.denominator, static_cast<i128>(a.denominator) * b.numerator,
                         a.decimal || b.decimal);
  }
  return make_inexact(a.value / b.value, a.decimal || b.decimal);
}

ParsedNumber times_power_of_ten(const ParsedNumber& a, int exponent) {
  if (a.exact && std::abs(exponent) <= 18) {
    i128 p = 1;
    for (int k = 0; k < std::abs(exponent); ++k) p *= 10;
    if (exponent >= 0) return make_rational(static_cast<i128>(a.numerator) * p, a.denominator, a.decimal);
    return make_rational(a.numerator, static_cast<i128>(a.denominator) * p, a.decimal);
  }
  return make_inexact(a.value * std::pow(10.0, exponent), a.decimal);
}

// Plain decimal: digits with optional thousands groups, optional fraction part; the whole string.
std::optional<ParsedNumber> parse_decimal(std::string_view s) {
  if (s.empty()) return std::nullopt;
  std::string digits;
  size_t i = 0;
  size_t int_digits = 0;
  while (i < s.size() && is_digit(s[i])) digits += s[i++], ++int_digits;
  if (i < s.size() && s[i] == ',') {
    if (int_digits == 0 || int_digits > 3) return std::nullopt;
    while (i < s.size() && s[i] == ',') {
      if (i + 4 > s.size() || !is_digit(s[i + 1]) || !is_digit(s[i + 2]) || !is_digit(s[i + 3])) return std::nullopt;
      digits.append(s.substr(i + 1, 3));
      i += 4;
      int_digits += 3;
    }
    if (i < s.size() && is_digit(s[i])) return std::nullopt;
  }
  bool decimal = false;
  size_t frac_digits = 0;
  if (i < s.size() && s[i] == '.') {
    decimal = true;
    ++i;
    while (i < s.size() && is_digit(s[i])) digits += s[i++], ++frac_digits;
  }
  if (i != s.size() || int_digits + frac_digits == 0) return std::nullopt;
  // Exact when it fits.
  size_t first = digits.find_first_not_of('0');
  std::string significant = first == std::string::npos ? "0" : digits.substr(first);
  if (significant.size() <= 18 && frac_digits <= 18) {
    i128 num = 0;
    for (char c : significant) num = num * 10 + (c - '0');
    i128 den = 1;
    for (size_t k = 0; k < frac_digits; ++k) den *= 10;
    return make_rational(num, den, decimal);
  }
  std::string plain = digits.substr(0, digits.size() - frac_digits) + "." + digits.substr(digits.size() - frac_digits);
  return make_inexact(std::strtod(plain.c_str(), nullptr), decimal);
}

// Reads one brace group or single character argument of \frac at s[i]: returns the argument and
// moves i past it.
std::optional<std::string_view> latex_argument(std::string_view s, size_t& i) {
  while (i < s.size() && is_space(s[i])) ++i;
  if (i >= s.size()) return std::nullopt;
  if (s[i] == '{') {
    size_t end = match_brace(s, i);
    if (end == std::string_view::npos) return std::nullopt;
    std::string_view arg = s.substr(i + 1, end - i - 2);
    i = end;
    return arg;
  }
  if (is_digit(s[i])) return s.substr(i++, 1);
  return std::nullopt;
}

std::optional<ParsedNumber> parse_scalar(std::string_view s);

// Integer exponent of 10^{e} / 10^e.
std::optional<int> parse_exponent(std::string_view s) {
  s = trim(s);
  if (!s.empty() && s.front() == '{' && s.back() == '}') s = trim(s.substr(1, s.size() - 2));
  bool negative = false;
  if (!s.empty() && (s.front() == '-' || s.front() == '+')) negative = s.front() == '-', s.remove_prefix(1);
  if (s.empty() || s.size() > 3) return std::nullopt;
  int e = 0;
  for (char c : s) {
    if (!is_digit(c)) return std::nullopt;
    e = e * 10 + (c - '0');
  }
  return negative ? -e : e;
}

// An unsigned scalar: decimal, a/b, \frac{a}{b}, n\frac{a}{b}, m\times10^{e}, 10^{e}.
std::optional<ParsedNumber> parse_unsigned(std::string_view s) {
  s = trim(s);
  if (s.empty()) return std::nullopt;
  // Redundant braces or parentheses around the whole thing.
  if ((s.front() == '{' && match_brace(s, 0) == s.size())) return parse_scalar(s.substr(1, s.size() - 2));
  // Scientific: m \times 10^{e}, m \cdot 10^{e}, 10^{e}.
  for (std::string_view op : {"\\times", "\\cdot"}) {
    size_t pos = s.find(op);
    if (pos != std::string_view::npos) {
      std::string_view rest = trim(s.substr(pos + op.size()));
      if (!starts_with(rest, "10^")) return std::nullopt;
      auto mantissa = parse_scalar(s.substr(0, pos));
      auto exponent = parse_exponent(rest.substr(3));
      if (!mantissa || !exponent) return std::nullopt;
      return times_power_of_ten(*mantissa, *exponent);
    }
  }
  if (starts_with(s, "10^")) {
    auto exponent = parse_exponent(s.substr(3));
    if (!exponent) return std::nullopt;
    return times_power_of_ten(make_rational(1, 1, false), *exponent);
  }
  // \frac, possibly after a whole part (a mixed number).
  size_t frac = s.find("\\frac");
  if (frac != std::string_view::npos) {
    size_t i = frac + 5;
    auto top = latex_argument(s, i);
    auto bottom = top ? latex_argument(s, i) : std::nullopt;
    if (!bottom || !trim(s.substr(i)).empty()) return std::nullopt;
    auto a = parse_scalar(*top);
    auto b = parse_scalar(*bottom);
    if (!a || !b || b->value == 0) return std::nullopt;
    ParsedNumber q = divide(*a, *b);
    std::string_view whole = trim(s.substr(0, frac));
    if (whole.empty()) return q;
    auto w = parse_decimal(whole);
    if (!w || w->decimal || a->value < 0 || b->value < 0) return std::nullopt;
    return add(*w, q);
  }
  size_t slash = s.find('/');
  if (slash != std::string_view::npos) {
    auto a = parse_scalar(s.substr(0, slash));
    auto b = parse_scalar(s.substr(slash + 1));
    if (!a || !b || b->value == 0) return std::nullopt;
    return divide(*a, *b);
  }
  return parse_decimal(s);
}

std::optional<ParsedNumber> parse_scalar(std::string_view s) {
  s = trim(s);
  bool negative = false;
  while (!s.empty() && (s.front() == '-' || s.front() == '+')) {
    if (s.front() == '-') negative = !negative;
    s = trim(s.substr(1));
  }
  bool percent = false;
  if (!s.empty() && s.back() == '%') {
    percent = true;
    s.remove_suffix(1);
    if (!s.empty() && s.back() == '\\') s.remove_suffix(1);
    s = trim(s);
  }
  auto n = parse_unsigned(s);
  if (!n) return std::nullopt;
  if (negative) {
    n->numerator = -n->numerator;
    n->value = -n->value;
  }
  n->percent = n->percent || percent;
  return n;
}

// ---- normalization ---------------------------------------------------------------------------

// Strips math delimiters, sizing commands, spacing, dollar signs and text wrappers: \text{3} keeps
// 3, \text{ cm} (a unit after something) goes.
std::string normalize(std::string_view raw) {
  std::string s(trim(raw));
  auto strip_pair = [&](std::string_view open, std::string_view close) {
    std::string_view t = trim(s);
    if (t.size() >= open.size() + close.size() && starts_with(t, open) && t.substr(t.size() - close.size()) == close) {
      s = std::string(trim(t.substr(open.size(), t.size() - open.size() - close.size())));
      return true;
    }
    return false;
  };
  for (bool changed = true; changed;) {
    changed = strip_pair("$$", "$$") || strip_pair("$", "$") || strip_pair("\\(", "\\)") || strip_pair("\\[", "\\]");
  }
  for (std::string_view wrapper : {"\\displaystyle", "\\left", "\\right", "\\!", "\\$", "\\mathrm{}"}) {
    replace_all(s, wrapper, "");
  }
  for (std::string_view space : {"\\,", "\\;", "\\:", "\\quad", "\\ ", "~"}) replace_all(s, space, " ");
  replace_all(s, "\\dfrac", "\\frac");
  replace_all(s, "\\tfrac", "\\frac");
  // \text{...}, \mathrm{...}, \textbf{...}, \mbox{...}: keep numeric content, drop units.
  for (std::string_view command : {"\\text", "\\mathrm", "\\textbf", "\\mbox", "\\mathbf"}) {
    for (size_t pos = s.find(command); pos != std::string::npos; pos = s.find(command, pos)) {
      size_t open = pos + command.size();
      if (open >= s.size() || s[open] != '{') {
        pos = open;
        continue;
      }
      size_t end = match_brace(s, open);
      if (end == std::string::npos) break;
      std::string inner(trim(std::string_view(s).substr(open + 1, end - open - 2)));
      bool unit = pos > 0 && !parse_scalar(inner).has_value();
      s.replace(pos, end - pos, unit ? std::string() : inner);
    }
  }
  std::string_view t = trim(s);
  while (!t.empty() && t.back() == '.') t = trim(t.substr(0, t.size() - 1));
  return std::string(t);
}

// Splits at commas outside braces, brackets and parentheses.
std::vector<std::string_view> split_top_level(std::string_view s) {
  std::vector<std::string_view> parts;
  int depth = 0;
  size_t start = 0;
  for (size_t i = 0; i < s.size(); ++i) {
    char c = s[i];
    if (c == '{' || c == '(' || c == '[') ++depth;
    if (c == '}' || c == ')' || c == ']') --depth;
    if (c == ',' && depth == 0) {
      parts.push_back(s.substr(start, i - start));
      start = i + 1;
    }
  }
  parts.push_back(s.substr(start));
  return parts;
}

std::optional<std::vector<ParsedNumber>> parse_elements(std::string_view s) {
  std::vector<ParsedNumber> out;
  for (std::string_view part : split_top_level(s)) {
    auto n = parse_scalar(part);
    if (!n) return std::nullopt;
    out.push_back(*n);
  }
  return out;
}

// ---- comparison ------------------------------------------------------------------------------

// The value with the percent applied.
double applied(const ParsedNumber& n) { return n.percent ? n.value / 100.0 : n.value; }

bool exact_equal(const ParsedNumber& a, bool percent_a, const ParsedNumber& b, bool percent_b) {
  // a.num/a.den * (percent_a ? 1/100 : 1) == b.num/b.den * (percent_b ? 1/100 : 1)
  i128 left = static_cast<i128>(a.numerator) * b.denominator * (percent_b ? 100 : 1);
  i128 right = static_cast<i128>(b.numerator) * a.denominator * (percent_a ? 100 : 1);
  return left == right;
}

bool rounded_equal(double a, double b, int decimals) {
  double scale = std::pow(10.0, decimals);
  return std::nearbyint(a * scale) == std::nearbyint(b * scale);
}

bool numbers_equal(const ParsedNumber& a, const ParsedNumber& b, const MathAnswerConfig& config) {
  bool pa = a.percent && config.percent_equals_fraction;
  bool pb = b.percent && config.percent_equals_fraction;
  // math-verify: integers (also integer percentages) compare as the bare numbers: 50% == 50.
  bool a_integer = a.exact && a.denominator == 1 && !a.decimal;
  bool b_integer = b.exact && b.denominator == 1 && !b.decimal;
  if (a_integer && b_integer && (a.percent || b.percent)) {
    if (a.numerator == b.numerator) return true;
  }
  if (a.decimal || b.decimal) {
    // An integer against a decimal compares exactly (math-verify, through sympy >= 1.13 where
    // Float(1.0) != Integer(1) after rounding: 3 == 3.0 but 1 != 1.0000001); otherwise both sides
    // are rounded to float_rounding decimals (1/3 == 0.333333).
    auto integer_valued = [](const ParsedNumber& n, bool percent) {
      return n.exact && !n.decimal &&
             (static_cast<i128>(n.numerator) % (static_cast<i128>(n.denominator) * (percent ? 100 : 1))) == 0;
    };
    if ((integer_valued(a, pa) || integer_valued(b, pb)) && a.exact && b.exact) return exact_equal(a, pa, b, pb);
    double va = pa ? applied(a) : a.value, vb = pb ? applied(b) : b.value;
    return rounded_equal(va, vb, config.float_rounding);
  }
  if (a.exact && b.exact) return exact_equal(a, pa, b, pb);
  double va = pa ? applied(a) : a.value, vb = pb ? applied(b) : b.value;
  return std::abs(va - vb) <= std::max(config.abs_tol, config.rel_tol * std::max(std::abs(va), std::abs(vb)));
}

bool ordered_equal(const std::vector<ParsedNumber>& a, const std::vector<ParsedNumber>& b,
                   const MathAnswerConfig& config) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (!numbers_equal(a[i], b[i], config)) return false;
  }
  return true;
}

bool set_equal(const std::vector<ParsedNumber>& a, const std::vector<ParsedNumber>& b, const MathAnswerConfig& config) {
  auto covered = [&](const std::vector<ParsedNumber>& x, const std::vector<ParsedNumber>& y) {
    return std::all_of(x.begin(), x.end(), [&](const ParsedNumber& n) {
      return std::any_of(y.begin(), y.end(), [&](const ParsedNumber& m) { return numbers_equal(n, m, config); });
    });
  };
  return covered(a, b) && covered(b, a);
}

}  // namespace

std::optional<std::string> extract_answer(std::string_view completion, const MathAnswerConfig& config) {
  std::optional<Found> boxed = last_boxed(completion);
  std::optional<Found> tagged = last_answer_tag(completion);
  std::optional<Found> chosen;
  switch (config.prefer) {
    case AnswerPreference::boxed: chosen = boxed ? boxed : tagged; break;
    case AnswerPreference::answer_tags: chosen = tagged ? tagged : boxed; break;
    case AnswerPreference::last:
      chosen = !boxed ? tagged : !tagged ? boxed : (boxed->end > tagged->end ? boxed : tagged);
      break;
  }
  if (chosen) return std::string(trim(chosen->content));
  if (config.fallback == AnswerFallback::last_number) return last_number(completion);
  return std::nullopt;
}

std::optional<ParsedAnswer> parse_answer(std::string_view answer) {
  std::string s = normalize(answer);
  if (s.empty()) return std::nullopt;
  ParsedAnswer out;
  std::string_view t = s;
  // Bracketed: (a, b), [a, b), a tuple of three or more; "(5)" is just 5.
  if (t.size() >= 2 && (t.front() == '(' || t.front() == '[') && (t.back() == ')' || t.back() == ']')) {
    std::string_view inner = t.substr(1, t.size() - 2);
    if (split_top_level(inner).size() > 1) {
      if (auto elements = parse_elements(inner)) {
        out.kind = ParsedAnswer::Kind::sequence;
        out.elements = std::move(*elements);
        out.open = t.front();
        out.close = t.back();
        return out;
      }
    } else if (t.front() == '(' && t.back() == ')') {
      if (auto n = parse_scalar(inner)) {
        out.kind = ParsedAnswer::Kind::number;
        out.number = *n;
        return out;
      }
    }
  }
  if (auto n = parse_scalar(t)) {
    out.kind = ParsedAnswer::Kind::number;
    out.number = *n;
    return out;
  }
  if (split_top_level(t).size() > 1) {
    if (auto elements = parse_elements(t)) {
      out.kind = ParsedAnswer::Kind::sequence;
      out.elements = std::move(*elements);
      return out;
    }
  }
  out.kind = ParsedAnswer::Kind::text;
  for (char c : s) {
    if (!is_space(c)) out.text += c;
  }
  return out;
}

bool answers_equal(const ParsedAnswer& a, const ParsedAnswer& b, const MathAnswerConfig& config) {
  using Kind = ParsedAnswer::Kind;
  if (a.kind == Kind::text || b.kind == Kind::text) return a.kind == b.kind && a.text == b.text;
  if (a.kind == Kind::number && b.kind == Kind::number) return numbers_equal(a.number, b.number, config);
  if (a.kind == Kind::number || b.kind == Kind::number) return false;
  bool a_bare = a.open == 0, b_bare = b.open == 0;
  if (a_bare && b_bare) return set_equal(a.elements, b.elements, config);
  if (a_bare || b_bare) {
    // math-verify: an open interval (a, b) also equals the bare list "a, b", in order.
    const ParsedAnswer& bracketed = a_bare ? b : a;
    if (bracketed.open != '(' || bracketed.close != ')') return false;
    return ordered_equal(a.elements, b.elements, config);
  }
  return a.open == b.open && a.close == b.close && ordered_equal(a.elements, b.elements, config);
}

bool math_accuracy(std::string_view reference, std::string_view completion, const MathAnswerConfig& config) {
  std::optional<std::string> gold_text;
  if (reference.find("\\boxed") != std::string_view::npos) {
    MathAnswerConfig boxed_only = config;
    boxed_only.prefer = AnswerPreference::boxed;
    gold_text = extract_answer(reference, boxed_only);
  } else {
    gold_text = std::string(reference);
  }
  std::optional<std::string> answer_text = extract_answer(completion, config);
  if (!gold_text || !answer_text) return false;
  auto gold = parse_answer(*gold_text);
  auto answer = parse_answer(*answer_text);
  return gold && answer && answers_equal(*gold, *answer, config);
}

}  // namespace grpo::rewards
