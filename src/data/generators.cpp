#include "grpo/data/generators.h"

#include "grpo/core/random.h"

#include <algorithm>
#include <limits>
#include <map>
#include <optional>
#include <random>
#include <set>
#include <stdexcept>

namespace grpo::data {

namespace {

// Uniform in [lo, hi] by rejection: the same on every standard library.
int64_t draw(std::mt19937_64& rng, int64_t lo, int64_t hi) {
  const uint64_t n = static_cast<uint64_t>(hi - lo) + 1;
  if (n == 0) return lo + static_cast<int64_t>(rng());  // the whole 64-bit range
  return lo + static_cast<int64_t>(uniform_below(rng, n));
}

int64_t pow10(int n) {
  int64_t p = 1;
  while (n-- > 0) p *= 10;
  return p;
}

std::string join(const std::vector<std::string>& lines, const char* sep) {
  std::string out;
  for (std::size_t i = 0; i < lines.size(); ++i) {
    if (i > 0) out += sep;
    out += lines[i];
  }
  return out;
}

std::string join(const std::vector<int64_t>& numbers, const char* sep) {
  std::vector<std::string> texts;
  for (int64_t n : numbers) texts.push_back(std::to_string(n));
  return join(texts, sep);
}

// ---------------------------------------------------------------------------------------------
// Arithmetic

const char* place_name(std::size_t i) {
  static const char* const names[] = {
      "ones",     "tens",         "hundreds",         "thousands", "ten thousands", "hundred thousands",
      "millions", "ten millions", "hundred millions", "billions",  "ten billions"};
  return i < std::size(names) ? names[i] : "next";
}

// Digits of x, least significant first; {0} for 0.
std::vector<int> digits_of(int64_t x) {
  std::vector<int> d;
  do {
    d.push_back(static_cast<int>(x % 10));
    x /= 10;
  } while (x > 0);
  return d;
}

std::vector<std::string> addition_steps(int64_t a, int64_t b) {
  const auto da = digits_of(a), db = digits_of(b);
  std::vector<std::string> steps = {"Add column by column from the right, carrying the tens."};
  int carry = 0;
  for (std::size_t i = 0; i < std::max(da.size(), db.size()); ++i) {
    const int x = i < da.size() ? da[i] : 0, y = i < db.size() ? db[i] : 0;
    const int sum = x + y + carry;
    std::string s = std::string(place_name(i)) + ": " + std::to_string(x) + " + " + std::to_string(y);
    if (carry) s += " + " + std::to_string(carry);
    s += " = " + std::to_string(sum) + ", write " + std::to_string(sum % 10);
    carry = sum / 10;
    if (carry) s += ", carry " + std::to_string(carry);
    steps.push_back(s);
  }
  if (carry) steps.push_back("the last carry " + std::to_string(carry) + " is the leading digit");
  return steps;
}

std::vector<std::string> subtraction_steps(int64_t a, int64_t b) {  // a >= b
  const auto da = digits_of(a), db = digits_of(b);
  std::vector<std::string> steps = {"Subtract column by column from the right, borrowing when a column is negative."};
  int borrow = 0;
  for (std::size_t i = 0; i < da.size(); ++i) {
    const int x = da[i], y = i < db.size() ? db[i] : 0;
    const int v = x - y - borrow;
    std::string s = std::string(place_name(i)) + ": " + std::to_string(x) + " - " + std::to_string(y);
    if (borrow) s += " - " + std::to_string(borrow);
    s += " = " + std::to_string(v);
    if (v < 0) {
      s += ", borrow 10: " + std::to_string(v) + " + 10 = " + std::to_string(v + 10) + ", write " +
           std::to_string(v + 10);
      borrow = 1;
    } else {
      s += ", write " + std::to_string(v);
      borrow = 0;
    }
    steps.push_back(s);
  }
  return steps;
}

std::vector<std::string> multiplication_steps(int64_t a, int64_t b) {
  const auto db = digits_of(b);
  std::vector<std::string> steps = {"Multiply by each digit of " + std::to_string(b) + " and add the parts."};
  std::vector<int64_t> parts;
  for (std::size_t i = 0; i < db.size(); ++i) {
    if (db[i] == 0 && db.size() > 1) continue;
    const int64_t factor = db[i] * pow10(static_cast<int>(i));
    parts.push_back(a * factor);
    steps.push_back(std::to_string(a) + " * " + std::to_string(factor) + " = " + std::to_string(a * factor));
  }
  if (parts.size() > 1) {
    int64_t total = 0;
    for (int64_t part : parts) total += part;
    steps.push_back(join(parts, " + ") + " = " + std::to_string(total));
  }
  return steps;
}

// Compact worked solutions: the column operations only, then the result, on one line:
// 37 + 45 -> "7+5=12, 3+4+1=8, 37+45=82"; 52 - 17 -> "2-7=-5+10=5, 5-1-1=3, 52-17=35";
// 23 * 45 -> "23*5=115, 23*40=920, 115+920=1035, 23*45=1035".
// forget_carries (addition only): every column is summed without the carry coming in, as a sloppy
// writer would; *result receives the number such a writer ends with (37 + 45 -> 72).
std::vector<std::string> compact_steps(int64_t a, const std::string& op, int64_t b, bool forget_carries = false,
                                       int64_t* result = nullptr) {
  const auto da = digits_of(a), db = digits_of(b);
  std::vector<std::string> steps;
  if (op == "+") {
    int carry = 0;
    int64_t written = 0;
    const std::size_t columns = std::max(da.size(), db.size());
    for (std::size_t i = 0; i < columns; ++i) {
      const int x = i < da.size() ? da[i] : 0, y = i < db.size() ? db[i] : 0;
      const int sum = x + y + carry;
      std::string s = std::to_string(x) + "+" + std::to_string(y);
      if (carry) s += "+" + std::to_string(carry);
      steps.push_back(s + "=" + std::to_string(sum));
      written += (i + 1 == columns ? sum : sum % 10) * pow10(static_cast<int>(i));
      carry = forget_carries ? 0 : sum / 10;
    }
    if (result != nullptr) *result = written;
  } else if (op == "-") {
    int borrow = 0;
    for (std::size_t i = 0; i < da.size(); ++i) {
      const int x = da[i], y = i < db.size() ? db[i] : 0;
      const int v = x - y - borrow;
      std::string s = std::to_string(x) + "-" + std::to_string(y);
      if (borrow) s += "-" + std::to_string(borrow);
      s += "=" + std::to_string(v);
      if (v < 0) s += "+10=" + std::to_string(v + 10);
      steps.push_back(s);
      borrow = v < 0 ? 1 : 0;
    }
  } else {
    std::vector<int64_t> parts;
    for (std::size_t i = 0; i < db.size(); ++i) {
      if (db[i] == 0 && db.size() > 1) continue;
      const int64_t factor = db[i] * pow10(static_cast<int>(i));
      parts.push_back(a * factor);
      steps.push_back(std::to_string(a) + "*" + std::to_string(factor) + "=" + std::to_string(a * factor));
    }
    if (parts.size() > 1) {
      int64_t total = 0;
      for (int64_t part : parts) total += part;
      steps.push_back(join(parts, "+") + "=" + std::to_string(total));
    }
  }
  return steps;
}

int64_t draw_operand(std::mt19937_64& rng, const ArithmeticConfig& cfg) {
  const int d = static_cast<int>(draw(rng, cfg.min_digits, cfg.max_digits));
  return d == 1 ? draw(rng, 0, 9) : draw(rng, pow10(d - 1), pow10(d) - 1);
}

struct Problem {
  std::string key;  // canonical form, for the split and for distinctness
  Record record;
};

// slip_rng draws the carry slips (its own stream, so that the problems do not depend on the rate).
Problem arithmetic_problem(std::mt19937_64& rng, std::mt19937_64& slip_rng, const ArithmeticConfig& cfg,
                           bool with_reasoning) {
  int64_t a = draw_operand(rng, cfg);
  int64_t b = draw_operand(rng, cfg);
  const std::string op = cfg.ops[static_cast<std::size_t>(draw(rng, 0, static_cast<int64_t>(cfg.ops.size()) - 1))];
  if (op == "-" && a < b) std::swap(a, b);
  int64_t result = 0;
  std::vector<std::string> steps;
  const bool verbose = with_reasoning && cfg.reasoning != "compact";
  if (op == "+") {
    result = a + b;
    if (verbose) steps = addition_steps(a, b);
  } else if (op == "-") {
    result = a - b;
    if (verbose) steps = subtraction_steps(a, b);
  } else {
    result = a * b;
    if (verbose) steps = multiplication_steps(a, b);
  }
  const std::string expression = std::to_string(a) + " " + op + " " + std::to_string(b);
  Problem p;
  const bool commutes = op != "-";
  p.key = std::to_string(commutes ? std::min(a, b) : a) + op + std::to_string(commutes ? std::max(a, b) : b);
  p.record.prompt = "What is " + expression + "?";
  p.record.answer = std::to_string(result);
  if (with_reasoning && cfg.reasoning == "compact") {
    // A slip is drawn only for additions whose ones column carries into another column (and only
    // when the rate is set, so that the data of other configurations does not change).
    const bool has_carry = op == "+" && (a >= 10 || b >= 10) && a % 10 + b % 10 >= 10;
    if (cfg.carry_slip_rate > 0 && has_carry &&
        std::uniform_real_distribution<double>(0.0, 1.0)(slip_rng) < cfg.carry_slip_rate) {
      steps = compact_steps(a, op, b, /*forget_carries=*/true, &result);
      p.record.answer = std::to_string(result);
      p.record.extra["slip"] = "forgot the carries";
    } else {
      steps = compact_steps(a, op, b);
    }
    steps.push_back(std::to_string(a) + op + std::to_string(b) + "=" + std::to_string(result));
    p.record.reasoning = join(steps, ", ");
  } else if (with_reasoning) {
    steps.push_back(expression + " = " + std::to_string(result));
    p.record.reasoning = join(steps, "\n");
  }
  p.record.extra["expression"] = expression;
  return p;
}

// ---------------------------------------------------------------------------------------------
// Countdown

struct Term {
  int64_t value;
  std::string text;  // the expression, with the fewest parentheses that keep its value
  int prec;          // 3 atom, 2 * /, 1 + -
};

struct Solution {
  std::string expression;
  std::vector<std::string> steps;
};

Term combine(const Term& a, char op, const Term& b, int64_t value) {
  const int prec = (op == '+' || op == '-') ? 1 : 2;
  // Left operand: parenthesised when it binds more loosely. Right operand: also when it binds
  // equally under - or / (a - (b + c), a / (b * c)).
  const bool paren_left = a.prec < prec;
  const bool paren_right = b.prec < prec || (b.prec == prec && (op == '-' || op == '/'));
  std::string text = paren_left ? "(" + a.text + ")" : a.text;
  text += std::string(" ") + op + " ";
  text += paren_right ? "(" + b.text + ")" : b.text;
  return Term{value, std::move(text), prec};
}

// Every value reachable by combining all of `terms` (each exactly once) with positive integer
// intermediate results; keeps the first solution found for each value in [lo, hi].
void search(std::vector<Term>& terms, std::vector<std::string>& steps, int64_t lo, int64_t hi,
            std::map<int64_t, Solution>& found) {
  if (terms.size() == 1) {
    const Term& t = terms[0];
    if (t.value >= lo && t.value <= hi && !found.count(t.value)) found[t.value] = Solution{t.text, steps};
    return;
  }
  for (std::size_t i = 0; i < terms.size(); ++i) {
    for (std::size_t j = i + 1; j < terms.size(); ++j) {
      // The larger first, so that - and / stay positive and exact.
      const Term& big = terms[i].value >= terms[j].value ? terms[i] : terms[j];
      const Term& small = terms[i].value >= terms[j].value ? terms[j] : terms[i];
      std::vector<std::pair<char, int64_t>> results = {{'+', big.value + small.value}, {'*', big.value * small.value}};
      if (big.value > small.value) results.push_back({'-', big.value - small.value});
      if (big.value % small.value == 0) results.push_back({'/', big.value / small.value});
      for (const auto& [op, value] : results) {
        std::vector<Term> next;
        next.reserve(terms.size() - 1);
        for (std::size_t k = 0; k < terms.size(); ++k) {
          if (k != i && k != j) next.push_back(terms[k]);
        }
        next.push_back(combine(big, op, small, value));
        steps.push_back(std::to_string(big.value) + " " + op + " " + std::to_string(small.value) + " = " +
                        std::to_string(value));
        search(next, steps, lo, hi, found);
        steps.pop_back();
      }
    }
  }
}

std::optional<Problem> countdown_problem(std::mt19937_64& rng, const CountdownConfig& cfg, bool with_reasoning) {
  std::vector<int64_t> numbers;
  for (int i = 0; i < cfg.numbers; ++i) numbers.push_back(draw(rng, cfg.number_min, cfg.number_max));
  std::vector<Term> terms;
  for (int64_t n : numbers) terms.push_back(Term{n, std::to_string(n), 3});
  std::vector<std::string> steps;
  std::map<int64_t, Solution> found;
  search(terms, steps, cfg.target_min, cfg.target_max, found);
  if (found.empty()) return std::nullopt;
  auto it = found.begin();
  std::advance(it, draw(rng, 0, static_cast<int64_t>(found.size()) - 1));
  const int64_t target = it->first;
  const Solution& solution = it->second;

  std::vector<int64_t> sorted = numbers;
  std::sort(sorted.begin(), sorted.end());
  const std::string list = join(numbers, ", ");

  Problem p;
  p.key = join(sorted, ",") + "=" + std::to_string(target);
  p.record.prompt = "Using the numbers [" + list + "], make " + std::to_string(target) +
                    ". Use +, -, *, / and each number exactly once; every division must be exact.";
  p.record.answer = solution.expression;
  if (with_reasoning) {
    std::vector<std::string> lines = solution.steps;
    lines.push_back(solution.expression + " = " + std::to_string(target));
    p.record.reasoning = join(lines, "\n");
  }
  p.record.extra["numbers"] = "[" + join(numbers, ",") + "]";
  p.record.extra["target"] = std::to_string(target);
  return p;
}

}  // namespace

std::string ArithmeticConfig::validate() const {
  if (min_digits > max_digits) {
    return "min_digits (" + std::to_string(min_digits) + ") must be <= max_digits (" + std::to_string(max_digits) + ")";
  }
  if (carry_slip_rate > 0 && reasoning != "compact") {
    return "carry_slip_rate applies to compact reasoning only, got reasoning: " + reasoning;
  }
  if (carry_slip_rate > 0 && std::find(ops.begin(), ops.end(), "+") == ops.end()) {
    return "carry_slip_rate needs \"+\" among ops (carries are forgotten in additions)";
  }
  return "";
}

std::string CountdownConfig::validate() const {
  if (number_min > number_max) {
    return "number_min (" + std::to_string(number_min) + ") must be <= number_max (" + std::to_string(number_max) + ")";
  }
  if (target_min > target_max) {
    return "target_min (" + std::to_string(target_min) + ") must be <= target_max (" + std::to_string(target_max) + ")";
  }
  return "";
}

std::string GeneratorConfig::validate() const {
  if (split == Split::eval && holdout_fraction <= 0) return "split eval needs holdout_fraction > 0";
  return "";
}

bool in_holdout(GeneratorKind kind, const std::string& key, double holdout_fraction) {
  uint64_t h = 0xCBF29CE484222325ULL;  // FNV-1a over "kind:key"
  const std::string text = std::string(config::enum_name(kind)) + ":" + key;
  for (unsigned char c : text) {
    h ^= c;
    h *= 0x100000001B3ULL;
  }
  const double u = static_cast<double>(splitmix64(h) >> 11) * 0x1.0p-53;  // uniform in [0, 1)
  return u < holdout_fraction;
}

std::vector<Record> generate(const GeneratorConfig& cfg) {
  if (const std::string problem = cfg.validate(); !problem.empty()) throw std::invalid_argument(problem);
  if (const std::string problem = cfg.arithmetic.validate(); !problem.empty()) throw std::invalid_argument(problem);
  if (const std::string problem = cfg.countdown.validate(); !problem.empty()) throw std::invalid_argument(problem);
  const std::string kind(config::enum_name(cfg.kind));
  const bool want_eval = cfg.split == Split::eval;
  std::mt19937_64 rng(splitmix64(static_cast<uint64_t>(cfg.seed) * 2 + (want_eval ? 1 : 0)));
  std::mt19937_64 slip_rng(splitmix64(splitmix64(static_cast<uint64_t>(cfg.seed)) ^ 0x5117ULL));

  std::vector<Record> records;
  std::set<std::string> seen;
  const int64_t max_draws = cfg.count * 100 + 10000;
  int64_t draws = 0;
  while (static_cast<int64_t>(records.size()) < cfg.count) {
    if (draws++ >= max_draws) {
      throw std::runtime_error("generator " + kind + ": found only " + std::to_string(records.size()) + " distinct " +
                               (want_eval ? "eval" : "train") + " problems in " + std::to_string(max_draws) +
                               " draws, " + std::to_string(cfg.count) + " asked; ask for fewer or widen the ranges");
    }
    std::optional<Problem> p;
    if (cfg.kind == GeneratorKind::arithmetic) {
      p = arithmetic_problem(rng, slip_rng, cfg.arithmetic, cfg.with_reasoning);
    } else {
      p = countdown_problem(rng, cfg.countdown, cfg.with_reasoning);
    }
    if (!p) continue;
    if (in_holdout(cfg.kind, p->key, cfg.holdout_fraction) != want_eval) continue;
    if (!seen.insert(p->key).second) continue;
    p->record.source = "generator:" + kind;
    p->record.line = static_cast<int64_t>(records.size()) + 1;
    records.push_back(std::move(p->record));
  }
  return records;
}

}  // namespace grpo::data
