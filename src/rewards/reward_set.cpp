#include "grpo/rewards/reward_set.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <mutex>
#include <set>

#include "grpo/core/log.h"
#include "grpo/core/progress.h"

namespace grpo::rewards {

namespace fs = std::filesystem;

std::string RewardsConfig::validate() const {
  std::set<std::string> seen;
  for (const auto& f : functions) {
    if (!seen.insert(f.label_or_name()).second) {
      return "label '" + f.label_or_name() +
             "' appears twice in functions; give one of them another `label` to use a function twice";
    }
  }
  return "";
}

std::string resolve_plugin_path(const std::string& path, const std::string& config_path) {
  const fs::path p(path);
  if (p.is_absolute() || config_path.empty()) return path;
  const fs::path beside = fs::path(config_path).parent_path() / p;
  std::error_code ec;
  if (fs::exists(beside, ec)) return beside.lexically_normal().string();
  return path;
}

RewardSet::RewardSet(const RewardsConfig& cfg, const std::string& config_path, RewardRegistry& registry) : cfg_(cfg) {
  if (const std::string problem = cfg_.validate(); !problem.empty()) {
    throw config::ConfigError((config_path.empty() ? "" : config_path + ": ") + "rewards: " + problem);
  }
  for (const auto& path : cfg_.plugins) {
    plugins_.push_back(load_reward_plugin(resolve_plugin_path(path, config_path), registry));
  }
  for (size_t i = 0; i < cfg_.functions.size(); ++i) {
    const RewardSpec& spec = cfg_.functions[i];
    try {
      functions_.push_back(registry.create(spec.name, spec.options));
    } catch (const std::invalid_argument& e) {
      // Unknown name: say which entry of which file.
      throw config::ConfigError((config_path.empty() ? "" : config_path + ": ") + "rewards.functions[" +
                                std::to_string(i) + "].name: " + e.what());
    }
    labels_.push_back(spec.label_or_name());
  }
  pool_ = std::make_unique<ThreadPool>(cfg_.threads);
}

RewardSet::~RewardSet() = default;

namespace {

// Each function's mean (over present scores) and applied fraction, the total's mean and std, from the rows.
void row_metrics(RewardScores& r) {
  const size_t N = r.total.size();
  for (size_t f = 0; f < r.labels.size(); ++f) {
    double sum = 0;
    int64_t present = 0;
    for (const auto& s : r.scores[f]) {
      if (!s) continue;
      sum += *s;
      ++present;
    }
    const std::string prefix = "rewards/" + r.labels[f] + "/";
    if (present > 0) {
      r.metrics[prefix + "mean"] = sum / static_cast<double>(present);
    } else {
      r.metrics.erase(prefix + "mean");
    }
    if (N > 0) r.metrics[prefix + "applied"] = static_cast<double>(present) / static_cast<double>(N);
  }
  if (N > 0) {
    double mean = 0, var = 0;
    for (double t : r.total) mean += t;
    mean /= static_cast<double>(N);
    for (double t : r.total) var += (t - mean) * (t - mean);
    r.metrics["rewards/total/mean"] = mean;
    r.metrics["rewards/total/std"] = std::sqrt(var / static_cast<double>(N));
  }
}

bool ends_with(const std::string& s, const std::string& tail) {
  return s.size() >= tail.size() && s.compare(s.size() - tail.size(), tail.size(), tail) == 0;
}

}  // namespace

namespace {

struct Chunk {
  size_t function = 0;
  size_t begin = 0, end = 0;
};

}  // namespace

RewardScores RewardSet::score(const std::vector<Sample>& input) const {
  const auto wall0 = std::chrono::steady_clock::now();
  const size_t F = functions_.size(), N = input.size();
  std::vector<Sample> samples = input;
  for (size_t i = 0; i < N; ++i) samples[i].index = static_cast<int64_t>(i);

  RewardScores out;
  out.labels = labels_;
  out.scores.assign(F, std::vector<std::optional<double>>(N));
  out.reasons.assign(F, std::vector<std::string>(N));
  for (const auto& spec : cfg_.functions) out.weights.push_back(spec.weight);

  std::vector<Chunk> chunks;
  for (size_t f = 0; f < F; ++f) {
    const size_t step = cfg_.functions[f].batch_size > 0 ? static_cast<size_t>(cfg_.functions[f].batch_size)
                                                         : std::max<size_t>(N, 1);
    for (size_t b = 0; b < N; b += step) chunks.push_back({f, b, std::min(N, b + step)});
  }

  // Per function: thread seconds, metric sums weighted by chunk size, error count.
  struct Accum {
    std::mutex mutex;
    double seconds = 0;
    std::map<std::string, std::pair<double, double>> metrics;  // name -> (sum of value * n, sum of n)
    int64_t errors = 0;
  };
  std::vector<Accum> acc(F);
  std::mutex errors_mutex;
  std::vector<std::pair<size_t, std::string>> failures;  // (sample, message), for on_error fail

  // Calls function f on samples [begin, end); validates what comes back. Throws RewardError naming
  // the function and the sample.
  auto call = [&](size_t f, size_t begin, size_t end) -> RewardBatch {
    const std::vector<Sample> part(samples.begin() + static_cast<std::ptrdiff_t>(begin),
                                   samples.begin() + static_cast<std::ptrdiff_t>(end));
    const std::string where = end - begin == 1 ? "sample " + std::to_string(begin)
                                               : "samples " + std::to_string(begin) + ".." + std::to_string(end - 1);
    RewardBatch batch;
    try {
      batch = functions_[f]->score(part);
    } catch (const std::exception& e) {
      throw RewardError("reward '" + labels_[f] + "' threw on " + where + ": " + e.what());
    } catch (...) {
      throw RewardError("reward '" + labels_[f] + "' threw on " + where + ": an exception that is not std::exception");
    }
    if (batch.scores.size() != part.size()) {
      throw RewardError("reward '" + labels_[f] + "' returned " + std::to_string(batch.scores.size()) + " scores for " +
                        std::to_string(part.size()) + " samples (" + where + ")");
    }
    if (!batch.reasons.empty() && batch.reasons.size() != part.size()) {
      throw RewardError("reward '" + labels_[f] + "' returned " + std::to_string(batch.reasons.size()) +
                        " reasons for " + std::to_string(part.size()) + " samples (" + where + ")");
    }
    for (size_t k = 0; k < part.size(); ++k) {
      if (batch.scores[k] && !std::isfinite(*batch.scores[k])) {
        throw RewardError("reward '" + labels_[f] + "' returned a non-finite score (" +
                          std::to_string(*batch.scores[k]) + ") for sample " + std::to_string(begin + k));
      }
    }
    return batch;
  };

  auto store = [&](size_t f, size_t begin, const RewardBatch& batch) {
    for (size_t k = 0; k < batch.scores.size(); ++k) {
      out.scores[f][begin + k] = batch.scores[k];
      if (!batch.reasons.empty()) out.reasons[f][begin + k] = batch.reasons[k];
    }
    std::lock_guard<std::mutex> lock(acc[f].mutex);
    for (const auto& [name, value] : batch.metrics) {
      auto& [sum, weight] = acc[f].metrics[name];
      sum += value * static_cast<double>(batch.scores.size());
      weight += static_cast<double>(batch.scores.size());
    }
  };

  auto fail_sample = [&](size_t f, size_t i, const std::string& message) {
    {
      std::lock_guard<std::mutex> lock(acc[f].mutex);
      ++acc[f].errors;
    }
    out.scores[f][i] = std::nullopt;
    out.reasons[f][i] = "error: " + message;
    std::lock_guard<std::mutex> lock(errors_mutex);
    failures.emplace_back(i, message);
  };

  pool_->parallel_for(static_cast<int64_t>(chunks.size()), [&](int64_t c) {
    const Chunk& ch = chunks[static_cast<size_t>(c)];
    const auto t0 = std::chrono::steady_clock::now();
    try {
      store(ch.function, ch.begin, call(ch.function, ch.begin, ch.end));
    } catch (const RewardError& e) {
      if (ch.end - ch.begin == 1) {
        fail_sample(ch.function, ch.begin, e.what());
      } else {
        // Find the samples at fault: score this chunk's samples one by one.
        for (size_t i = ch.begin; i < ch.end; ++i) {
          try {
            store(ch.function, i, call(ch.function, i, i + 1));
          } catch (const RewardError& e1) {
            fail_sample(ch.function, i, e1.what());
          }
        }
      }
    }
    const double dt = seconds_since(t0);
    std::lock_guard<std::mutex> lock(acc[ch.function].mutex);
    acc[ch.function].seconds += dt;
  });

  if (!failures.empty()) {
    std::sort(failures.begin(), failures.end());
    if (cfg_.on_error == OnError::fail) {
      std::string message = failures.front().second;
      if (failures.size() > 1) message += " (and " + std::to_string(failures.size() - 1) + " more errors)";
      throw RewardError(message + "; set rewards.on_error: absent to score such samples absent instead");
    }
    for (const auto& [i, message] : failures) {
      log::warn("{} (scored absent)", message);
      out.errors.push_back(message);
    }
  }

  out.total.assign(N, 0.0);
  for (size_t f = 0; f < F; ++f) {
    for (size_t i = 0; i < N; ++i) {
      if (out.scores[f][i]) out.total[i] += out.weights[f] * *out.scores[f][i];
    }
    const std::string prefix = "rewards/" + labels_[f] + "/";
    out.metrics[prefix + "seconds"] = acc[f].seconds;
    out.metrics[prefix + "errors"] = static_cast<double>(acc[f].errors);
    for (const auto& [name, sw] : acc[f].metrics) {
      if (sw.second > 0) out.metrics[prefix + name] = sw.first / sw.second;
    }
    for (size_t i = 0; i < N; ++i) {
      if (!out.reasons[f][i].empty()) log::debug("reward {}: sample {}: {}", labels_[f], i, out.reasons[f][i]);
    }
  }
  row_metrics(out);
  out.metrics["rewards/seconds"] = seconds_since(wall0);
  return out;
}

void append_scores(RewardScores& into, RewardScores&& more) {
  if (into.labels.empty() && into.total.empty()) {
    into = std::move(more);
    return;
  }
  if (into.labels != more.labels) {
    throw std::invalid_argument("append_scores: the scores come from different reward sets");
  }
  const double n_into = static_cast<double>(into.total.size()), n_more = static_cast<double>(more.total.size());
  for (const auto& [key, value] : more.metrics) {
    auto it = into.metrics.find(key);
    if (ends_with(key, "/seconds") || ends_with(key, "/errors")) {
      into.metrics[key] = (it == into.metrics.end() ? 0.0 : it->second) + value;
    } else if (it == into.metrics.end()) {
      into.metrics[key] = value;  // a function metric only the second call reported
    } else if (n_into + n_more > 0) {
      it->second = (it->second * n_into + value * n_more) / (n_into + n_more);
    }
  }
  for (size_t f = 0; f < into.labels.size(); ++f) {
    auto& s = into.scores[f];
    s.insert(s.end(), more.scores[f].begin(), more.scores[f].end());
    auto& r = into.reasons[f];
    r.insert(r.end(), std::make_move_iterator(more.reasons[f].begin()), std::make_move_iterator(more.reasons[f].end()));
  }
  into.total.insert(into.total.end(), more.total.begin(), more.total.end());
  into.errors.insert(into.errors.end(), std::make_move_iterator(more.errors.begin()),
                     std::make_move_iterator(more.errors.end()));
  row_metrics(into);
}

}  // namespace grpo::rewards
