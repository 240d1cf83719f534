#include "grpo/data/dataset.h"

#include "grpo/core/random.h"

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <limits>
#include <numeric>
#include <random>
#include <stdexcept>

#include <nlohmann/json.hpp>

#include "grpo/core/files.h"
#include "grpo/core/log.h"

namespace grpo::data {

using nlohmann::json;

namespace {

// A problem with one line; JsonlReader prefixes "FILE:LINE: ".
struct LineError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

std::string trim(const std::string& s) {
  const auto space = [](unsigned char c) { return std::isspace(c) != 0; };
  auto b = std::find_if_not(s.begin(), s.end(), space);
  auto e = std::find_if_not(s.rbegin(), s.rend(), space).base();
  return b < e ? std::string(b, e) : std::string();
}

bool is_blank(const std::string& s) {
  return std::all_of(s.begin(), s.end(), [](unsigned char c) { return std::isspace(c) != 0; });
}

std::string describe(const json& j) {
  switch (j.type()) {
    case json::value_t::object: return "an object";
    case json::value_t::array: return "a list";
    case json::value_t::string: return "a string";
    case json::value_t::boolean: return "a boolean";
    case json::value_t::null: return "null";
    case json::value_t::number_integer:
    case json::value_t::number_unsigned:
    case json::value_t::number_float: return "a number";
    default: return "an unsupported value";
  }
}

// nlohmann's "[json.exception.parse_error.101] parse error at line 1, column 5: syntax error ..."
// as "syntax error ... (column 5)".
std::string parse_error_detail(const json::parse_error& e) {
  const std::string what = e.what();
  const auto col = what.find("column ");
  const auto colon = col == std::string::npos ? std::string::npos : what.find(": ", col);
  if (colon == std::string::npos) return what;
  return what.substr(colon + 2) + " (" + what.substr(col, colon - col) + ")";
}

// The value at a dotted path ("meta.question", "turns.0.text"); nullptr when absent.
const json* lookup(const json& root, const std::string& path) {
  const json* cur = &root;
  std::size_t start = 0;
  while (true) {
    const auto dot = path.find('.', start);
    const std::string key = path.substr(start, dot == std::string::npos ? std::string::npos : dot - start);
    if (cur->is_object()) {
      auto it = cur->find(key);
      if (it == cur->end()) return nullptr;
      cur = &*it;
    } else if (cur->is_array() && !key.empty() &&
               std::all_of(key.begin(), key.end(), [](unsigned char c) { return std::isdigit(c) != 0; })) {
      const auto i = std::stoull(key);
      if (i >= cur->size()) return nullptr;
      cur = &(*cur)[i];
    } else {
      return nullptr;
    }
    if (dot == std::string::npos) return cur;
    start = dot + 1;
  }
}

const json& require(const json& root, const std::string& path, const char* member) {
  const json* v = lookup(root, path);
  if (v == nullptr) throw LineError("missing field '" + path + "' (mapped to " + member + ")");
  return *v;
}

std::string string_field(const json& root, const std::string& path, const char* member) {
  const json& v = require(root, path, member);
  if (!v.is_string()) throw LineError("field '" + path + "' must be a string, found " + describe(v));
  return v.get<std::string>();
}

// Strings as they are, numbers as JSON writes them ("42", "-3", "0.5").
std::string string_or_number_field(const json& root, const std::string& path, const char* member) {
  const json& v = require(root, path, member);
  if (v.is_string()) return v.get<std::string>();
  if (v.is_number()) return v.dump();
  throw LineError("field '" + path + "' must be a string or number, found " + describe(v));
}

Record parse_record(const std::string& line, const DatasetConfig& cfg) {
  json j;
  try {
    j = json::parse(line);
  } catch (const json::parse_error& e) {
    throw LineError("malformed JSON: " + parse_error_detail(e));
  }
  if (!j.is_object()) throw LineError("expected a JSON object, found " + describe(j));

  const FieldMap& f = cfg.fields;
  Record r;
  r.prompt = string_field(j, f.prompt, "prompt");
  const std::string answer = string_or_number_field(j, f.answer, "answer");
  if (f.reasoning) r.reasoning = string_field(j, *f.reasoning, "reasoning");
  switch (cfg.answer_extract) {
    case AnswerExtract::none: r.answer = trim(answer); break;
    case AnswerExtract::gsm8k: {
      const auto mark = answer.rfind("####");
      if (mark == std::string::npos) {
        throw LineError("field '" + f.answer + "' has no '####' before the final answer (answer_extract: gsm8k)");
      }
      r.answer = trim(answer.substr(mark + 4));
      if (r.answer.empty()) throw LineError("field '" + f.answer + "' has nothing after '####'");
      if (!f.reasoning) r.reasoning = trim(answer.substr(0, mark));
      break;
    }
    case AnswerExtract::boxed: {
      auto boxed = extract_boxed(answer);
      if (!boxed) {
        throw LineError("field '" + f.answer + "' has no \\boxed{...} answer (answer_extract: boxed)");
      }
      r.answer = trim(*boxed);
      if (!f.reasoning) r.reasoning = trim(answer);
      break;
    }
  }
  for (const std::string& path : f.extra) {
    const json& v = require(j, path, "extra");
    r.extra[path] = v.is_string() ? v.get<std::string>() : v.dump();
  }
  return r;
}

}  // namespace

std::optional<std::string> extract_boxed(const std::string& text) {
  // The last \boxed{ or \fbox{ whose braces close.
  std::size_t best_open = std::string::npos;
  for (const std::string_view marker : {std::string_view("\\boxed{"), std::string_view("\\fbox{")}) {
    const auto p = text.rfind(marker);
    if (p != std::string::npos && (best_open == std::string::npos || p + marker.size() > best_open)) {
      best_open = p + marker.size();
    }
  }
  if (best_open == std::string::npos) return std::nullopt;
  int depth = 1;
  for (std::size_t i = best_open; i < text.size(); ++i) {
    const char c = text[i];
    if (c == '\\' && i + 1 < text.size()) {
      ++i;  // an escaped brace ("\{") does not count
      continue;
    }
    if (c == '{') ++depth;
    if (c == '}' && --depth == 0) return text.substr(best_open, i - best_open);
  }
  return std::nullopt;
}

JsonlReader::JsonlReader(DatasetConfig cfg) : cfg_(std::move(cfg)) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (!fs::exists(cfg_.path, ec)) throw std::runtime_error("dataset file '" + cfg_.path + "' does not exist");
  if (fs::is_directory(cfg_.path, ec)) {
    throw std::runtime_error("dataset '" + cfg_.path + "' is a folder, not a JSONL file");
  }
  in_.open(cfg_.path, std::ios::binary);
  if (!in_) throw std::runtime_error("cannot open dataset '" + cfg_.path + "': " + std::strerror(errno));
}

std::optional<Record> JsonlReader::next() {
  if (cfg_.limit && records_ >= *cfg_.limit) return std::nullopt;
  std::string line;
  while (std::getline(in_, line)) {
    ++line_;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line_ == 1 && line.rfind("\xEF\xBB\xBF", 0) == 0) line.erase(0, 3);  // UTF-8 byte order mark
    if (is_blank(line)) continue;
    const std::string where = cfg_.path + ":" + std::to_string(line_);
    try {
      Record r = parse_record(line, cfg_);
      r.source = cfg_.path;
      r.line = line_;
      ++records_;
      return r;
    } catch (const LineError& e) {
      const std::string message = where + ": " + e.what();
      if (!cfg_.skip_bad_lines) throw std::runtime_error(message);
      ++bad_lines_;
      if (bad_lines_ > cfg_.max_bad_lines) {
        throw std::runtime_error(cfg_.path + ": " + std::to_string(bad_lines_) +
                                 " bad lines, more than max_bad_lines (" + std::to_string(cfg_.max_bad_lines) +
                                 "); the last: " + message);
      }
      if (static_cast<int>(first_errors_.size()) < kLoggedErrors) {
        first_errors_.push_back(message);
        log::warn("skipping bad line: {}", message);
      }
    }
  }
  if (in_.bad())
    throw std::runtime_error("cannot read dataset '" + cfg_.path + "' after line " + std::to_string(line_));
  return std::nullopt;
}

LoadReport load_jsonl_report(const DatasetConfig& cfg) {
  JsonlReader reader(cfg);
  LoadReport report;
  while (auto r = reader.next()) report.records.push_back(std::move(*r));
  report.bad_lines = reader.bad_lines();
  report.first_errors = reader.first_errors();
  if (report.bad_lines > 0) {
    log::warn("{}: skipped {} bad lines, read {} records (skip_bad_lines)", cfg.path, report.bad_lines,
              report.records.size());
  }
  return report;
}

std::vector<Record> load_jsonl(const DatasetConfig& cfg) { return load_jsonl_report(cfg).records; }

void write_jsonl(const std::string& path, const std::vector<Record>& records) {
  std::string out;
  for (std::size_t i = 0; i < records.size(); ++i) {
    const Record& r = records[i];
    nlohmann::ordered_json j = nlohmann::ordered_json::object();
    j["prompt"] = r.prompt;
    j["answer"] = r.answer;
    if (r.reasoning) j["reasoning"] = *r.reasoning;
    for (const auto& [key, value] : r.extra) {
      if (key == "prompt" || key == "answer" || key == "reasoning") {
        throw std::invalid_argument("write_jsonl: record " + std::to_string(i) + " has an extra field named '" + key +
                                    "', which is a Record member");
      }
      auto parsed = nlohmann::ordered_json::parse(value, nullptr, /*allow_exceptions=*/false);
      j[key] = (parsed.is_discarded() || parsed.is_string()) ? nlohmann::ordered_json(value) : std::move(parsed);
    }
    try {
      out += j.dump();
    } catch (const json::type_error&) {
      throw std::invalid_argument("write_jsonl: record " + std::to_string(i) + " (" + r.where() +
                                  ") is not valid UTF-8");
    }
    out += '\n';
  }
  write_file_atomic(path, out);
}

// ---------------------------------------------------------------------------------------------
// DataOrder

namespace {

int64_t json_int(const json& j, const char* key, int64_t lo) {
  auto it = j.find(key);
  if (it == j.end()) throw std::runtime_error(std::string("data order state: missing key '") + key + "'");
  if (!it->is_number_integer() || it->get<int64_t>() < lo) {
    throw std::runtime_error(std::string("data order state: '") + key +
                             "' must be an integer >= " + std::to_string(lo) + ", found " + it->dump());
  }
  return it->get<int64_t>();
}

}  // namespace

std::string DataOrderState::to_json() const {
  json j = json::object();
  j["epoch"] = epoch;
  j["offset"] = offset;
  j["seed"] = seed;
  j["dataset_size"] = dataset_size;
  j["world_size"] = world_size;
  return j.dump();
}

DataOrderState DataOrderState::from_json(const std::string& text) {
  json j;
  try {
    j = json::parse(text);
  } catch (const json::parse_error& e) {
    throw std::runtime_error("data order state: malformed JSON: " + parse_error_detail(e));
  }
  if (!j.is_object()) throw std::runtime_error("data order state: expected a JSON object, found " + describe(j));
  DataOrderState s;
  s.epoch = json_int(j, "epoch", 0);
  s.offset = json_int(j, "offset", 0);
  s.dataset_size = json_int(j, "dataset_size", 1);
  s.world_size = json_int(j, "world_size", 1);
  auto seed = j.find("seed");
  if (seed == j.end()) throw std::runtime_error("data order state: missing key 'seed'");
  if (!seed->is_number_unsigned() && !(seed->is_number_integer() && seed->get<int64_t>() >= 0)) {
    throw std::runtime_error("data order state: 'seed' must be an integer >= 0, found " + seed->dump());
  }
  s.seed = seed->get<uint64_t>();
  return s;
}

DataOrder::DataOrder(int64_t dataset_size, DataOrderConfig cfg, uint64_t seed, int64_t rank, int64_t world_size)
    : size_(dataset_size), cfg_(cfg), seed_(seed), rank_(rank), world_size_(world_size) {
  if (world_size_ < 1 || rank_ < 0 || rank_ >= world_size_) {
    throw std::invalid_argument("DataOrder: rank " + std::to_string(rank_) + " is not in [0, world_size " +
                                std::to_string(world_size_) + ")");
  }
  if (cfg_.batch_size < 1) {
    throw std::invalid_argument("DataOrder: batch_size must be >= 1, found " + std::to_string(cfg_.batch_size));
  }
  if (size_ < world_size_) {
    throw std::invalid_argument("DataOrder: a dataset of " + std::to_string(size_) + " records cannot be shared by " +
                                std::to_string(world_size_) + " ranks");
  }
  per_rank_ = size_ / world_size_;
  if (cfg_.drop_last && per_rank_ < cfg_.batch_size) {
    throw std::invalid_argument("DataOrder: with drop_last, " + std::to_string(per_rank_) +
                                " records per rank make no batch of " + std::to_string(cfg_.batch_size));
  }
}

int64_t DataOrder::batches_per_epoch() const {
  return cfg_.drop_last ? per_rank_ / cfg_.batch_size : (per_rank_ + cfg_.batch_size - 1) / cfg_.batch_size;
}

std::vector<int64_t> DataOrder::epoch_indices(int64_t epoch) const {
  std::vector<int64_t> perm(static_cast<std::size_t>(size_));
  std::iota(perm.begin(), perm.end(), int64_t{0});
  if (cfg_.shuffle) {
    std::mt19937_64 rng(splitmix64(seed_ ^ splitmix64(static_cast<uint64_t>(epoch))));
    for (std::size_t i = perm.size() - 1; i > 0; --i) {
      std::swap(perm[i], perm[uniform_below(rng, i + 1)]);
    }
  }
  std::vector<int64_t> share(static_cast<std::size_t>(per_rank_));
  for (int64_t k = 0; k < per_rank_; ++k) share[k] = perm[rank_ + k * world_size_];
  return share;
}

std::vector<int64_t> DataOrder::next_batch() {
  if (current_epoch_ != epoch_) {
    current_ = epoch_indices(epoch_);
    current_epoch_ = epoch_;
  }
  const int64_t n = std::min(cfg_.batch_size, per_rank_ - offset_);
  std::vector<int64_t> batch(current_.begin() + offset_, current_.begin() + offset_ + n);
  offset_ += n;
  // Move on as soon as this epoch has no batch left, so that state() names the next batch.
  const int64_t left = per_rank_ - offset_;
  if (left == 0 || (cfg_.drop_last && left < cfg_.batch_size)) {
    ++epoch_;
    offset_ = 0;
  }
  return batch;
}

DataOrderState DataOrder::state() const { return DataOrderState{epoch_, offset_, seed_, size_, world_size_}; }

void DataOrder::restore(const DataOrderState& s) {
  if (s.dataset_size != size_) {
    throw std::invalid_argument("DataOrder::restore: the state is for a dataset of " + std::to_string(s.dataset_size) +
                                " records, this one has " + std::to_string(size_));
  }
  if (s.world_size != world_size_) {
    throw std::invalid_argument("DataOrder::restore: the state is for world_size " + std::to_string(s.world_size) +
                                ", this run has " + std::to_string(world_size_));
  }
  if (s.epoch < 0 || s.offset < 0 || s.offset >= per_rank_) {
    throw std::invalid_argument("DataOrder::restore: offset " + std::to_string(s.offset) +
                                " is not inside an epoch of " + std::to_string(per_rank_) + " indices per rank");
  }
  seed_ = s.seed;
  epoch_ = s.epoch;
  offset_ = s.offset;
  current_epoch_ = -1;
}

}  // namespace grpo::data
