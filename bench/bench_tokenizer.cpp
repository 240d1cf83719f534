// Tokenizer encode speed on the oracle corpus (tests/data/tokenizer_oracle.py generate DIR), one
// benchmark per tokenizer in DIR:
//
//   GRPO_TOKENIZER_CORPUS=DIR/corpus.jsonl grpo_bench --benchmark_filter=Tokenizer
//
//   BM_TokenizerEncode/<name>        single thread, warm word cache (repeated passes), bytes/s
//   BM_TokenizerEncodeCold/<name>    single thread, a fresh tokenizer per pass (cold cache)
//   BM_TokenizerEncodeBatch/<name>   encode_batch on all hardware threads
//
// Compare with `tokenizer_oracle.py bench DIR` (the HF library with RAYON_NUM_THREADS=1).
#include <benchmark/benchmark.h>
#include <nlohmann/json.hpp>

#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "grpo/data/bpe_tokenizer.h"

namespace {

struct Corpus {
  std::vector<std::string> lines;
  int64_t bytes = 0;
};

Corpus read_corpus(const std::string& path) {
  Corpus c;
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot read " + path);
  std::string line;
  while (std::getline(in, line)) {
    c.lines.push_back(nlohmann::json::parse(line).get<std::string>());
    c.bytes += static_cast<int64_t>(c.lines.back().size());
  }
  return c;
}

void encode_all(const grpo::data::Tokenizer& tok, const Corpus& corpus, benchmark::State& state) {
  int64_t tokens = 0;
  for (const std::string& line : corpus.lines) tokens += static_cast<int64_t>(tok.encode(line).size());
  benchmark::DoNotOptimize(tokens);
  state.counters["tokens"] = static_cast<double>(tokens);
}

void BM_TokenizerEncode(benchmark::State& state, const Corpus* corpus, const std::string& file) {
  const auto tok = grpo::data::load_tokenizer(file);
  for (const std::string& line : corpus->lines) tok->encode(line);  // warm the word cache
  for (auto _ : state) encode_all(*tok, *corpus, state);
  state.SetBytesProcessed(state.iterations() * corpus->bytes);
}

void BM_TokenizerEncodeCold(benchmark::State& state, const Corpus* corpus, const std::string& file) {
  for (auto _ : state) {
    state.PauseTiming();
    auto tok = grpo::data::load_tokenizer(file);
    state.ResumeTiming();
    encode_all(*tok, *corpus, state);
    state.PauseTiming();
    tok.reset();
    state.ResumeTiming();
  }
  state.SetBytesProcessed(state.iterations() * corpus->bytes);
}

void BM_TokenizerEncodeBatch(benchmark::State& state, const Corpus* corpus, const std::string& file) {
  const auto tok = grpo::data::load_tokenizer(file);
  tok->encode_batch(corpus->lines);
  for (auto _ : state) benchmark::DoNotOptimize(tok->encode_batch(corpus->lines).size());
  state.SetBytesProcessed(state.iterations() * corpus->bytes);
}

// Registered only when GRPO_TOKENIZER_CORPUS names a corpus; otherwise one benchmark says so.
const bool registered = [] {
  const char* path = std::getenv("GRPO_TOKENIZER_CORPUS");
  if (path == nullptr || !*path) {
    benchmark::RegisterBenchmark("BM_TokenizerEncode/skipped", [](benchmark::State& state) {
      for (auto _ : state) {
      }
      state.SkipWithError("set GRPO_TOKENIZER_CORPUS=DIR/corpus.jsonl (tests/data/tokenizer_oracle.py generate DIR)");
    });
    return false;
  }
  static const Corpus corpus = read_corpus(path);
  const std::filesystem::path dir = std::filesystem::path(path).parent_path();
  for (const char* name : {"gpt2", "llama3", "qwen2", "deepseek_v3"}) {
    const std::string file = (dir / name / "tokenizer.json").string();
    if (!std::filesystem::exists(file)) continue;
    benchmark::RegisterBenchmark((std::string("BM_TokenizerEncode/") + name).c_str(), BM_TokenizerEncode, &corpus, file)
        ->Unit(benchmark::kMillisecond)
        ->MinTime(2.0);
    benchmark::RegisterBenchmark((std::string("BM_TokenizerEncodeCold/") + name).c_str(), BM_TokenizerEncodeCold,
                                 &corpus, file)
        ->Unit(benchmark::kMillisecond)
        ->MinTime(2.0);
    benchmark::RegisterBenchmark((std::string("BM_TokenizerEncodeBatch/") + name).c_str(), BM_TokenizerEncodeBatch,
                                 &corpus, file)
        ->Unit(benchmark::kMillisecond)
        ->UseRealTime();
  }
  return true;
}();

}  // namespace
