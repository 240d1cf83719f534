// Generators: reproducible by seed, answers checked independently, held-out split disjoint.
#include <gtest/gtest.h>

#include <algorithm>
#include <cctype>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "grpo/config/config.h"
#include "grpo/data/dataset.h"
#include "grpo/data/generators.h"
#include "test_util.h"

namespace {

using grpo::data::GeneratorConfig;
using grpo::data::GeneratorKind;
using grpo::data::Record;
using grpo::data::Split;

GeneratorConfig arithmetic(int64_t count, int64_t seed, Split split = Split::train) {
  GeneratorConfig c;
  c.kind = GeneratorKind::arithmetic;
  c.count = count;
  c.seed = seed;
  c.split = split;
  return c;
}

GeneratorConfig countdown(int64_t count, int64_t seed, Split split = Split::train) {
  GeneratorConfig c = arithmetic(count, seed, split);
  c.kind = GeneratorKind::countdown;
  return c;
}

std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

struct Expression {
  int64_t a, b;
  char op;
};

Expression parse_expression(const std::string& s) {  // "478 + 596"
  Expression e{};
  std::istringstream in(s);
  std::string op;
  in >> e.a >> op >> e.b;
  EXPECT_TRUE(in && op.size() == 1) << s;
  e.op = op[0];
  return e;
}

// A tiny evaluator for countdown answers: + - * / and parentheses over integers, every division
// exact; collects the literals it reads.
class Evaluator {
 public:
  explicit Evaluator(std::string s) : s_(std::move(s)) {}
  int64_t run() {
    const int64_t v = sum();
    skip();
    if (pos_ != s_.size()) throw std::runtime_error("trailing text in '" + s_ + "'");
    return v;
  }
  std::vector<int64_t> literals;

 private:
  void skip() {
    while (pos_ < s_.size() && s_[pos_] == ' ') ++pos_;
  }
  int64_t sum() {
    int64_t v = product();
    for (skip(); pos_ < s_.size() && (s_[pos_] == '+' || s_[pos_] == '-'); skip()) {
      const char op = s_[pos_++];
      const int64_t r = product();
      v = op == '+' ? v + r : v - r;
    }
    return v;
  }
  int64_t product() {
    int64_t v = atom();
    for (skip(); pos_ < s_.size() && (s_[pos_] == '*' || s_[pos_] == '/'); skip()) {
      const char op = s_[pos_++];
      const int64_t r = atom();
      if (op == '*') {
        v *= r;
      } else {
        if (r == 0 || v % r != 0) throw std::runtime_error("inexact division in '" + s_ + "'");
        v /= r;
      }
    }
    return v;
  }
  int64_t atom() {
    skip();
    if (pos_ < s_.size() && s_[pos_] == '(') {
      ++pos_;
      const int64_t v = sum();
      skip();
      if (pos_ >= s_.size() || s_[pos_] != ')') throw std::runtime_error("unclosed '(' in '" + s_ + "'");
      ++pos_;
      return v;
    }
    const std::size_t start = pos_;
    while (pos_ < s_.size() && std::isdigit(static_cast<unsigned char>(s_[pos_]))) ++pos_;
    if (start == pos_) throw std::runtime_error("expected a number in '" + s_ + "'");
    literals.push_back(std::stoll(s_.substr(start, pos_ - start)));
    return literals.back();
  }
  std::string s_;
  std::size_t pos_ = 0;
};

int digit_count(int64_t x) { return static_cast<int>(std::to_string(x).size()); }

// Checks the worked steps of an arithmetic record and returns the number they arrive at.
int64_t replay_reasoning(const Expression& e, const std::vector<std::string>& lines) {
  if (e.op == '*') {
    // "a * f = p" for each nonzero digit of b (f = digit * 10^i), then "p1 + p2 + ... = total".
    int64_t total = 0, parts = 0;
    for (std::size_t i = 1; i + 1 < lines.size(); ++i) {
      int64_t a, f, p;
      char star, eq;
      std::istringstream in(lines[i]);
      if (in >> a >> star >> f >> eq >> p && star == '*') {
        EXPECT_EQ(a, e.a);
        EXPECT_EQ(p, a * f) << lines[i];
        total += p;
        ++parts;
      }
    }
    if (parts > 1) {
      const std::string& sum_line = lines[lines.size() - 2];
      EXPECT_EQ(sum_line.substr(sum_line.rfind("= ") + 2), std::to_string(total)) << sum_line;
    }
    return total;
  }
  // Column steps: "<place>: ... , write D[, carry C]"; the digits written, least significant first.
  std::string digits;
  for (const auto& line : lines) {
    const auto w = line.rfind("write ");
    if (w == std::string::npos) continue;
    // "tens: 7 + 9 + 1 = 17, write 7, carry 1" / "ones: 3 - 7 = -4, borrow 10: -4 + 10 = 6, write 6"
    const auto colon = line.find(": "), eq = line.find(" = "), comma = line.find(',', eq);
    Evaluator column(line.substr(colon + 2, eq - colon - 2));
    const int64_t value = column.run();
    EXPECT_EQ(std::to_string(value), line.substr(eq + 3, comma - eq - 3)) << line;
    EXPECT_EQ(line[w + 6] - '0', (value + 10) % 10) << line;
    digits.insert(digits.begin(), line[w + 6]);
    EXPECT_TRUE(w + 7 == line.size() || line.compare(w + 7, 8, ", carry ") == 0) << line;
  }
  if (!lines.empty() && lines[lines.size() - 2].rfind("the last carry ", 0) == 0) {
    digits.insert(digits.begin(), lines[lines.size() - 2][15]);
  }
  return std::stoll(digits);
}

TEST(Generator, ArithmeticIsReproducibleAndItsAnswersAreRight) {
  const auto records = grpo::data::generate(arithmetic(500, 3));
  const auto again = grpo::data::generate(arithmetic(500, 3));
  const auto other = grpo::data::generate(arithmetic(500, 4));
  ASSERT_EQ(records.size(), 500u);
  std::set<char> ops;
  for (std::size_t i = 0; i < records.size(); ++i) {
    const Record& r = records[i];
    EXPECT_EQ(r.prompt, again[i].prompt);
    EXPECT_EQ(r.reasoning, again[i].reasoning);
    EXPECT_EQ(r.source, "generator:arithmetic");
    EXPECT_EQ(r.line, static_cast<int64_t>(i) + 1);
    const Expression e = parse_expression(r.extra.at("expression"));
    ops.insert(e.op);
    EXPECT_EQ(r.prompt, "What is " + r.extra.at("expression") + "?");
    EXPECT_LE(digit_count(e.a), 3);
    EXPECT_LE(digit_count(e.b), 3);
    const int64_t want = e.op == '+' ? e.a + e.b : e.op == '-' ? e.a - e.b : e.a * e.b;
    EXPECT_GE(want, 0) << "subtraction keeps a >= b";
    EXPECT_EQ(r.answer, std::to_string(want)) << r.prompt;
    ASSERT_TRUE(r.reasoning.has_value());
    const auto lines = lines_of(*r.reasoning);
    EXPECT_EQ(lines.back(), r.extra.at("expression") + " = " + r.answer);
    EXPECT_EQ(replay_reasoning(e, lines), want) << *r.reasoning;
  }
  EXPECT_EQ(ops, (std::set<char>{'+', '-', '*'}));
  int same = 0;
  for (std::size_t i = 0; i < records.size(); ++i) same += records[i].prompt == other[i].prompt;
  EXPECT_LT(same, 10) << "another seed gives other problems";
}

TEST(Generator, ArithmeticReasoningReadsAsColumnSteps) {
  // Pinned: the first record of seed 1 with 3-digit operands and one operation (the same draws, so
  // the same operands).
  auto cfg = arithmetic(1, 1);
  cfg.arithmetic.min_digits = 3;
  cfg.arithmetic.ops = {"+"};
  const auto add = grpo::data::generate(cfg)[0];
  EXPECT_EQ(add.prompt, "What is 292 + 154?");
  EXPECT_EQ(*add.reasoning,
            "Add column by column from the right, carrying the tens.\n"
            "ones: 2 + 4 = 6, write 6\n"
            "tens: 9 + 5 = 14, write 4, carry 1\n"
            "hundreds: 2 + 1 + 1 = 4, write 4\n"
            "292 + 154 = 446");
  cfg.arithmetic.ops = {"-"};
  const auto sub = grpo::data::generate(cfg)[0];
  EXPECT_EQ(sub.prompt, "What is 292 - 154?");
  EXPECT_EQ(*sub.reasoning,
            "Subtract column by column from the right, borrowing when a column is negative.\n"
            "ones: 2 - 4 = -2, borrow 10: -2 + 10 = 8, write 8\n"
            "tens: 9 - 5 - 1 = 3, write 3\n"
            "hundreds: 2 - 1 = 1, write 1\n"
            "292 - 154 = 138");
  cfg.arithmetic.ops = {"*"};
  const auto mul = grpo::data::generate(cfg)[0];
  EXPECT_EQ(mul.prompt, "What is 292 * 154?");
  EXPECT_EQ(*mul.reasoning,
            "Multiply by each digit of 154 and add the parts.\n"
            "292 * 4 = 1168\n"
            "292 * 50 = 14600\n"
            "292 * 100 = 29200\n"
            "1168 + 14600 + 29200 = 44968\n"
            "292 * 154 = 44968");
}

std::vector<int64_t> parse_numbers(const std::string& json_list) {  // "[3,7,16,25]"
  std::vector<int64_t> out;
  std::string body = json_list.substr(1, json_list.size() - 2);
  std::replace(body.begin(), body.end(), ',', ' ');
  std::istringstream in(body);
  for (int64_t x; in >> x;) out.push_back(x);
  return out;
}

TEST(Generator, CountdownSolutionsUseEachNumberOnceAndHitTheTarget) {
  const auto records = grpo::data::generate(countdown(300, 11));
  const auto again = grpo::data::generate(countdown(300, 11));
  ASSERT_EQ(records.size(), 300u);
  for (std::size_t i = 0; i < records.size(); ++i) {
    const Record& r = records[i];
    EXPECT_EQ(r.answer, again[i].answer);
    EXPECT_EQ(r.prompt, again[i].prompt);
    std::vector<int64_t> numbers = parse_numbers(r.extra.at("numbers"));
    const int64_t target = std::stoll(r.extra.at("target"));
    ASSERT_EQ(numbers.size(), 4u);
    for (int64_t n : numbers) {
      EXPECT_GE(n, 1);
      EXPECT_LE(n, 25);
    }
    EXPECT_GE(target, 10);
    EXPECT_LE(target, 100);

    Evaluator eval(r.answer);
    EXPECT_EQ(eval.run(), target) << r.answer;
    std::vector<int64_t> used = eval.literals;
    std::sort(used.begin(), used.end());
    std::sort(numbers.begin(), numbers.end());
    EXPECT_EQ(used, numbers) << r.answer << " uses each given number exactly once";

    // The reasoning: one "x op y = z" line per combination, each a positive integer, then the expression.
    const auto lines = lines_of(*r.reasoning);
    ASSERT_EQ(lines.size(), 4u) << *r.reasoning;
    for (std::size_t k = 0; k + 1 < lines.size(); ++k) {
      const auto eq = lines[k].find(" = ");
      ASSERT_NE(eq, std::string::npos);
      Evaluator step(lines[k].substr(0, eq));
      const int64_t value = step.run();
      EXPECT_EQ(std::to_string(value), lines[k].substr(eq + 3)) << lines[k];
      EXPECT_GT(value, 0);
    }
    EXPECT_EQ(lines.back(), r.answer + " = " + std::to_string(target));
    EXPECT_EQ(lines[2].substr(lines[2].find(" = ") + 3), std::to_string(target));
  }
  EXPECT_EQ(records[0].prompt.rfind("Using the numbers [", 0), 0u);
  EXPECT_NE(records[0].prompt.find("each number exactly once"), std::string::npos);
}

TEST(Generator, CountdownWithThreeNumbersAndRlPrompts) {
  auto cfg = countdown(100, 5);
  cfg.countdown.numbers = 3;
  cfg.countdown.number_max = 10;
  cfg.countdown.target_min = 1;
  cfg.countdown.target_max = 50;
  cfg.with_reasoning = false;
  for (const Record& r : grpo::data::generate(cfg)) {
    EXPECT_FALSE(r.reasoning.has_value());
    Evaluator eval(r.answer);
    EXPECT_EQ(std::to_string(eval.run()), r.extra.at("target"));
    EXPECT_EQ(eval.literals.size(), 3u);
  }
}

// The canonical key the generator documents: operands of + and * sorted.
std::string arithmetic_key(const Record& r) {
  const Expression e = parse_expression(r.extra.at("expression"));
  const bool commutes = e.op != '-';
  return std::to_string(commutes ? std::min(e.a, e.b) : e.a) + e.op +
         std::to_string(commutes ? std::max(e.a, e.b) : e.b);
}

std::string countdown_key(const Record& r) {
  auto numbers = parse_numbers(r.extra.at("numbers"));
  std::sort(numbers.begin(), numbers.end());
  std::string key;
  for (std::size_t i = 0; i < numbers.size(); ++i) {
    if (i > 0) key += ",";
    key += std::to_string(numbers[i]);
  }
  return key + "=" + r.extra.at("target");
}

TEST(Generator, HeldOutProblemsNeverAppearInTrainingSets) {
  for (GeneratorKind kind : {GeneratorKind::arithmetic, GeneratorKind::countdown}) {
    const auto key = kind == GeneratorKind::arithmetic ? arithmetic_key : countdown_key;
    auto cfg = kind == GeneratorKind::arithmetic ? arithmetic(200, 1, Split::eval) : countdown(100, 1, Split::eval);
    if (kind == GeneratorKind::arithmetic) cfg.arithmetic.max_digits = 2;  // a small space: collisions likely
    std::set<std::string> eval_keys;
    for (int64_t seed : {1, 2}) {
      cfg.seed = seed;
      for (const Record& r : grpo::data::generate(cfg)) {
        eval_keys.insert(key(r));
        EXPECT_TRUE(grpo::data::in_holdout(kind, key(r), cfg.holdout_fraction)) << key(r);
      }
    }
    cfg.split = Split::train;
    cfg.count = kind == GeneratorKind::arithmetic ? 2000 : 1000;
    std::set<std::string> train_keys;
    for (int64_t seed : {1, 2, 3}) {
      cfg.seed = seed;
      const auto train = grpo::data::generate(cfg);
      std::set<std::string> distinct;
      for (const Record& r : train) {
        EXPECT_FALSE(eval_keys.count(key(r))) << key(r) << " is held out";
        distinct.insert(key(r));
        train_keys.insert(key(r));
      }
      EXPECT_EQ(distinct.size(), train.size()) << "problems are distinct within a call";
    }
    // The split is a real share of the space: arithmetic with 2 digits has ~12k canonical
    // problems, and three train sets of 2000 cover a good part of it without touching eval.
    EXPECT_GT(train_keys.size(), 2000u);
  }
}

TEST(Generator, TooSmallASpaceIsAnError) {
  auto cfg = arithmetic(1000, 1);
  cfg.arithmetic.max_digits = 1;
  cfg.arithmetic.ops = {"+"};
  int available = 0;  // canonical 1-digit additions a <= b outside the held-out share
  for (int a = 0; a <= 9; ++a) {
    for (int b = a; b <= 9; ++b) {
      available += !grpo::data::in_holdout(GeneratorKind::arithmetic, std::to_string(a) + "+" + std::to_string(b),
                                           cfg.holdout_fraction);
    }
  }
  GRPO_EXPECT_THROW_MESSAGE(
      grpo::data::generate(cfg), std::runtime_error,
      "generator arithmetic: found only " + std::to_string(available) +
          " distinct train problems in 110000 draws, 1000 asked; ask for fewer or widen the ranges");
  cfg.count = available;
  EXPECT_EQ(grpo::data::generate(cfg).size(), static_cast<std::size_t>(available));
}

TEST(Generator, ShippedConfigsLoadAndBadRangesAreReported) {
  const std::string dir = std::string(GRPO_SOURCE_DIR) + "/configs/data/";
  const auto arith = grpo::config::load<GeneratorConfig>(dir + "arithmetic.yaml", {"count=20"});
  EXPECT_EQ(arith.kind, GeneratorKind::arithmetic);
  EXPECT_EQ(grpo::data::generate(arith).size(), 20u);
  const auto cd = grpo::config::load<GeneratorConfig>(dir + "countdown.yaml", {"count=20"});
  EXPECT_EQ(cd.kind, GeneratorKind::countdown);
  EXPECT_FALSE(grpo::data::generate(cd)[0].reasoning.has_value());

  using grpo::config::ConfigError;
  GRPO_EXPECT_THROW_MESSAGE(grpo::config::load<GeneratorConfig>(dir + "arithmetic.yaml", {"arithmetic.min_digits=4"}),
                            ConfigError,
                            dir + "arithmetic.yaml:10:3: arithmetic: min_digits (4) must be <= max_digits (3)");
  GRPO_EXPECT_THROW_MESSAGE(
      grpo::config::load<GeneratorConfig>(dir + "arithmetic.yaml", {"arithmetic.ops=['/']"}), ConfigError,
      "--set arithmetic.ops=['/']: arithmetic.ops[0]: expected one of +, -, *, found the string \"/\" "
      "(did you mean '+'?)");
  GRPO_EXPECT_THROW_MESSAGE(
      grpo::config::load<GeneratorConfig>(dir + "countdown.yaml", {"split=eval", "holdout_fraction=0"}), ConfigError,
      dir + "countdown.yaml:4:1: split eval needs holdout_fraction > 0");
}

TEST(Generator, WrittenSetsLoadBackAsDatasets) {
  grpo::test::TempDir dir;
  const auto records = grpo::data::generate(countdown(50, 2));
  const std::string path = dir.path("countdown.jsonl");
  grpo::data::write_jsonl(path, records);
  grpo::data::DatasetConfig cfg;
  cfg.path = path;
  cfg.fields.reasoning = "reasoning";
  cfg.fields.extra = {"numbers", "target"};
  const auto loaded = grpo::data::load_jsonl(cfg);
  ASSERT_EQ(loaded.size(), records.size());
  for (std::size_t i = 0; i < records.size(); ++i) {
    EXPECT_EQ(loaded[i].prompt, records[i].prompt);
    EXPECT_EQ(loaded[i].answer, records[i].answer);
    EXPECT_EQ(loaded[i].reasoning, records[i].reasoning);
    EXPECT_EQ(loaded[i].extra, records[i].extra);
    EXPECT_EQ(loaded[i].line, static_cast<int64_t>(i) + 1);
  }
}

}  // namespace

namespace grpo::data {
namespace {

std::vector<std::string> split(const std::string& text, const std::string& sep) {
  std::vector<std::string> out;
  for (size_t start = 0;;) {
    const size_t end = text.find(sep, start);
    out.push_back(text.substr(start, end - start));
    if (end == std::string::npos) return out;
    start = end + sep.size();
  }
}

// Left-to-right value of "7+5+1", "5-1-1", "23*40", "-5+10" (one kind of operator per step).
int64_t eval_step(const std::string& e) {
  size_t pos = 0;
  auto number = [&]() {
    size_t used = 0;
    const int64_t v = std::stoll(e.substr(pos), &used);
    pos += used;
    return v;
  };
  int64_t v = number();
  while (pos < e.size()) {
    const char op = e[pos++];
    const int64_t w = number();
    v = op == '+' ? v + w : op == '-' ? v - w : v * w;
  }
  return v;
}

// Compact worked solutions ("7+5=12, 3+4+1=8, 37+45=82"): every step's arithmetic is right, the
// borrow form "2-7=-5+10=5" too, and the last step is the whole problem with its answer.
TEST(Generator, CompactReasoningStepsAreCorrect) {
  GeneratorConfig g;
  g.count = 400;
  g.seed = 11;
  g.arithmetic.max_digits = 3;
  g.arithmetic.reasoning = "compact";
  int64_t steps = 0;
  for (const auto& r : generate(g)) {
    ASSERT_TRUE(r.reasoning.has_value());
    const std::string& text = *r.reasoning;
    EXPECT_EQ(text.find('\n'), std::string::npos);
    const auto parts = split(text, ", ");
    std::string expr = r.extra.at("expression");
    expr.erase(std::remove(expr.begin(), expr.end(), ' '), expr.end());
    EXPECT_EQ(parts.back(), expr + "=" + r.answer) << text;
    for (const auto& step : parts) {
      const auto sides = split(step, "=");
      ASSERT_GE(sides.size(), 2u) << step;
      // "x op y = v" or the borrow "x - y = v + 10 = w": each side's value leads the next side.
      for (size_t k = 0; k + 1 < sides.size(); ++k) {
        const std::string& next = sides[k + 1];
        const size_t op = next.find_first_of("+*", 1);
        EXPECT_EQ(eval_step(sides[k]), eval_step(op == std::string::npos ? next : next.substr(0, op))) << step;
      }
      if (sides.size() == 3) {
        EXPECT_EQ(eval_step(sides[1]), eval_step(sides[2])) << step;
      }
      ++steps;
    }
  }
  EXPECT_GT(steps, 1000);
}

// carry_slip_rate: that share of the compact additions carrying out of the ones column is written
// with every carry forgotten, answer included (37 + 45 -> "7+5=12, 3+4=7, 37+45=72"); the others
// and the problems themselves are those of the same configuration without slips.
TEST(Generator, CarrySlipsForgetEveryCarryInTheirShareOfAdditions) {
  GeneratorConfig g;
  g.count = 2000;
  g.seed = 5;
  g.arithmetic.min_digits = 1;
  g.arithmetic.max_digits = 2;
  g.arithmetic.ops = {"+"};
  g.arithmetic.reasoning = "compact";
  const auto clean = generate(g);
  g.arithmetic.carry_slip_rate = 0.6;
  const auto slipped = generate(g);
  ASSERT_EQ(clean.size(), slipped.size());
  int64_t with_carry = 0, slips = 0;
  for (size_t i = 0; i < slipped.size(); ++i) {
    const auto& r = slipped[i];
    const auto& expr = r.extra.at("expression");
    const auto plus = expr.find(" + ");
    const int64_t a = std::stoll(expr.substr(0, plus)), b = std::stoll(expr.substr(plus + 3));
    EXPECT_EQ(clean[i].extra.at("expression"), expr);  // the same problems, in the same order
    if (a % 10 + b % 10 < 10 || (a < 10 && b < 10)) {  // no carry into another column
      EXPECT_EQ(r.answer, std::to_string(a + b));
      EXPECT_EQ(r.reasoning, clean[i].reasoning);
      continue;
    }
    ++with_carry;
    if (!r.extra.count("slip")) {
      EXPECT_EQ(r.answer, std::to_string(a + b));
      continue;
    }
    ++slips;
    // Forgotten carry: the ones digit of the ones sum, the tens sum written without the carry.
    const int64_t forgot = (a % 10 + b % 10) % 10 + 10 * (a / 10 + b / 10);
    EXPECT_EQ(r.answer, std::to_string(forgot)) << expr;
    const std::string tens = std::to_string(a / 10) + "+" + std::to_string(b / 10) + "=" +
                             std::to_string(a / 10 + b / 10);
    const std::string expected = std::to_string(a % 10) + "+" + std::to_string(b % 10) + "=" +
                                 std::to_string(a % 10 + b % 10) + ", " + tens + ", " + std::to_string(a) + "+" +
                                 std::to_string(b) + "=" + std::to_string(forgot);
    EXPECT_EQ(*r.reasoning, expected);
  }
  EXPECT_GT(with_carry, 600);
  EXPECT_NEAR(static_cast<double>(slips) / static_cast<double>(with_carry), 0.6, 0.05);

  g.arithmetic.reasoning = "verbose";
  EXPECT_NE(g.arithmetic.validate().find("compact"), std::string::npos);
}

}  // namespace
}  // namespace grpo::data
