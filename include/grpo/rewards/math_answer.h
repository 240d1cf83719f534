// Math answers: pull the final answer out of a completion, parse it into a number, a tuple or
// interval of numbers, or a normalized string, and compare two answers the way the Python
// `math-verify` library (0.9.0) does on those forms. Pure functions; no torch.
//
//   extract_answer("... so the answer is \\boxed{\\dfrac{3}{4}}.", {})  -> "\\dfrac{3}{4}"
//   parse_answer("\\dfrac{3}{4}")                                       -> number 3/4 (exact)
//   math_accuracy("0.75", "... \\boxed{\\dfrac{3}{4}}.", {})            -> true
//
// Equality follows math-verify: exact rationals compare exactly; when either side is written with
// a decimal point both are rounded to `float_rounding` decimals (1/3 == 0.333333, 1 != 1.000001);
// an integer percentage equals its bare number and, with percent_equals_fraction, its fraction
// (50% == 50 == 0.5); (a, b) and [a, b) compare in order with their brackets; a bare list "1, 2"
// is a set. docs/rewards.md lists the forms and the measured agreement with math-verify.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "grpo/config/config.h"

namespace grpo::rewards {

// What extract_answer returns when the completion has neither \boxed{} nor <answer> tags.
enum class AnswerFallback {
  last_number,  // the last number in the text ("... 12 apples, so 42" -> "42")
  none,         // nothing: the completion scores 0
};
constexpr auto config_enum_names(AnswerFallback) {
  return std::array{std::pair{AnswerFallback::last_number, "last_number"}, std::pair{AnswerFallback::none, "none"}};
}

// Which marked answer wins when a completion has both \boxed{} and <answer> tags.
enum class AnswerPreference {
  boxed,        // the last \boxed{} (or \fbox{}) anywhere, else the last <answer>
  answer_tags,  // the last <answer>...</answer>, else the last \boxed{}
  last,         // whichever of the two ends last in the text
};
constexpr auto config_enum_names(AnswerPreference) {
  return std::array{std::pair{AnswerPreference::boxed, "boxed"},
                    std::pair{AnswerPreference::answer_tags, "answer_tags"}, std::pair{AnswerPreference::last, "last"}};
}

struct MathAnswerConfig {
  AnswerFallback fallback = AnswerFallback::last_number;  // no \boxed{} and no <answer>: what to take
  AnswerPreference prefer = AnswerPreference::boxed;      // \boxed{} vs <answer> when both appear
  int float_rounding = 6;               // decimals kept when either side has a decimal point (math-verify: 6)
  double rel_tol = 1e-6;                // relative tolerance, only for values too large for exact rationals
  double abs_tol = 1e-9;                // absolute tolerance, same
  bool percent_equals_fraction = true;  // "50%" == 0.5 (and always == 50, as math-verify)

  template <class V>
  void visit(V& v) {
    using config::Check;
    v("fallback", fallback, "no \\boxed{} or <answer>: last_number (take the last number) or none");
    v("prefer", prefer, "boxed | answer_tags | last: which marked answer wins when both appear");
    v("float_rounding", float_rounding, "decimals compared when either side has a decimal point", Check().ge(0).le(15));
    v("rel_tol", rel_tol, "relative tolerance for values beyond exact 64-bit rationals", Check().ge(0));
    v("abs_tol", abs_tol, "absolute tolerance for values beyond exact 64-bit rationals", Check().ge(0));
    v("percent_equals_fraction", percent_equals_fraction, "\"50%\" also equals 0.5 (it always equals 50)");
  }
};

// One number as written: an exact rational when it fits in 64 bits, and its double value.
struct ParsedNumber {
  bool exact = true;  // numerator/denominator are valid
  std::int64_t numerator = 0;
  std::int64_t denominator = 1;  // > 0, reduced
  double value = 0.0;            // the value (percent not applied)
  bool decimal = false;          // written with a decimal point: compared after rounding
  bool percent = false;          // written with a trailing % (value is the number before the %)
};

struct ParsedAnswer {
  enum class Kind {
    number,    // 42, -3.5, 1,234, 3/4, \frac{3}{4}, 2\frac{1}{2}, 50%, 1.5\times10^{3}
    sequence,  // (1, 2), [1, 2), (1, 2, 3): `open`/`close` hold the brackets; a bare "1, 2" has none
    text,      // anything else, normalized (spaces and simple wrappers removed)
  };
  Kind kind = Kind::text;
  ParsedNumber number;                 // kind == number
  std::vector<ParsedNumber> elements;  // kind == sequence
  char open = 0;                       // '(' or '[' for a bracketed sequence; 0 for a bare list
  char close = 0;                      // ')' or ']'; 0 for a bare list
  std::string text;                    // kind == text: the normalized string
};

// The final answer of a completion: the last \boxed{...} or \fbox{...} (nested braces kept), or
// the content of the last <answer>...</answer> (a \boxed{} inside it wins), ordered by
// config.prefer, else config.fallback. nullopt when there is none (or a \boxed{ never closes and
// nothing else is found).
std::optional<std::string> extract_answer(std::string_view completion, const MathAnswerConfig& config);

// Parses a bare answer ("3/4", "\\dfrac{3}{4}", "$(1, 2]$", "5\\text{ cm}"). nullopt for an
// empty answer; anything non-numeric comes back as Kind::text.
std::optional<ParsedAnswer> parse_answer(std::string_view answer);

bool answers_equal(const ParsedAnswer& a, const ParsedAnswer& b, const MathAnswerConfig& config);

// The reference is a bare answer or contains \boxed{}; the completion's answer is extracted first.
// False when either has no answer.
bool math_accuracy(std::string_view reference, std::string_view completion, const MathAnswerConfig& config);

}  // namespace grpo::rewards
