// The countdown reward (registry name "countdown"): the completion must give an arithmetic expression
// that uses exactly the record's numbers and evaluates to its target, as in TinyZero's R1-Zero
// countdown task.
//
//   record:     extra {"numbers": "[3,7,25,1]", "target": "24"}
//   completion: "<think>...</think><answer>(25 - 1) * 1 = 24</answer>"   -> correct_score
//   completion: "<answer>(25 - 1) * 3</answer>"                           -> format_score ("uses 3, which is not given")
//   completion: "no idea"                                                 -> 0 ("no equation found")
//
// Where the expression comes from: the content of the last <answer>...</answer> (or of a \boxed{}
// inside it); else the content of the last \boxed{...}; else (fallback_last_line) the last line of
// the completion that parses as an expression with at least two numbers. A trailing "= <number>" is dropped ("(25-1)*1 = 24": the
// left side must evaluate to the target, the value after '=' is ignored), as are enclosing $...$,
// \(...\) or \[...\] and a final '.'.
//
// The expression language (a recursive-descent parser, no eval): non-negative integer literals (a
// decimal such as 2.5 is an error, "numbers must be integers"), binary + - * / (also the UTF-8
// signs × ÷ · − and LaTeX \times \div \cdot), unary minus, brackets ( ) [ ] { } and \left( \right),
// whitespace and LaTeX spacing (\, \; \! \quad). Unary minus is allowed: "-3" uses the given number 3
// and negates it (a literal always names a given number; the sign is an operation). Arithmetic is
// exact over 64-bit rationals: 6/4*2 == 3 exactly; an intermediate that does not fit is an
// "overflow"; division by zero is an error. Nesting deeper than kMaxExpressionDepth and text longer
// than kMaxExpressionBytes are errors, so hostile input cannot exhaust the stack or the time.
//
// Scores: the record lacks (or has unparsable) numbers/target -> absent (the function does not
// apply); no expression found or it does not parse -> 0; it parses but uses the wrong numbers,
// overflows, divides by zero or has the wrong value -> format_score; else correct_score.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "grpo/config/config.h"
#include "grpo/rewards/reward.h"

namespace grpo::rewards {

struct CountdownRewardConfig {
  std::string numbers_field = "numbers";  // extra column with the given numbers, a JSON list: "[3,7,25,1]"
  std::string target_field = "target";    // extra column with the target integer: "24"
  bool use_all = true;                    // true: each given number exactly once; false: at most once
  double correct_score = 1.0;             // right numbers and right value
  double format_score = 0.0;              // an expression parsed but is wrong (TinyZero's option: 0.1)
  double tolerance = 1e-6;                // absolute tolerance between the value and the target
  bool fallback_last_line = true;         // no <answer>/\boxed{}: take the last line that parses

  template <class V>
  void visit(V& v) {
    using config::Check;
    v("numbers_field", numbers_field, "record extra column with the numbers, a JSON list of integers",
      Check().nonempty());
    v("target_field", target_field, "record extra column with the target integer", Check().nonempty());
    v("use_all", use_all, "true: every given number exactly once; false: each at most once");
    v("correct_score", correct_score, "score of a correct expression");
    v("format_score", format_score, "score of an expression that parses but is wrong (TinyZero: 0.1)");
    v("tolerance", tolerance, "absolute tolerance between the value and the target", Check().ge(0));
    v("fallback_last_line", fallback_last_line,
      "without <answer> or \\boxed{}, take the last line of the completion that parses as an expression");
  }
};

constexpr int kMaxExpressionDepth = 200;      // nested brackets and unary minus signs
constexpr size_t kMaxExpressionBytes = 4096;  // longer expressions are refused

// An exact rational, reduced, denominator > 0.
struct Rational {
  int64_t numerator = 0;
  int64_t denominator = 1;
  bool operator==(const Rational&) const = default;
};

// "24", "-3/2".
std::string to_string(const Rational& r);

struct ExpressionResult {
  std::optional<Rational> value;  // set when the text parsed and evaluated
  bool parsed = false;            // syntactically valid (value may still be absent: overflow, division by zero)
  std::vector<int64_t> numbers;   // the integer literals in the order written (a unary minus is not part of them)
  std::string error;  // "" when value is set; else "division by zero", "overflow", "unexpected 'x' at 3", ...
};

// Parses and evaluates one expression (no "= value" stripping; see extract_countdown_expression).
ExpressionResult evaluate_expression(std::string_view text);

// The expression a completion gives, cleaned (trailing "= 24", enclosing $ $ and a final '.' removed);
// nullopt when there is none.
std::optional<std::string> extract_countdown_expression(std::string_view completion, const CountdownRewardConfig& cfg);

struct CountdownOutcome {
  std::optional<double> score;  // nullopt: the record has no usable numbers/target
  std::string reason;           // "correct", "uses 7 twice", "evaluates to 23, target 24", "no equation found", ...
  bool found = false;           // an expression was extracted
  bool parsed = false;          // it parsed
  bool numbers_ok = false;      // it used the right numbers
  bool correct = false;         // and reached the target
};

// Scores one completion against the record's numbers and target.
CountdownOutcome countdown_score(const Sample& sample, const CountdownRewardConfig& cfg);

// Registry name "countdown". Metrics: found_fraction, parsed_fraction, numbers_ok_fraction,
// correct_fraction (over the samples the function applies to).
std::unique_ptr<RewardFunction> make_countdown_reward(const CountdownRewardConfig& cfg);

}  // namespace grpo::rewards
