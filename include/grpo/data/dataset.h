// Datasets: JSONL files read into Records through a field mapping, written back with write_jsonl,
// and the order in which training visits them (DataOrder).
//
//   data:
//     path: data/gsm8k_train.jsonl
//     fields: {prompt: question, answer: answer}
//     answer_extract: gsm8k       # "... #### 42" -> answer "42", reasoning "..."
//
//   auto records = grpo::data::load_jsonl(cfg.data);
//
// Every problem in a file is reported in one line naming FILE:LINE (lines count from 1, empty lines
// included): malformed JSON, a line that is not an object, a missing field, a field of the wrong
// type, an answer that the extraction does not find. By default the first one fails the load; with
// skip_bad_lines they are counted, the first few logged, and the load fails only past max_bad_lines.
//
// Field types: prompt and reasoning must be JSON strings; the answer may be a string or a number
// (written as JSON writes it: 42, 0.5); extra columns may be anything (a string is kept as its
// text, any other value as compact JSON). null, booleans, lists and objects are errors where a
// string is expected.
#pragma once

#include <array>
#include <cstdint>
#include <fstream>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "grpo/config/config.h"
#include "grpo/data/record.h"

namespace grpo::data {

// Which JSON fields fill a Record. A dotted path reads nested values: "meta.question" is
// {"meta": {"question": ...}}; a numeric segment indexes a list ("turns.0.text").
struct FieldMap {
  std::string prompt = "prompt";         // the question
  std::string answer = "answer";         // the reference answer
  std::optional<std::string> reasoning;  // a worked solution; null = none (or from answer_extract)
  std::vector<std::string> extra;        // more fields for reward functions, kept under their path

  template <class V>
  void visit(V& v) {
    using config::Check;
    v("prompt", prompt, "field holding the question, e.g. question (GSM8K), problem (MATH)", Check().nonempty());
    v("answer", answer, "field holding the answer, e.g. answer (GSM8K), solution (MATH)", Check().nonempty());
    v("reasoning", reasoning, "field holding a worked solution; null = none", Check().nonempty());
    v("extra", extra, "more fields passed to reward functions, e.g. [level, type]");
  }
};

// How the answer field becomes Record::answer.
enum class AnswerExtract {
  none,   // the field as it is (trimmed)
  gsm8k,  // the text after the last "####"; the text before it becomes the reasoning when no
          // reasoning field is mapped. Commas in the number are kept ("1,000").
  boxed,  // the contents of the last \boxed{...} (nested braces allowed); the whole field becomes the
          // reasoning when no reasoning field is mapped (MATH's solution is a worked solution)
};
constexpr auto config_enum_names(AnswerExtract) {
  return std::array{std::pair{AnswerExtract::none, "none"}, std::pair{AnswerExtract::gsm8k, "gsm8k"},
                    std::pair{AnswerExtract::boxed, "boxed"}};
}

struct DatasetConfig {
  std::string path;                                    // the JSONL file, one JSON object per line
  std::string format = "jsonl";                        // only jsonl for now
  FieldMap fields;                                     // JSON field -> Record member
  AnswerExtract answer_extract = AnswerExtract::none;  // none | gsm8k | boxed
  bool skip_bad_lines = false;                         // count and log bad lines instead of failing on the first
  int64_t max_bad_lines = 100;                         // with skip_bad_lines: fail when more lines than this are bad
  std::optional<int64_t> limit;                        // read at most this many records; null = all

  template <class V>
  void visit(V& v) {
    using config::Check;
    v("path", path, "JSONL file, one JSON object per line", Check().required().nonempty());
    v("format", format, "file format", Check().one_of({"jsonl"}));
    v("fields", fields, "which JSON fields fill prompt, answer, reasoning, extra");
    v("answer_extract", answer_extract, "none | gsm8k (text after ####) | boxed (last \\boxed{...})");
    v("skip_bad_lines", skip_bad_lines, "count and log bad lines instead of failing on the first");
    v("max_bad_lines", max_bad_lines, "with skip_bad_lines: more bad lines than this fail the load", Check().ge(0));
    v("limit", limit, "read at most this many records; null = all", Check().ge(1));
  }
};

// The contents of the last \boxed{...} (or \fbox{...}) in `text`, braces matched with nesting:
// "so \boxed{\frac{1}{2}}." -> "\frac{1}{2}". nullopt when there is none or its braces do not close.
std::optional<std::string> extract_boxed(const std::string& text);

// Reads a JSONL file one record at a time: the streaming form of load_jsonl.
class JsonlReader {
 public:
  // Opens cfg.path; throws std::runtime_error "cannot open dataset 'PATH': REASON" when it cannot.
  explicit JsonlReader(DatasetConfig cfg);

  // The next record; nullopt at the end of the file (or once cfg.limit records were returned).
  // Throws std::runtime_error "FILE:LINE: ..." on a bad line (without skip_bad_lines), or when a
  // bad line takes the count past max_bad_lines.
  std::optional<Record> next();

  int64_t records() const { return records_; }      // returned so far
  int64_t bad_lines() const { return bad_lines_; }  // skipped so far
  // The messages of the first few skipped lines ("FILE:LINE: ..."), as logged.
  const std::vector<std::string>& first_errors() const { return first_errors_; }

  // How many skipped lines are logged and kept in first_errors().
  static constexpr int kLoggedErrors = 5;

 private:
  DatasetConfig cfg_;
  std::ifstream in_;
  int64_t line_ = 0;
  int64_t records_ = 0;
  int64_t bad_lines_ = 0;
  std::vector<std::string> first_errors_;
};

struct LoadReport {
  std::vector<Record> records;
  int64_t bad_lines = 0;                  // lines skipped (skip_bad_lines)
  std::vector<std::string> first_errors;  // the first JsonlReader::kLoggedErrors of them
};

// Reads a whole file; logs a summary warning when lines were skipped.
LoadReport load_jsonl_report(const DatasetConfig& cfg);
// The records of load_jsonl_report.
std::vector<Record> load_jsonl(const DatasetConfig& cfg);

// Writes records as JSONL that load_jsonl reads back with the default field map
// ({prompt, answer, reasoning, extra: [their keys]}): {"prompt", "answer", "reasoning" (when set),
// then each extra key}. An extra value that is valid JSON other than a string is written as that
// JSON value (so "[3,7]" becomes a list and reads back as "[3,7]"), anything else as a string.
// The file is replaced atomically. Throws std::invalid_argument when an extra key collides with
// prompt/answer/reasoning, std::runtime_error naming the path when it cannot be written.
void write_jsonl(const std::string& path, const std::vector<Record>& records);

// ---------------------------------------------------------------------------------------------
// Sampling order.

// How the indices of a sharded dataset are batched.
struct DataOrderConfig {
  int64_t batch_size = 8;  // indices per batch on each rank
  bool shuffle = true;     // a new permutation each epoch; false = 0, 1, 2, ... every epoch
  bool drop_last = false;  // drop an epoch's last, smaller batch

  template <class V>
  void visit(V& v) {
    using config::Check;
    v("batch_size", batch_size, "records per batch on each rank", Check().ge(1));
    v("shuffle", shuffle, "reshuffle every epoch (by seed and epoch)");
    v("drop_last", drop_last, "drop each epoch's last, smaller batch");
  }
};

// Where a DataOrder stands: enough to continue exactly there. The same on every rank.
struct DataOrderState {
  int64_t epoch = 0;         // current epoch, from 0
  int64_t offset = 0;        // indices of this epoch's share already returned
  uint64_t seed = 0;         // the permutation seed
  int64_t dataset_size = 0;  // checked on restore: a different dataset cannot continue
  int64_t world_size = 1;    // checked on restore

  // {"epoch":2,"offset":48,"seed":1234,"dataset_size":7473,"world_size":1}
  std::string to_json() const;
  // Throws std::runtime_error "data order state: ..." when `json` is not such an object.
  static DataOrderState from_json(const std::string& json);
  bool operator==(const DataOrderState&) const = default;
};

// The order of dataset indices over epochs, sharded across ranks, in batches.
//
// Epoch e visits the permutation P_e of [0, N) that depends only on (seed, e) (a Fisher-Yates
// shuffle driven by mt19937_64 with its own bounded draw, so it is the same with every standard
// library). Sharding: each rank gets floor(N / world_size) indices per epoch; the last N % world_size
// of P_e are dropped for that epoch (with shuffle they differ each epoch, so nothing is left out
// for good). Rank r takes P_e[r], P_e[r + w], P_e[r + 2w], ...: shares are disjoint and equal, so
// every rank runs the same number of batches. A batch never spans two epochs; the last one of an
// epoch may be smaller (unless drop_last).
class DataOrder {
 public:
  // Throws std::invalid_argument when rank is not in [0, world_size), when the dataset has fewer
  // records than world_size, or when drop_last leaves no batch.
  DataOrder(int64_t dataset_size, DataOrderConfig cfg, uint64_t seed, int64_t rank = 0, int64_t world_size = 1);

  // The next batch of dataset indices on this rank (moves to the next epoch when this one is done).
  std::vector<int64_t> next_batch();

  // This rank's share of epoch `epoch`, in order (does not move the position).
  std::vector<int64_t> epoch_indices(int64_t epoch) const;

  int64_t per_rank() const { return per_rank_; }  // indices per epoch on each rank
  int64_t batches_per_epoch() const;
  int64_t epoch() const { return epoch_; }

  DataOrderState state() const;
  // Continues from `s`; throws std::invalid_argument when it was saved for another dataset size,
  // world size, or is past the end of an epoch.
  void restore(const DataOrderState& s);

 private:
  int64_t size_;
  DataOrderConfig cfg_;
  uint64_t seed_;
  int64_t rank_, world_size_;
  int64_t per_rank_;
  int64_t epoch_ = 0;
  int64_t offset_ = 0;
  std::vector<int64_t> current_;  // epoch_indices(epoch_), cached
  int64_t current_epoch_ = -1;
};

}  // namespace grpo::data
