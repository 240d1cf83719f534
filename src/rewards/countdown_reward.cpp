#include "grpo/rewards/countdown_reward.h"

#include <charconv>
#include <cmath>
#include <limits>
#include <map>
#include <stdexcept>

namespace grpo::rewards {
namespace {

using i128 = __int128;

// ---- exact rationals over 64 bits, computed in 128 bits and checked on the way back ----

struct OverflowError {};
struct DivisionByZero {};

i128 abs128(i128 x) { return x < 0 ? -x : x; }

i128 gcd128(i128 a, i128 b) {
  a = abs128(a);
  b = abs128(b);
  while (b != 0) {
    const i128 t = a % b;
    a = b;
    b = t;
  }
  return a;
}

// Reduces num/den (den != 0) and narrows it to 64 bits, or throws OverflowError.
Rational make_rational(i128 num, i128 den) {
  if (den < 0) {
    num = -num;
    den = -den;
  }
  const i128 g = gcd128(num, den);
  if (g > 1) {
    num /= g;
    den /= g;
  }
  constexpr i128 lo = std::numeric_limits<int64_t>::min(), hi = std::numeric_limits<int64_t>::max();
  if (num < lo || num > hi || den > hi) throw OverflowError{};
  return Rational{static_cast<int64_t>(num), static_cast<int64_t>(den)};
}

Rational add(const Rational& a, const Rational& b) {
  return make_rational(i128(a.numerator) * b.denominator + i128(b.numerator) * a.denominator,
                       i128(a.denominator) * b.denominator);
}
Rational subtract(const Rational& a, const Rational& b) {
  return make_rational(i128(a.numerator) * b.denominator - i128(b.numerator) * a.denominator,
                       i128(a.denominator) * b.denominator);
}
Rational multiply(const Rational& a, const Rational& b) {
  return make_rational(i128(a.numerator) * b.numerator, i128(a.denominator) * b.denominator);
}
Rational divide(const Rational& a, const Rational& b) {
  if (b.numerator == 0) throw DivisionByZero{};
  return make_rational(i128(a.numerator) * b.denominator, i128(a.denominator) * b.numerator);
}
Rational negate(const Rational& a) { return make_rational(-i128(a.numerator), a.denominator); }

// ---- tokens ----

enum class Tok { number, plus, minus, times, divide, open, close, frac, end };

struct Token {
  Tok kind = Tok::end;
  size_t pos = 0;        // byte offset in the text, for messages
  int64_t value = 0;     // Tok::number
  bool too_big = false;  // Tok::number beyond 64 bits
  char bracket = 0;      // Tok::open / Tok::close: '(' '[' '{' / ')' ']' '}'
};

struct ParseError {
  std::string message;
};

bool is_digit(char c) { return c >= '0' && c <= '9'; }
bool is_alpha(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); }
bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }

// The bytes of the UTF-8 character at `pos` (one byte when it is not a valid lead), for messages.
std::string char_at(std::string_view s, size_t pos) {
  const auto lead = static_cast<unsigned char>(s[pos]);
  const size_t n = lead >= 0xF0 ? 4 : lead >= 0xE0 ? 3 : lead >= 0xC0 ? 2 : 1;
  return std::string(s.substr(pos, n));
}

std::vector<Token> tokenize(std::string_view s) {
  // Multi-byte operator signs: × ÷ · − ∗ ⋅
  static const std::pair<std::string_view, Tok> kSigns[] = {{"\xC3\x97", Tok::times},     {"\xC3\xB7", Tok::divide},
                                                            {"\xC2\xB7", Tok::times},     {"\xE2\x88\x92", Tok::minus},
                                                            {"\xE2\x88\x97", Tok::times}, {"\xE2\x8B\x85", Tok::times}};
  std::vector<Token> out;
  size_t i = 0;
  while (i < s.size()) {
    const char c = s[i];
    Token t;
    t.pos = i;
    if (is_space(c)) {
      ++i;
      continue;
    }
    if (is_digit(c)) {
      int64_t v = 0;
      bool big = false;
      while (i < s.size() && is_digit(s[i])) {
        if (__builtin_mul_overflow(v, int64_t{10}, &v) || __builtin_add_overflow(v, int64_t{s[i] - '0'}, &v))
          big = true;
        ++i;
      }
      if (i + 1 < s.size() && s[i] == '.' && is_digit(s[i + 1])) {
        size_t end = i + 1;
        while (end < s.size() && is_digit(s[end])) ++end;
        throw ParseError{"numbers must be integers (found " + std::string(s.substr(t.pos, end - t.pos)) + ")"};
      }
      t.kind = Tok::number;
      t.value = v;
      t.too_big = big;
      out.push_back(t);
      continue;
    }
    switch (c) {
      case '+': t.kind = Tok::plus; break;
      case '-': t.kind = Tok::minus; break;
      case '*': t.kind = Tok::times; break;
      case '/': t.kind = Tok::divide; break;
      case '(':
      case '[':
      case '{':
        t.kind = Tok::open;
        t.bracket = c;
        break;
      case ')':
      case ']':
      case '}':
        t.kind = Tok::close;
        t.bracket = c;
        break;
      default: break;
    }
    if (t.kind != Tok::end) {
      out.push_back(t);
      ++i;
      continue;
    }
    if (c == '\\') {
      size_t end = i + 1;
      while (end < s.size() && is_alpha(s[end])) ++end;
      const std::string_view name = s.substr(i + 1, end - i - 1);
      if (name.empty()) {  // \, \; \! \: "\ " are spacing; \{ \} are braces
        const char next = i + 1 < s.size() ? s[i + 1] : '\0';
        if (next == ',' || next == ';' || next == '!' || next == ':' || next == ' ') {
          i += 2;
          continue;
        }
        if (next == '{' || next == '}') {
          t.kind = next == '{' ? Tok::open : Tok::close;
          t.bracket = next;
          out.push_back(t);
          i += 2;
          continue;
        }
        throw ParseError{"unexpected '\\' at " + std::to_string(i)};
      }
      i = end;
      if (name == "times" || name == "cdot" || name == "ast") {
        t.kind = Tok::times;
      } else if (name == "div") {
        t.kind = Tok::divide;
      } else if (name == "frac" || name == "dfrac" || name == "tfrac") {
        t.kind = Tok::frac;
      } else if (name == "left" || name == "right" || name == "bigl" || name == "bigr" || name == "Bigl" ||
                 name == "Bigr" || name == "quad" || name == "qquad") {
        continue;  // sizing and spacing
      } else {
        throw ParseError{"unknown command '\\" + std::string(name) + "' at " + std::to_string(t.pos)};
      }
      out.push_back(t);
      continue;
    }
    bool matched = false;
    for (const auto& [sign, kind] : kSigns) {
      if (s.substr(i, sign.size()) == sign) {
        t.kind = kind;
        out.push_back(t);
        i += sign.size();
        matched = true;
        break;
      }
    }
    if (!matched) throw ParseError{"unexpected '" + char_at(s, i) + "' at " + std::to_string(i)};
  }
  Token end;
  end.pos = s.size();
  out.push_back(end);
  return out;
}

char closing_of(char open) { return open == '(' ? ')' : open == '[' ? ']' : '}'; }

// ---- recursive descent ----
//   expr    := term (('+' | '-') term)*
//   term    := unary (('*' | '/') unary)*
//   unary   := '-' unary | primary
//   primary := number | open expr close | \frac group group
// Values are evaluated while parsing; the first evaluation error (overflow, division by zero)
// poisons the value but parsing goes on, so that syntax and the numbers used are still checked.

class Parser {
 public:
  explicit Parser(const std::vector<Token>& tokens) : tokens_(tokens) {}

  ExpressionResult run() {
    ExpressionResult result;
    if (tokens_.front().kind == Tok::end) throw ParseError{"empty expression"};
    const std::optional<Rational> v = expr();
    if (peek().kind != Tok::end)
      throw ParseError{"unexpected " + describe(peek()) + " at " + std::to_string(peek().pos)};
    result.parsed = true;
    result.numbers = std::move(numbers_);
    if (error_.empty()) {
      result.value = v;
    } else {
      result.error = error_;
    }
    return result;
  }

 private:
  using Value = std::optional<Rational>;

  const Token& peek() const { return tokens_[next_]; }
  const Token& take() { return tokens_[next_++]; }

  static std::string describe(const Token& t) {
    switch (t.kind) {
      case Tok::number: return "number";
      case Tok::plus: return "'+'";
      case Tok::minus: return "'-'";
      case Tok::times: return "'*'";
      case Tok::divide: return "'/'";
      case Tok::open: return std::string("'") + t.bracket + "'";
      case Tok::close: return std::string("'") + t.bracket + "'";
      case Tok::frac: return "'\\frac'";
      case Tok::end: return "end of expression";
    }
    return "?";
  }

  // Applies `op` unless a value is already poisoned; records the first evaluation error.
  template <class Op>
  Value apply(const Value& a, const Value& b, Op op) {
    if (!a || !b) return std::nullopt;
    try {
      return op(*a, *b);
    } catch (const OverflowError&) {
      if (error_.empty()) error_ = "overflow";
    } catch (const DivisionByZero&) {
      if (error_.empty()) error_ = "division by zero";
    }
    return std::nullopt;
  }

  void enter() {
    if (++depth_ > kMaxExpressionDepth) {
      throw ParseError{"nested deeper than " + std::to_string(kMaxExpressionDepth) + " levels"};
    }
  }

  Value expr() {
    Value v = term();
    while (peek().kind == Tok::plus || peek().kind == Tok::minus) {
      const bool plus = take().kind == Tok::plus;
      const Value rhs = term();
      v = plus ? apply(v, rhs, add) : apply(v, rhs, subtract);
    }
    return v;
  }

  Value term() {
    Value v = unary();
    while (peek().kind == Tok::times || peek().kind == Tok::divide) {
      const bool times = take().kind == Tok::times;
      const Value rhs = unary();
      v = times ? apply(v, rhs, multiply) : apply(v, rhs, divide);
    }
    return v;
  }

  Value unary() {
    if (peek().kind != Tok::minus) return primary();
    take();
    enter();
    const Value v = unary();
    --depth_;
    return apply(v, Rational{}, [](const Rational& a, const Rational&) { return negate(a); });
  }

  Value group() {
    const Token& open = take();
    if (open.kind != Tok::open) {
      throw ParseError{"expected a bracket at " + std::to_string(open.pos) + ", found " + describe(open)};
    }
    enter();
    const Value v = expr();
    const Token& close = take();
    if (close.kind != Tok::close || close.bracket != closing_of(open.bracket)) {
      throw ParseError{std::string("expected '") + closing_of(open.bracket) + "' at " + std::to_string(close.pos) +
                       ", found " + describe(close)};
    }
    --depth_;
    return v;
  }

  Value primary() {
    const Token& t = peek();
    switch (t.kind) {
      case Tok::number: {
        take();
        numbers_.push_back(t.value);
        if (t.too_big) {
          if (error_.empty()) error_ = "overflow";
          return std::nullopt;
        }
        return Rational{t.value, 1};
      }
      case Tok::open: return group();
      case Tok::frac: {
        take();
        const Value num = group();
        const Value den = group();
        return apply(num, den, divide);
      }
      default: throw ParseError{"expected a number at " + std::to_string(t.pos) + ", found " + describe(t)};
    }
  }

  const std::vector<Token>& tokens_;
  size_t next_ = 0;
  int depth_ = 0;
  std::vector<int64_t> numbers_;
  std::string error_;
};

// ---- extraction ----

std::string_view trim(std::string_view s) {
  size_t b = 0, e = s.size();
  while (b < e && is_space(s[b])) ++b;
  while (e > b && is_space(s[e - 1])) --e;
  return s.substr(b, e - b);
}

bool strip_pair(std::string_view& s, std::string_view open, std::string_view close) {
  if (s.size() >= open.size() + close.size() && s.substr(0, open.size()) == open &&
      s.substr(s.size() - close.size()) == close) {
    s = trim(s.substr(open.size(), s.size() - open.size() - close.size()));
    return true;
  }
  return false;
}

// "24", "-24", "24.0": the value after a trailing '='.
bool is_plain_number(std::string_view s) {
  if (!s.empty() && s[0] == '-') s.remove_prefix(1);
  if (s.empty() || !is_digit(s[0])) return false;
  for (char c : s) {
    if (!is_digit(c) && c != '.') return false;
  }
  return true;
}

// Drops enclosing math delimiters, a final '.', and a trailing "= <number>".
std::string clean_expression(std::string_view s) {
  s = trim(s);
  for (bool changed = true; changed;) {
    changed = strip_pair(s, "$$", "$$") || strip_pair(s, "$", "$") || strip_pair(s, "\\(", "\\)") ||
              strip_pair(s, "\\[", "\\]");
    if (!s.empty() && s.back() == '.') {
      s = trim(s.substr(0, s.size() - 1));
      changed = true;
    }
    const size_t eq = s.rfind('=');
    if (eq != std::string_view::npos && is_plain_number(trim(s.substr(eq + 1)))) {
      s = trim(s.substr(0, eq));
      changed = true;
    }
  }
  return std::string(s);
}

// The content of the last <answer>...</answer> that closes.
std::optional<std::string_view> last_answer_block(std::string_view text) {
  constexpr std::string_view open = "<answer>", close = "</answer>";
  size_t pos = text.rfind(open);
  while (pos != std::string_view::npos) {
    const size_t end = text.find(close, pos + open.size());
    if (end != std::string_view::npos) return text.substr(pos + open.size(), end - pos - open.size());
    if (pos == 0) break;
    pos = text.rfind(open, pos - 1);
  }
  return std::nullopt;
}

// The content of the last \boxed{...} whose braces close.
std::optional<std::string_view> last_boxed(std::string_view text) {
  constexpr std::string_view open = "\\boxed{";
  size_t pos = text.rfind(open);
  while (pos != std::string_view::npos) {
    int depth = 1;
    const size_t start = pos + open.size();
    for (size_t i = start; i < text.size(); ++i) {
      if (text[i] == '{') ++depth;
      if (text[i] == '}' && --depth == 0) return text.substr(start, i - start);
    }
    if (pos == 0) break;
    pos = text.rfind(open, pos - 1);
  }
  return std::nullopt;
}

// ---- the record ----

std::optional<int64_t> parse_integer(std::string_view s) {
  s = trim(s);
  if (!s.empty() && s[0] == '+') s.remove_prefix(1);
  int64_t v = 0;
  const auto [ptr, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (s.empty() || ec != std::errc() || ptr != s.data() + s.size()) return std::nullopt;
  return v;
}

// "[3,7,25,1]" -> {3, 7, 25, 1}; nullopt when it is not a non-empty JSON list of integers.
std::optional<std::vector<int64_t>> parse_number_list(std::string_view s) {
  s = trim(s);
  if (s.size() < 2 || s.front() != '[' || s.back() != ']') return std::nullopt;
  s = trim(s.substr(1, s.size() - 2));
  std::vector<int64_t> out;
  while (!s.empty()) {
    const size_t comma = s.find(',');
    const auto v = parse_integer(s.substr(0, comma));
    if (!v) return std::nullopt;
    out.push_back(*v);
    if (comma == std::string_view::npos) break;
    s = s.substr(comma + 1);
    if (trim(s).empty()) return std::nullopt;  // trailing comma
  }
  if (out.empty()) return std::nullopt;
  return out;
}

std::string list_text(const std::vector<int64_t>& v) {
  std::string s = "[";
  for (size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + std::to_string(v[i]);
  return s + "]";
}

// "" when `used` fits `given` (exactly, or at most once each with !use_all), else the first problem.
std::string check_numbers(const std::vector<int64_t>& used, const std::vector<int64_t>& given, bool use_all) {
  std::map<int64_t, int> want, have;
  for (int64_t n : given) ++want[n];
  for (int64_t n : used) ++have[n];
  for (const auto& [n, k] : have) {
    const int g = want.count(n) ? want[n] : 0;
    if (g == 0) return "uses " + std::to_string(n) + ", which is not in " + list_text(given);
    if (k > g) {
      if (g == 1 && k == 2) return "uses " + std::to_string(n) + " twice";
      return "uses " + std::to_string(n) + " " + std::to_string(k) + " times, given " + std::to_string(g);
    }
  }
  if (use_all) {
    for (const auto& [n, g] : want) {
      const int k = have.count(n) ? have[n] : 0;
      if (k < g) {
        if (k == 0) return "does not use " + std::to_string(n);
        return "uses " + std::to_string(n) + " only " + std::to_string(k) + " of " + std::to_string(g) + " times";
      }
    }
  }
  return "";
}

class CountdownReward : public RewardFunction {
 public:
  explicit CountdownReward(CountdownRewardConfig cfg) : cfg_(std::move(cfg)) {}
  std::string name() const override { return "countdown"; }
  RewardBatch score(const std::vector<Sample>& batch) const override {
    RewardBatch out;
    int64_t applies = 0, found = 0, parsed = 0, numbers_ok = 0, correct = 0;
    for (const auto& s : batch) {
      CountdownOutcome o = countdown_score(s, cfg_);
      if (o.score) {
        ++applies;
        found += o.found;
        parsed += o.parsed;
        numbers_ok += o.numbers_ok;
        correct += o.correct;
      }
      out.scores.push_back(o.score);
      out.reasons.push_back(std::move(o.reason));
    }
    if (applies > 0) {
      const double n = static_cast<double>(applies);
      out.metrics["found_fraction"] = found / n;
      out.metrics["parsed_fraction"] = parsed / n;
      out.metrics["numbers_ok_fraction"] = numbers_ok / n;
      out.metrics["correct_fraction"] = correct / n;
    }
    return out;
  }

 private:
  CountdownRewardConfig cfg_;
};

}  // namespace

std::string to_string(const Rational& r) {
  return r.denominator == 1 ? std::to_string(r.numerator)
                            : std::to_string(r.numerator) + "/" + std::to_string(r.denominator);
}

ExpressionResult evaluate_expression(std::string_view text) {
  ExpressionResult result;
  if (text.size() > kMaxExpressionBytes) {
    result.error = "expression longer than " + std::to_string(kMaxExpressionBytes) + " bytes";
    return result;
  }
  try {
    const std::vector<Token> tokens = tokenize(text);
    return Parser(tokens).run();
  } catch (const ParseError& e) {
    result.error = e.message;
  }
  return result;
}

std::optional<std::string> extract_countdown_expression(std::string_view completion, const CountdownRewardConfig& cfg) {
  if (const auto block = last_answer_block(completion)) {
    const auto boxed = last_boxed(*block);  // <answer>\boxed{...}</answer>
    return clean_expression(boxed ? *boxed : *block);
  }
  if (const auto boxed = last_boxed(completion)) return clean_expression(*boxed);
  if (!cfg.fallback_last_line) return std::nullopt;
  size_t end = completion.size();
  while (end > 0) {
    const size_t nl = completion.rfind('\n', end - 1);
    const size_t begin = nl == std::string_view::npos ? 0 : nl + 1;
    const std::string line = clean_expression(completion.substr(begin, end - begin));
    if (!line.empty() && line.size() <= kMaxExpressionBytes) {
      const ExpressionResult r = evaluate_expression(line);
      if (r.parsed && r.numbers.size() >= 2) return line;
    }
    if (nl == std::string_view::npos) break;
    end = nl;
  }
  return std::nullopt;
}

CountdownOutcome countdown_score(const Sample& sample, const CountdownRewardConfig& cfg) {
  CountdownOutcome o;
  const auto numbers_it = sample.extra.find(cfg.numbers_field);
  const auto target_it = sample.extra.find(cfg.target_field);
  if (numbers_it == sample.extra.end()) {
    o.reason = "record has no '" + cfg.numbers_field + "'";
    return o;
  }
  if (target_it == sample.extra.end()) {
    o.reason = "record has no '" + cfg.target_field + "'";
    return o;
  }
  const auto numbers = parse_number_list(numbers_it->second);
  if (!numbers) {
    o.reason = "record's '" + cfg.numbers_field + "' is not a list of integers: " + numbers_it->second;
    return o;
  }
  const auto target = parse_integer(target_it->second);
  if (!target) {
    o.reason = "record's '" + cfg.target_field + "' is not an integer: " + target_it->second;
    return o;
  }

  const auto expression = extract_countdown_expression(sample.completion, cfg);
  if (!expression) {
    o.score = 0.0;
    o.reason = "no equation found";
    return o;
  }
  o.found = true;
  const ExpressionResult r = evaluate_expression(*expression);
  if (!r.parsed) {
    o.score = 0.0;
    o.reason = "cannot parse: " + r.error;
    return o;
  }
  o.parsed = true;
  o.score = cfg.format_score;
  if (std::string problem = check_numbers(r.numbers, *numbers, cfg.use_all); !problem.empty()) {
    o.reason = std::move(problem);
    return o;
  }
  o.numbers_ok = true;
  if (!r.value) {
    o.reason = r.error;
    return o;
  }
  const Rational& v = *r.value;
  const bool exact = v.denominator == 1 && v.numerator == *target;
  const long double value = static_cast<long double>(v.numerator) / static_cast<long double>(v.denominator);
  if (!exact && !(std::fabs(value - static_cast<long double>(*target)) <= cfg.tolerance)) {
    o.reason = "evaluates to " + to_string(v) + ", target " + std::to_string(*target);
    return o;
  }
  o.correct = true;
  o.score = cfg.correct_score;
  o.reason = "correct";
  return o;
}

std::unique_ptr<RewardFunction> make_countdown_reward(const CountdownRewardConfig& cfg) {
  return std::make_unique<CountdownReward>(cfg);
}

}  // namespace grpo::rewards
