// An example reward plugin: two reward functions that grpo loads from this shared library at run
// time, named in the YAML like the built-ins.
//
//   reasoning_steps  open-r1's reasoning-steps reward: counts step markers ("Step 1:", numbered lines
//                    "1.", bullets "- " / "* ", "First,", "Second,", "Next,", "Finally,") and scores
//                    min(1, count / target_steps).
//   keyword          1 when the completion contains `keyword`, else 0.
//
// Options are bound to a config struct through grpo::config, so a typo in the YAML is reported with
// its file, line and key, as for every built-in.
#include <grpo/config/config.h>
#include <grpo/rewards/plugin.h>

#include <algorithm>
#include <cctype>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace {

using grpo::config::Check;
using grpo::rewards::RewardBatch;
using grpo::rewards::RewardFunction;
using grpo::rewards::Sample;

// Options mapping -> config struct, validated like every config file; no options = an empty
// mapping, so required keys are still reported.
template <class Config>
Config options_as(const grpo::config::Value& options) {
  return grpo::config::from_value<Config>(options.is_null() ? grpo::config::Value::make_map(options.loc) : options);
}

struct ReasoningStepsConfig {
  int target_steps = 3;  // markers for a full score: 3 markers -> 1.0, 1 marker -> 1/3
  template <class V>
  void visit(V& v) {
    v("target_steps", target_steps, "step markers that earn the full score, e.g. 3", Check().ge(1));
  }
};

bool starts_with_at(std::string_view text, std::size_t pos, std::string_view prefix) {
  return text.substr(pos, prefix.size()) == prefix;
}

// Step markers in `text`: "Step <digits>:" and the transition words anywhere; "<digits>." and
// bullets "- " / "* " at the start of a line (after indentation).
int count_step_markers(std::string_view text) {
  int count = 0;
  for (std::size_t i = 0; i < text.size(); ++i) {
    if (starts_with_at(text, i, "Step ")) {
      std::size_t j = i + 5;
      while (j < text.size() && std::isdigit(static_cast<unsigned char>(text[j]))) ++j;
      if (j > i + 5 && j < text.size() && text[j] == ':') ++count;
    }
    for (std::string_view word : {"First,", "Second,", "Next,", "Finally,"}) {
      if (starts_with_at(text, i, word)) ++count;
    }
    const bool line_start = i == 0 || text[i - 1] == '\n';
    if (!line_start) continue;
    std::size_t j = i;
    while (j < text.size() && (text[j] == ' ' || text[j] == '\t')) ++j;
    if (starts_with_at(text, j, "- ") || starts_with_at(text, j, "* ")) {
      ++count;
      continue;
    }
    const std::size_t digits = j;
    while (j < text.size() && std::isdigit(static_cast<unsigned char>(text[j]))) ++j;
    if (j > digits && j < text.size() && text[j] == '.') ++count;
  }
  return count;
}

class ReasoningStepsReward : public RewardFunction {
 public:
  explicit ReasoningStepsReward(ReasoningStepsConfig cfg) : cfg_(cfg) {}
  std::string name() const override { return "reasoning_steps"; }
  RewardBatch score(const std::vector<Sample>& batch) const override {
    RewardBatch out;
    double total = 0;
    for (const auto& s : batch) {
      const int count = count_step_markers(s.completion);
      total += count;
      out.scores.push_back(std::min(1.0, static_cast<double>(count) / cfg_.target_steps));
      out.reasons.push_back(std::to_string(count) + " step markers (" + std::to_string(cfg_.target_steps) +
                            " for full score)");
    }
    if (!batch.empty()) out.metrics["mean_steps"] = total / static_cast<double>(batch.size());
    return out;
  }

 private:
  ReasoningStepsConfig cfg_;
};

struct KeywordConfig {
  std::string keyword;         // text the completion must contain, e.g. "QED"
  bool case_sensitive = true;  // false: compare in ASCII lower case
  template <class V>
  void visit(V& v) {
    v("keyword", keyword, "text the completion must contain, e.g. QED", Check().required().nonempty());
    v("case_sensitive", case_sensitive, "false: ignore ASCII case");
  }
};

std::string ascii_lower(std::string text) {
  for (auto& c : text) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return text;
}

class KeywordReward : public RewardFunction {
 public:
  explicit KeywordReward(KeywordConfig cfg) : cfg_(std::move(cfg)) {
    if (!cfg_.case_sensitive) cfg_.keyword = ascii_lower(cfg_.keyword);
  }
  std::string name() const override { return "keyword"; }
  RewardBatch score(const std::vector<Sample>& batch) const override {
    RewardBatch out;
    for (const auto& s : batch) {
      const std::string text = cfg_.case_sensitive ? s.completion : ascii_lower(s.completion);
      const bool found = text.find(cfg_.keyword) != std::string::npos;
      out.scores.push_back(found ? 1.0 : 0.0);
      out.reasons.push_back((found ? "contains '" : "does not contain '") + cfg_.keyword + "'");
    }
    return out;
  }

 private:
  KeywordConfig cfg_;
};

}  // namespace

GRPO_REWARD_PLUGIN("example", registry) {
  registry.add("reasoning_steps", [](const grpo::config::Value& options) {
    return std::make_unique<ReasoningStepsReward>(options_as<ReasoningStepsConfig>(options));
  });
  registry.add("keyword", [](const grpo::config::Value& options) {
    // `keyword` is required: bound even when no options were given, so that the error names it.
    return std::make_unique<KeywordReward>(grpo::config::from_value<KeywordConfig>(options));
  });
}
