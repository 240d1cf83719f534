// Built-in problem generators: tasks a tiny model learns on CPU in minutes, with answers a rule can
// check. Seeded and reproducible (the same config gives the same records with every standard
// library), with a held-out split that no training set can contain.
//
//   arithmetic  "What is 478 + 596?" -> "1074", reasoning: column addition with carries, column
//               subtraction with borrows, or multiplication by partial products, one step a line.
//   countdown   "Using the numbers [3, 7, 16, 25], make 38. ..." -> "(25 - 7) * 3 - 16", reasoning:
//               the steps of a found solution ("25 - 7 = 18", ...).
//
// Countdown rule: every given number is used exactly once (as in TinyZero's R1-Zero countdown),
// with + - * / where every intermediate result is a positive integer (subtraction only of a
// smaller from a larger number, division only when exact). The generator picks the target among
// the values that this search reaches, so every problem has a solution, and stores the first one
// found. A reward may accept any expression that uses each number exactly once and evaluates
// exactly to the target; the stored one always does.
//
// Held-out split: a problem belongs to the eval split when a hash of its canonical form (operands
// of + and * sorted; countdown numbers sorted, with the target) falls below holdout_fraction. The
// train split never yields an eval problem and vice versa, whatever the seeds. Within one call the
// problems are distinct.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "grpo/config/config.h"
#include "grpo/data/record.h"

namespace grpo::data {

enum class GeneratorKind { arithmetic, countdown };
constexpr auto config_enum_names(GeneratorKind) {
  return std::array{std::pair{GeneratorKind::arithmetic, "arithmetic"},
                    std::pair{GeneratorKind::countdown, "countdown"}};
}

enum class Split { train, eval };
constexpr auto config_enum_names(Split) {
  return std::array{std::pair{Split::train, "train"}, std::pair{Split::eval, "eval"}};
}

struct ArithmeticConfig {
  int min_digits = 1;                              // fewest digits of an operand
  int max_digits = 3;                              // most digits of an operand (<= 9)
  std::vector<std::string> ops = {"+", "-", "*"};  // operations to draw from, uniformly
  std::string reasoning = "verbose";  // verbose: one sentence per column; compact: "7+5=12, 3+4+1=8, 37+45=82"
  double carry_slip_rate = 0.0;       // share of compact worked additions with a carry whose writer forgets
                                      // every carry (reasoning and answer wrong alike): imperfect cold-start data

  template <class V>
  void visit(V& v) {
    using config::Check;
    v("min_digits", min_digits, "fewest digits per operand", Check().in(1, 9));
    v("max_digits", max_digits, "most digits per operand", Check().in(1, 9));
    v("ops", ops, "operations drawn uniformly; subtraction keeps a >= b", Check().nonempty().one_of({"+", "-", "*"}));
    v("reasoning", reasoning, "worked solution style: verbose (a line per column) | compact (7+5=12, 3+4+1=8, ...)",
      Check().one_of({"verbose", "compact"}));
    v("carry_slip_rate", carry_slip_rate,
      "share of compact worked additions (with a carry) written with every carry forgotten, answer included",
      Check().in(0.0, 1.0));
  }
  std::string validate() const;
};

struct CountdownConfig {
  int numbers = 4;           // how many numbers are given (each used exactly once)
  int64_t number_min = 1;    // smallest given number
  int64_t number_max = 25;   // largest given number
  int64_t target_min = 10;   // smallest target
  int64_t target_max = 100;  // largest target

  template <class V>
  void visit(V& v) {
    using config::Check;
    v("numbers", numbers, "numbers given, each used exactly once", Check().in(2, 5));
    v("number_min", number_min, "smallest given number", Check().in(1, 1000));
    v("number_max", number_max, "largest given number", Check().in(1, 1000));
    v("target_min", target_min, "smallest target", Check().ge(1));
    v("target_max", target_max, "largest target", Check().ge(1));
  }
  std::string validate() const;
};

struct GeneratorConfig {
  GeneratorKind kind = GeneratorKind::arithmetic;  // arithmetic | countdown
  int64_t count = 1000;                            // distinct problems to generate
  int64_t seed = 0;                                // the same seed and config give the same records
  Split split = Split::train;                      // train | eval: disjoint problem sets (by holdout_fraction)
  double holdout_fraction = 0.1;                   // share of all problems reserved for eval
  bool with_reasoning = true;                      // true: SFT records with a worked solution; false: RL prompts
  ArithmeticConfig arithmetic;
  CountdownConfig countdown;

  template <class V>
  void visit(V& v) {
    using config::Check;
    v("kind", kind, "arithmetic | countdown");
    v("count", count, "distinct problems to generate", Check().ge(1));
    v("seed", seed, "random seed; the same seed and config give the same records", Check().ge(0));
    v("split", split, "train | eval; eval problems never appear in a train split");
    v("holdout_fraction", holdout_fraction, "share of the problem space reserved for eval", Check().ge(0).lt(1));
    v("with_reasoning", with_reasoning, "true: SFT records with worked solutions; false: answer only (RL)");
    v("arithmetic", arithmetic, "kind arithmetic");
    v("countdown", countdown, "kind countdown");
  }
  std::string validate() const;
};

// `count` distinct problems of `cfg.kind` in the chosen split. Records have source
// "generator:<kind>" and line = index + 1; arithmetic records carry extra {"expression": "478 + 596"},
// countdown records {"numbers": "[3,7,16,25]", "target": "38"} (JSON text). Throws
// std::runtime_error when the problem space is too small to give `count` distinct problems.
std::vector<Record> generate(const GeneratorConfig& cfg);

// Whether the problem with this canonical key belongs to the eval split (a hash of `kind:key`
// below holdout_fraction). The keys: "478+596", "503-287", "3,7,16,25=38".
bool in_holdout(GeneratorKind kind, const std::string& key, double holdout_fraction);

}  // namespace grpo::data
