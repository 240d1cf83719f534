#include "grpo/train/rejection_sampling.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <limits>
#include <memory>
#include <set>
#include <stdexcept>

#include <nlohmann/json.hpp>

#include "grpo/core/files.h"
#include "grpo/core/log.h"
#include "grpo/core/progress.h"
#include "grpo/core/random.h"
#include "grpo/dist/world.h"
#include "grpo/train/scored_rollouts.h"

namespace grpo::train {

using nlohmann::json;
using nlohmann::ordered_json;

namespace {

constexpr double kCorrect = 1.0 - 1e-9;  // an accuracy score at least this counts as correct
constexpr int kStateVersion = 1;

bool starts_with_at(const std::string& s, size_t pos, const std::string& prefix) {
  return s.size() >= pos + prefix.size() && s.compare(pos, prefix.size(), prefix) == 0;
}

bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

bool is_blank(const std::string& s) {
  return std::all_of(s.begin(), s.end(), [](unsigned char c) { return std::isspace(c) != 0; });
}

bool is_trimmed(const std::string& s) {
  return !s.empty() && std::isspace(static_cast<unsigned char>(s.front())) == 0 &&
         std::isspace(static_cast<unsigned char>(s.back())) == 0;
}

bool balanced_braces(const std::string& s) {
  int depth = 0;
  for (char c : s) {
    if (c == '{') ++depth;
    if (c == '}' && --depth < 0) return false;
  }
  return depth == 0;
}

// Strict UTF-8: no overlong forms, no surrogates, nothing above U+10FFFF.
bool valid_utf8(const std::string& s) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const size_t n = s.size();
  size_t i = 0;
  while (i < n) {
    const unsigned char c = p[i];
    size_t len;
    uint32_t cp;
    if (c < 0x80) {
      ++i;
      continue;
    } else if ((c & 0xE0) == 0xC0) {
      len = 2;
      cp = c & 0x1F;
    } else if ((c & 0xF0) == 0xE0) {
      len = 3;
      cp = c & 0x0F;
    } else if ((c & 0xF8) == 0xF0) {
      len = 4;
      cp = c & 0x07;
    } else {
      return false;
    }
    if (i + len > n) return false;
    for (size_t j = 1; j < len; ++j) {
      if ((p[i + j] & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (p[i + j] & 0x3F);
    }
    if ((len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000)) return false;
    if (cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
    i += len;
  }
  return true;
}

// parse_trace on one candidate text that must equal format_completion exactly.
std::optional<ParsedTrace> parse_exact(const std::string& c, const data::PromptConfig& p) {
  const std::string& sep = p.separator;
  size_t pos = 0;
  if (!p.think_in_prompt) {
    if (!starts_with_at(c, 0, sep + p.think_open)) return std::nullopt;
    pos = sep.size() + p.think_open.size();
  }
  const std::string close = sep + p.think_close;
  const size_t k = c.find(close, pos);
  if (k == std::string::npos || k == pos) return std::nullopt;  // no close tag, or no reasoning
  if (!starts_with_at(c, pos, sep)) return std::nullopt;
  ParsedTrace t;
  t.reasoning = c.substr(pos + sep.size(), k - pos - sep.size());
  pos = k + close.size();
  if (!starts_with_at(c, pos, sep)) return std::nullopt;
  pos += sep.size();
  const std::string rest = c.substr(pos);
  std::string open, end;
  if (p.answer_style == data::AnswerStyle::boxed) {
    open = "\\boxed{";
    end = "}";
  } else {
    open = p.answer_open + sep;
    end = sep + p.answer_close;
  }
  if (rest.size() < open.size() + end.size() || !starts_with_at(rest, 0, open) ||
      rest.compare(rest.size() - end.size(), end.size(), end) != 0) {
    return std::nullopt;
  }
  t.answer = rest.substr(open.size(), rest.size() - open.size() - end.size());

  if (is_blank(t.reasoning) || !is_trimmed(t.answer)) return std::nullopt;
  for (const std::string* tag : {&p.think_open, &p.think_close, &p.answer_open, &p.answer_close}) {
    if (contains(t.reasoning, *tag) || contains(t.answer, *tag)) return std::nullopt;
  }
  if (p.answer_style == data::AnswerStyle::boxed && !balanced_braces(t.answer)) return std::nullopt;

  // The definition of well-formed: format_completion gives the text back.
  data::Record r;
  r.reasoning = t.reasoning;
  r.answer = t.answer;
  if (data::format_completion(p, r) != c) return std::nullopt;
  return t;
}

// 64-bit FNV-1a, as 16 hex digits.
class Hasher {
 public:
  void add(std::string_view s) {
    for (unsigned char c : s) {
      h_ ^= c;
      h_ *= 0x100000001B3ULL;
    }
    h_ ^= 0xFF;  // field end: ("ab", "c") and ("a", "bc") differ
    h_ *= 0x100000001B3ULL;
  }
  std::string hex() const {
    char buf[17];
    std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(h_));
    return buf;
  }

 private:
  uint64_t h_ = 0xCBF29CE484222325ULL;
};

using Fingerprint = std::vector<std::pair<std::string, std::string>>;

std::string text_of(double x) { return config::double_to_text(x); }

Fingerprint make_fingerprint(const data::PromptConfig& prompt, const std::vector<data::Record>& prompts,
                             const rewards::RewardSet& rewards, const RejectionSamplingConfig& cfg,
                             const TraceProvenance& provenance) {
  Fingerprint fp;
  fp.emplace_back("teacher", provenance.teacher);
  Fingerprint gen = config::leaf_values(config::Writer::to_value(cfg.generation), "generation");
  for (auto& kv : gen) {
    // num_generations comes from samples_per_prompt; every request carries its own seed.
    if (kv.first == "generation.num_generations" || kv.first == "generation.seed") continue;
    fp.push_back(std::move(kv));
  }
  fp.emplace_back("samples_per_prompt", std::to_string(cfg.samples_per_prompt));
  fp.emplace_back("keep", std::string(config::enum_name(cfg.keep)));
  fp.emplace_back("max_per_prompt", std::to_string(cfg.max_per_prompt));
  fp.emplace_back("accuracy_reward", cfg.accuracy_reward);
  fp.emplace_back("min_reward", cfg.min_reward ? text_of(*cfg.min_reward) : "null");
  fp.emplace_back("require_format", cfg.require_format ? "true" : "false");
  fp.emplace_back("dedupe", cfg.dedupe ? "true" : "false");
  fp.emplace_back("seed", std::to_string(cfg.seed));
  fp.emplace_back("prompts_per_batch", std::to_string(cfg.prompts_per_batch));
  std::string reward_text;
  const auto& labels = rewards.labels();
  for (size_t i = 0; i < labels.size(); ++i) reward_text += (i ? ", " : "") + labels[i];
  fp.emplace_back("rewards", reward_text);
  fp.emplace_back("prompts", std::to_string(prompts.size()));
  Hasher h;
  // The completion format too: it decides what parses (and so what is kept).
  data::Record probe;
  probe.reasoning = "R";
  probe.answer = "A";
  h.add(data::format_completion(prompt, probe));
  for (const auto& r : prompts) {
    h.add(data::format_prompt(prompt, r));
    h.add(r.answer);
    for (const auto& [k, v] : r.extra) {
      h.add(k);
      h.add(v);
    }
  }
  fp.emplace_back("prompts_hash", h.hex());
  return fp;
}

// Counters of the run so far, as the state file stores them.
struct State {
  int64_t prompts_done = 0;
  int64_t bytes = 0;
  bool done = false;
  RejectionSamplingResult counts;  // prompts .. duplicates
};

std::string state_json(const State& st, const Fingerprint& fp) {
  ordered_json j;
  j["version"] = kStateVersion;
  j["prompts_done"] = st.prompts_done;
  j["bytes"] = st.bytes;
  j["done"] = st.done;
  j["completions"] = st.counts.completions;
  j["accepted"] = st.counts.accepted;
  j["kept"] = st.counts.kept;
  j["prompts_with_trace"] = st.counts.prompts_with_trace;
  j["malformed"] = st.counts.malformed;
  j["incorrect"] = st.counts.incorrect;
  j["below_min_reward"] = st.counts.below_min_reward;
  j["duplicates"] = st.counts.duplicates;
  ordered_json f = ordered_json::object();
  for (const auto& [k, v] : fp) f[k] = v;
  j["fingerprint"] = f;
  return j.dump(1, ' ', false, json::error_handler_t::replace) + "\n";
}

State read_state(const std::string& path, Fingerprint& fp) {
  State st;
  try {
    const json j = json::parse(read_file(path));
    if (j.at("version").get<int>() != kStateVersion) {
      throw std::runtime_error("version " + j.at("version").dump() + ", expected " + std::to_string(kStateVersion));
    }
    st.prompts_done = j.at("prompts_done").get<int64_t>();
    st.bytes = j.at("bytes").get<int64_t>();
    st.done = j.at("done").get<bool>();
    st.counts.completions = j.at("completions").get<int64_t>();
    st.counts.accepted = j.at("accepted").get<int64_t>();
    st.counts.kept = j.at("kept").get<int64_t>();
    st.counts.prompts_with_trace = j.at("prompts_with_trace").get<int64_t>();
    st.counts.malformed = j.at("malformed").get<int64_t>();
    st.counts.incorrect = j.at("incorrect").get<int64_t>();
    st.counts.below_min_reward = j.at("below_min_reward").get<int64_t>();
    st.counts.duplicates = j.at("duplicates").get<int64_t>();
    for (const auto& [k, v] : j.at("fingerprint").items()) fp.emplace_back(k, v.get<std::string>());
    if (st.prompts_done < 0 || st.bytes < 0) throw std::runtime_error("negative prompts_done or bytes");
  } catch (const json::exception& e) {
    throw std::runtime_error("generate_traces: cannot read the state file '" + path + "': " + e.what());
  } catch (const std::runtime_error& e) {
    const std::string what = e.what();
    if (what.rfind("generate_traces:", 0) == 0) throw;
    throw std::runtime_error("generate_traces: cannot read the state file '" + path + "': " + what);
  }
  return st;
}

// Every differing key, "key (was 'a', now 'b')", joined by "; ".
std::string fingerprint_diff(const Fingerprint& was, const Fingerprint& now) {
  std::string out;
  auto find = [](const Fingerprint& fp, const std::string& key) -> const std::string* {
    for (const auto& [k, v] : fp) {
      if (k == key) return &v;
    }
    return nullptr;
  };
  auto add = [&](const std::string& key, const std::string* a, const std::string* b) {
    out += (out.empty() ? "" : "; ") + key + " (was " + (a ? "'" + *a + "'" : "absent") + ", now " +
           (b ? "'" + *b + "'" : "absent") + ")";
  };
  for (const auto& [k, v] : now) {
    const std::string* old = find(was, k);
    if (old == nullptr || *old != v) add(k, old, &v);
  }
  for (const auto& [k, v] : was) {
    if (find(now, k) == nullptr) add(k, &v, nullptr);
  }
  return out;
}

// The output file, opened for appending; closed on destruction.
class OutputFile {
 public:
  OutputFile(const std::string& path, bool truncate) : path_(path) {
    std::filesystem::path p(path);
    if (p.has_parent_path()) std::filesystem::create_directories(p.parent_path());
    fd_ = ::open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC | (truncate ? O_TRUNC : 0), 0644);
    if (fd_ < 0) fail("cannot open");
  }
  ~OutputFile() {
    if (fd_ >= 0) ::close(fd_);
  }
  OutputFile(const OutputFile&) = delete;
  OutputFile& operator=(const OutputFile&) = delete;

  int64_t size() const {
    struct stat s = {};
    if (::fstat(fd_, &s) != 0) fail("cannot stat");
    return static_cast<int64_t>(s.st_size);
  }
  void truncate(int64_t bytes) {
    if (::ftruncate(fd_, static_cast<off_t>(bytes)) != 0) fail("cannot truncate");
    sync();
  }
  void append(const std::string& data) {
    size_t done = 0;
    while (done < data.size()) {
      const ssize_t n = ::write(fd_, data.data() + done, data.size() - done);
      if (n < 0) {
        if (errno == EINTR) continue;
        fail("cannot write");
      }
      done += static_cast<size_t>(n);
    }
    sync();
  }
  void sync() {
    if (::fsync(fd_) != 0) fail("cannot fsync");
  }

 private:
  [[noreturn]] void fail(const char* what) const {
    throw std::runtime_error(std::string("generate_traces: ") + what + " the output '" + path_ +
                             "': " + std::strerror(errno));
  }
  std::string path_;
  int fd_ = -1;
};

RejectionSamplingResult result_of(const State& st, int64_t resumed, double seconds) {
  RejectionSamplingResult r = st.counts;
  r.prompts = st.prompts_done;
  r.resumed_prompts = resumed;
  r.seconds = seconds;
  r.pass_rate = r.completions > 0 ? static_cast<double>(r.accepted) / static_cast<double>(r.completions) : 0.0;
  return r;
}

void log_summary(const std::string& output, const RejectionSamplingResult& r) {
  log::info(
      "rejection sampling: {} prompts, {} completions, pass rate {:.1f}% ({} accepted); kept {} traces "
      "for {} prompts; malformed {}, incorrect {}, below min_reward {}, duplicates {}; resumed {} prompts; "
      "{:.1f}s -> {}",
      r.prompts, r.completions, 100.0 * r.pass_rate, r.accepted, r.kept, r.prompts_with_trace, r.malformed, r.incorrect,
      r.below_min_reward, r.duplicates, r.resumed_prompts, r.seconds, output);
}

}  // namespace

std::string RejectionSamplingConfig::validate() const {
  if (generation.num_generations != 1 && generation.num_generations != samples_per_prompt) {
    return "generation.num_generations (" + std::to_string(generation.num_generations) +
           ") differs from samples_per_prompt (" + std::to_string(samples_per_prompt) +
           "): set only samples_per_prompt";
  }
  return generation.validate();
}

std::string_view trace_verdict_name(TraceVerdict v) {
  switch (v) {
    case TraceVerdict::kept: return "kept";
    case TraceVerdict::duplicate: return "duplicate";
    case TraceVerdict::not_selected: return "not_selected";
    case TraceVerdict::malformed: return "malformed";
    case TraceVerdict::incorrect: return "incorrect";
    case TraceVerdict::below_min_reward: return "below_min_reward";
  }
  return "?";
}

std::optional<ParsedTrace> parse_trace(const std::string& completion, const data::PromptConfig& prompt) {
  // As written first; then with the leading separator the teacher may have left out.
  if (auto t = parse_exact(completion, prompt)) return t;
  if (!prompt.separator.empty()) return parse_exact(prompt.separator + completion, prompt);
  return std::nullopt;
}

uint64_t prompt_seed(uint64_t seed, int64_t index) { return derive_seed(seed, static_cast<uint64_t>(index)); }

TraceSelection select_traces(const std::vector<std::string>& completions, const rewards::RewardScores& scores,
                             const data::PromptConfig& prompt, const RejectionSamplingConfig& cfg, int64_t offset) {
  const size_t acc = reward_index(scores.labels, cfg.accuracy_reward, "select_traces: accuracy_reward");
  const auto k = static_cast<int64_t>(completions.size());
  if (offset < 0 || offset + k > static_cast<int64_t>(scores.total.size()) ||
      offset + k > static_cast<int64_t>(scores.scores.at(acc).size())) {
    throw std::invalid_argument("select_traces: rows [" + std::to_string(offset) + ", " + std::to_string(offset + k) +
                                ") are outside the " + std::to_string(scores.total.size()) + " scored samples");
  }

  TraceSelection sel;
  sel.verdicts.assign(static_cast<size_t>(k), TraceVerdict::not_selected);
  std::vector<int64_t> accepted;
  for (int64_t i = 0; i < k; ++i) {
    const std::string& text = completions[static_cast<size_t>(i)];
    const size_t row = static_cast<size_t>(offset + i);
    auto& verdict = sel.verdicts[static_cast<size_t>(i)];
    const auto& a = scores.scores[acc][row];
    if (!valid_utf8(text) || (cfg.require_format && !parse_trace(text, prompt))) {
      verdict = TraceVerdict::malformed;
      ++sel.malformed;
    } else if (!a || *a < kCorrect) {
      verdict = TraceVerdict::incorrect;
      ++sel.incorrect;
    } else if (cfg.min_reward && scores.total[row] < *cfg.min_reward) {
      verdict = TraceVerdict::below_min_reward;
      ++sel.below_min_reward;
    } else {
      accepted.push_back(i);
      ++sel.accepted;
    }
  }

  size_t limit = std::numeric_limits<size_t>::max();
  if (cfg.keep != KeepRule::all_correct) {
    // Highest total first; equal totals keep the sample order.
    std::stable_sort(accepted.begin(), accepted.end(), [&](int64_t x, int64_t y) {
      return scores.total[static_cast<size_t>(offset + x)] > scores.total[static_cast<size_t>(offset + y)];
    });
    limit = cfg.keep == KeepRule::best ? 1 : static_cast<size_t>(std::max<int64_t>(cfg.max_per_prompt, 1));
  }
  const bool distinct = cfg.dedupe || cfg.keep == KeepRule::at_most_n;
  std::set<std::string> kept_texts;
  for (int64_t i : accepted) {
    const std::string& text = completions[static_cast<size_t>(i)];
    auto& verdict = sel.verdicts[static_cast<size_t>(i)];
    if (distinct && kept_texts.count(text) != 0) {
      verdict = TraceVerdict::duplicate;
      ++sel.duplicates;
    } else if (sel.kept.size() >= limit) {
      verdict = TraceVerdict::not_selected;
    } else {
      verdict = TraceVerdict::kept;
      sel.kept.push_back(i);
      kept_texts.insert(text);
    }
  }
  return sel;
}

RejectionSamplingResult generate_traces_with(const TraceGenerator& generate, const data::Tokenizer& tokenizer,
                                             const data::PromptConfig& prompt, const std::vector<data::Record>& prompts,
                                             const rewards::RewardSet& rewards, const RejectionSamplingConfig& cfg_in,
                                             const TraceProvenance& provenance, bool resume) {
  const auto t0 = std::chrono::steady_clock::now();
  const auto elapsed = [&] { return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(); };
  RejectionSamplingConfig cfg = cfg_in;
  if (const std::string problem = cfg.validate(); !problem.empty()) {
    throw std::invalid_argument("generate_traces: " + problem);
  }
  if (cfg.samples_per_prompt < 1 || cfg.prompts_per_batch < 1 || cfg.max_prompts < 0 || cfg.max_per_prompt < 1) {
    throw std::invalid_argument(
        "generate_traces: samples_per_prompt, prompts_per_batch and max_per_prompt must be "
        ">= 1 and max_prompts >= 0, found " +
        std::to_string(cfg.samples_per_prompt) + ", " + std::to_string(cfg.prompts_per_batch) + ", " +
        std::to_string(cfg.max_per_prompt) + ", " + std::to_string(cfg.max_prompts));
  }
  if (cfg.output.empty()) throw std::invalid_argument("generate_traces: output (the JSONL path) is empty");
  reward_index(rewards.labels(), cfg.accuracy_reward, "generate_traces: accuracy_reward");
  cfg.generation.num_generations = cfg.samples_per_prompt;
  const int64_t k = cfg.samples_per_prompt;
  const auto n = static_cast<int64_t>(prompts.size());
  const int64_t target = cfg.max_prompts > 0 ? std::min(n, cfg.max_prompts) : n;
  const Fingerprint fp = make_fingerprint(prompt, prompts, rewards, cfg, provenance);
  const std::string state_path = cfg.output + ".state.json";

  // Data parallel: rank 0 alone reads, checks and writes the output and its state; each rank
  // samples its share of every batch, and rank 0 appends every rank's lines in prompt order.
  auto& world = dist::world();
  State st;
  std::unique_ptr<OutputFile> out;
  std::string setup_error;
  if (world.is_main()) {
    try {
      if (resume && std::filesystem::exists(state_path)) {
        Fingerprint was;
        st = read_state(state_path, was);
        if (const std::string diff = fingerprint_diff(was, fp); !diff.empty()) {
          throw std::runtime_error("generate_traces: cannot resume '" + cfg.output +
                                   "': settings differ from the run that wrote it: " + diff +
                                   " (resume with the same settings, or start over without resume)");
        }
        if (!std::filesystem::exists(cfg.output)) {
          throw std::runtime_error("generate_traces: cannot resume: the state '" + state_path + "' records " +
                                   std::to_string(st.bytes) + " bytes but the output '" + cfg.output + "' is missing");
        }
        out = std::make_unique<OutputFile>(cfg.output, false);
        const int64_t size = out->size();
        if (size < st.bytes) {
          throw std::runtime_error("generate_traces: cannot resume: the output '" + cfg.output + "' has " +
                                   std::to_string(size) + " bytes, fewer than the " + std::to_string(st.bytes) +
                                   " its state '" + state_path + "' records");
        }
        if (size > st.bytes) {
          log::warn("generate_traces: dropping {} bytes after the last complete batch of '{}'", size - st.bytes,
                    cfg.output);
          out->truncate(st.bytes);
        }
        log::info("generate_traces: resuming '{}' at prompt {} of {} ({} traces kept so far)", cfg.output,
                  st.prompts_done, n, st.counts.kept);
      } else {
        if (resume && std::filesystem::exists(cfg.output) && std::filesystem::file_size(cfg.output) > 0) {
          throw std::runtime_error("generate_traces: cannot resume '" + cfg.output +
                                   "': it exists but has no state file '" + state_path +
                                   "' (not written by a resumable run); start without resume to replace it");
        }
        st.done = n == 0;
        // The state first: should we stop between the two, it says 0 bytes, which a resume accepts.
        write_file_atomic(state_path, state_json(st, fp));
        out = std::make_unique<OutputFile>(cfg.output, true);
        out->sync();
      }
    } catch (const std::exception& e) {
      if (!world.distributed()) throw;
      setup_error = e.what();
    }
  }
  if (world.distributed()) {
    const auto said = world.all_gather_bytes(world.is_main() ? setup_error : std::string());
    if (!said[0].empty()) {
      if (world.is_main()) throw std::runtime_error(said[0]);
      throw std::runtime_error("rank 0: " + said[0]);
    }
    if (!world.is_main()) {
      Fingerprint was;
      st = read_state(state_path, was);  // as rank 0 left it
    }
  }
  const int64_t resumed = st.prompts_done;
  if (st.prompts_done >= target) {
    const auto r = result_of(st, resumed, elapsed());
    log_summary(cfg.output, r);
    return r;
  }

  Progress progress("rejection sampling", std::max<int64_t>(target - resumed, 1), 10.0);
  const int64_t B = cfg.prompts_per_batch;
  while (st.prompts_done < target) {
    // Batches sit at multiples of B, so a resumed run batches prompts as an uninterrupted one.
    const int64_t begin = st.prompts_done;
    const int64_t end = std::min(target, (begin / B + 1) * B);
    const auto [mine_begin, mine_end] = [&] {
      const auto [b, e] = dist::share(end - begin, world.rank(), world.size());
      return std::pair<int64_t, int64_t>(begin + b, begin + e);
    }();
    std::vector<RolloutRequest> requests;
    for (int64_t i = mine_begin; i < mine_end; ++i) requests.push_back({.record = i, .seed = prompt_seed(cfg.seed, i)});
    const auto rollouts = requests.empty() ? ScoredRollouts{}
                                           : sample_scored([&](const std::vector<rollout::GenerationRequest>& reqs,
                                                               rollout::GenerationStats*) { return generate(reqs); },
                                                           tokenizer, prompt, prompts, requests, &rewards);
    const auto P = static_cast<size_t>(mine_end - mine_begin);
    if (P > 0 && rollouts.group_size() != k) {
      throw std::runtime_error("generate_traces: the generator returned " +
                               std::to_string(P * static_cast<size_t>(rollouts.group_size())) + " completions for " +
                               std::to_string(P) + " prompts x " + std::to_string(k));
    }
    const auto& scores = rollouts.scores;

    std::string lines;
    const auto counts_before = st.counts;
    for (size_t p = 0; p < P; ++p) {
      const auto index = mine_begin + static_cast<int64_t>(p);
      const auto& rec = prompts[static_cast<size_t>(index)];
      std::vector<std::string> texts;
      for (const auto& c : rollouts.groups[p].completions) texts.push_back(c.text);
      const auto offset = static_cast<int64_t>(p) * k;
      const auto sel = select_traces(texts, scores, prompt, cfg, offset);
      st.counts.completions += k;
      st.counts.accepted += sel.accepted;
      st.counts.malformed += sel.malformed;
      st.counts.incorrect += sel.incorrect;
      st.counts.below_min_reward += sel.below_min_reward;
      st.counts.duplicates += sel.duplicates;
      st.counts.kept += static_cast<int64_t>(sel.kept.size());
      st.counts.prompts_with_trace += sel.kept.empty() ? 0 : 1;
      for (int64_t g : sel.kept) {
        const std::string& text = texts[static_cast<size_t>(g)];
        const size_t row = static_cast<size_t>(offset + g);
        auto parsed = parse_trace(text, prompt);
        ordered_json j;
        j["prompt"] = rec.prompt;
        if (parsed) {
          j["reasoning"] = parsed->reasoning;
          j["answer"] = parsed->answer;
        } else {  // kept without require_format
          const std::string& sep = prompt.separator;
          const bool lead = !sep.empty() && text.compare(0, sep.size(), sep) == 0;
          j["reasoning"] = lead ? text.substr(sep.size()) : text;
          j["answer"] = rec.answer;
        }
        j["reference_answer"] = rec.answer;
        j["completion"] = text;
        ordered_json rw = ordered_json::object();
        for (size_t f = 0; f < scores.labels.size(); ++f) {
          const auto& s = scores.scores[f][row];
          rw[scores.labels[f]] = s ? ordered_json(*s) : ordered_json(nullptr);
        }
        j["rewards"] = rw;
        j["reward"] = scores.total[row];
        if (!parsed) j["well_formed"] = false;
        j["prompt_index"] = index;
        j["sample_index"] = g;
        j["source"] = rec.where();
        j["teacher"] = provenance.teacher;
        j["temperature"] = cfg.generation.sampling.temperature;
        j["top_p"] = cfg.generation.sampling.top_p;
        j["top_k"] = cfg.generation.sampling.top_k;
        j["max_new_tokens"] = cfg.generation.max_new_tokens;
        j["seed"] = rollouts.groups[p].seed;
        lines += j.dump(-1, ' ', false, json::error_handler_t::replace);
        lines += '\n';
      }
    }
    if (world.distributed()) {  // every rank's counts and lines, in rank (= prompt) order
      // This batch's counts of every rank, added to those before it.
      constexpr int64_t RejectionSamplingResult::*kCounts[] = {&RejectionSamplingResult::completions,
                                                               &RejectionSamplingResult::accepted,
                                                               &RejectionSamplingResult::malformed,
                                                               &RejectionSamplingResult::incorrect,
                                                               &RejectionSamplingResult::below_min_reward,
                                                               &RejectionSamplingResult::duplicates,
                                                               &RejectionSamplingResult::kept,
                                                               &RejectionSamplingResult::prompts_with_trace};
      std::vector<double> batch;
      for (const auto field : kCounts) batch.push_back(static_cast<double>(st.counts.*field - counts_before.*field));
      batch = world.sum(std::move(batch));
      for (size_t f = 0; f < batch.size(); ++f) {
        st.counts.*kCounts[f] = counts_before.*kCounts[f] + static_cast<int64_t>(batch[f]);
      }
      std::string all;
      for (const auto& part : world.all_gather_bytes(lines)) all += part;
      lines = std::move(all);
    }
    // The lines on disk first, then the state that counts them: a crash in between leaves lines
    // past `bytes`, which a resume drops and writes again.
    st.bytes += static_cast<int64_t>(lines.size());
    st.prompts_done = end;
    st.done = end == n;
    std::string write_error;
    if (world.is_main()) {
      try {
        out->append(lines);
        write_file_atomic(state_path, state_json(st, fp));
      } catch (const std::exception& e) {
        if (!world.distributed()) throw;
        write_error = e.what();
      }
    }
    // Data parallel: no rank goes on (to read the traces, say) before rank 0 has them on disk.
    if (world.distributed()) {
      const auto said = world.all_gather_bytes(write_error);
      if (!said[0].empty()) throw std::runtime_error(world.is_main() ? said[0] : "rank 0: " + said[0]);
    }
    const double pass = st.counts.completions > 0 ? 100.0 * static_cast<double>(st.counts.accepted) /
                                                        static_cast<double>(st.counts.completions)
                                                  : 0.0;
    progress.update(end - resumed,
                    grpo::format("pass {:.1f}% | kept {} | malformed {}", pass, st.counts.kept, st.counts.malformed));
  }
  const auto r = result_of(st, resumed, elapsed());
  log_summary(cfg.output, r);
  return r;
}

RejectionSamplingResult generate_traces(model::CausalLM teacher, const data::Tokenizer& tokenizer,
                                        const data::PromptConfig& prompt, const std::vector<data::Record>& prompts,
                                        const rewards::RewardSet& rewards, const RejectionSamplingConfig& cfg,
                                        const TraceProvenance& provenance, bool resume) {
  if (const std::string problem = cfg.validate(); !problem.empty()) {
    throw std::invalid_argument("generate_traces: " + problem);
  }
  rollout::GenerationConfig gen = cfg.generation;
  gen.num_generations = cfg.samples_per_prompt;
  const bool was_training = teacher->is_training();
  teacher->eval();
  struct Restore {
    model::CausalLM& m;
    bool training;
    ~Restore() {
      if (training) m->train();
    }
  } restore{teacher, was_training};
  rollout::Engine engine(teacher, &tokenizer, gen);
  const TraceGenerator generate = [&](const std::vector<rollout::GenerationRequest>& reqs) {
    return engine.generate(reqs);
  };
  return generate_traces_with(generate, tokenizer, prompt, prompts, rewards, cfg, provenance, resume);
}

}  // namespace grpo::train
