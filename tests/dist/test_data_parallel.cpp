// Data parallelism against one process: the launch environment, shares and ZeRO-1's partition
// (in this process), and multi-process runs through `grpo launch` on Gloo (CPU): collectives,
// GradSync's sums against one process's gradients, the replica check, and the training programs
// (train_sft, train_grpo, distill) with N ranks against one process with the same global batch,
// resume across world sizes, and a rank killed mid-run.
//
// Tolerances: the ranks' gradients are summed in another order than one process sums them, so
// weights after a run differ by rounding only: at most 1e-5 of each tensor's largest entry.
#include <array>
#include <cstdio>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <torch/torch.h>
#include <tuple>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "grpo/core/files.h"
#include "grpo/core/metrics.h"
#include "grpo/dist/launch_env.h"
#include "grpo/dist/sharded_optimizer.h"
#include "grpo/dist/world.h"
#include "grpo/model/checkpoint.h"
#include "grpo/train/train_state.h"
#include "model/model_test_util.h"
#include "test_util.h"

namespace grpo::dist {
namespace {

namespace fs = std::filesystem;

// ---- In this process -------------------------------------------------------------------------

LaunchEnv env_of(std::map<std::string, std::string> vars) {
  return launch_env_from([&](const char* name) -> const char* {
    const auto it = vars.find(name);
    return it == vars.end() ? nullptr : it->second.c_str();
  });
}

TEST(DistEnv, TorchrunSlurmAndNone) {
  const auto none = env_of({});
  EXPECT_FALSE(none.distributed());
  EXPECT_EQ(none.source, "none");
  const auto t = env_of({{"RANK", "3"},
                         {"WORLD_SIZE", "4"},
                         {"LOCAL_RANK", "1"},
                         {"LOCAL_WORLD_SIZE", "2"},
                         {"MASTER_ADDR", "node7"},
                         {"MASTER_PORT", "1234"}});
  EXPECT_EQ(t.source, "torchrun");
  EXPECT_EQ(t.rank, 3);
  EXPECT_EQ(t.world_size, 4);
  EXPECT_EQ(t.local_rank, 1);
  EXPECT_EQ(t.local_world_size, 2);
  EXPECT_EQ(t.master_addr, "node7");
  EXPECT_EQ(t.master_port, 1234);
  const auto s = env_of({{"SLURM_PROCID", "5"},
                         {"SLURM_NTASKS", "8"},
                         {"SLURM_LOCALID", "1"},
                         {"SLURM_NTASKS_PER_NODE", "4(x2)"},
                         {"MASTER_ADDR", "n0"}});
  EXPECT_EQ(s.source, "slurm");
  EXPECT_EQ(s.rank, 5);
  EXPECT_EQ(s.world_size, 8);
  EXPECT_EQ(s.local_rank, 1);
  EXPECT_EQ(s.local_world_size, 4);
  EXPECT_EQ(s.master_port, 29500);
}

TEST(DistEnv, BadValuesNameTheVariable) {
  auto message = [](std::map<std::string, std::string> vars) {
    try {
      env_of(std::move(vars));
    } catch (const std::invalid_argument& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(message({{"RANK", "x"}, {"WORLD_SIZE", "2"}}).find("RANK='x'"), std::string::npos);
  EXPECT_NE(message({{"RANK", "2"}, {"WORLD_SIZE", "2"}}).find("RANK=2 is not below WORLD_SIZE=2"), std::string::npos);
  EXPECT_NE(message({{"RANK", "0"}}).find("RANK and WORLD_SIZE"), std::string::npos);
  EXPECT_NE(message({{"RANK", "0"}, {"WORLD_SIZE", "2"}, {"MASTER_PORT", "70000"}}).find("MASTER_PORT"),
            std::string::npos);
  EXPECT_NE(message({{"SLURM_PROCID", "0"}, {"SLURM_NTASKS", "2"}}).find("MASTER_ADDR"), std::string::npos);
  EXPECT_NE(message({{"RANK", "1"}, {"WORLD_SIZE", "4"}, {"LOCAL_RANK", "2"}, {"LOCAL_WORLD_SIZE", "2"}})
                .find("LOCAL_RANK=2"),
            std::string::npos);
}

TEST(DistEnv, SharesCoverInOrder) {
  for (int64_t n : {0, 1, 5, 7, 8}) {
    for (int64_t size : {1, 2, 3}) {
      int64_t at = 0;
      for (int64_t r = 0; r < size; ++r) {
        const auto [b, e] = share(n, r, size);
        EXPECT_EQ(b, at);
        EXPECT_LE(e - b, n / size + 1);
        EXPECT_GE(e - b, n / size);
        at = e;
      }
      EXPECT_EQ(at, n);
    }
  }
  using Range = std::pair<int64_t, int64_t>;
  EXPECT_EQ(share(8, 0, 3), Range(0, 3));
  EXPECT_EQ(share(8, 2, 3), Range(6, 8));
}

TEST(DistEnv, PartitionBalancesLargestFirst) {
  // Largest first to the least loaded: 10 -> 0, 8 -> 1, 5 -> 1 (8 < 10), 4 -> 0, 1 -> 1.
  EXPECT_EQ(partition({5, 10, 1, 8, 4}, 2), (std::vector<int64_t>{1, 0, 1, 1, 0}));
  EXPECT_EQ(partition({3, 3, 3}, 3), (std::vector<int64_t>{0, 1, 2}));
}

// Ranks other than 0 get a writer of nothing: no file to open (fopen("") would fail), writes are
// accepted, and a repeated name is still refused.
TEST(DistEnv, MetricsWriterWithoutPathWritesNothing) {
  std::unique_ptr<MetricsWriter> w;
  ASSERT_NO_THROW(w = std::make_unique<MetricsWriter>(""));
  EXPECT_NO_THROW(w->write(1, {{"loss", 1.0}}));
  EXPECT_THROW(w->write(2, {{"loss", 1.0}, {"loss", 2.0}}), std::invalid_argument);
}

// ---- Through grpo launch ----------------------------------------------------------------------

const std::string kSource = GRPO_SOURCE_DIR;

// Runs `command` with a shell, output to `log`; returns the exit status.
int run(const std::string& command, const std::string& log) {
  const int rc = std::system((command + " > '" + log + "' 2>&1").c_str());
  return WIFEXITED(rc) ? WEXITSTATUS(rc) : 128 + WTERMSIG(rc);
}

std::string launch(int ranks) {
  return std::string(GRPO_CLI) + " launch --nproc-per-node " + std::to_string(ranks) + " --master-port 0 -- ";
}

// Each program alone gets 2 threads (ranks get cores / ranks from grpo launch).
std::string single() { return "OMP_NUM_THREADS=2 "; }

std::string tail_of(const std::string& path) {
  std::string text;
  try {
    text = read_file(path);
  } catch (const std::exception&) {
  }
  return text.size() > 3000 ? text.substr(text.size() - 3000) : text;
}

// The largest difference of two checkpoints' tensors, relative to each tensor's largest entry;
// tensors whose name contains `skip` are left out.
double max_relative_difference(const std::string& a, const std::string& b, std::string* where = nullptr,
                               const std::string& skip = "") {
  auto ma = model::load_hf_checkpoint(a), mb = model::load_hf_checkpoint(b);
  auto pa = ma->named_parameters(), pb = mb->named_parameters();
  double worst = 0;
  for (const auto& item : pa) {
    if (!skip.empty() && item.key().find(skip) != std::string::npos) continue;
    const auto x = item.value().to(torch::kDouble), y = pb[item.key()].to(torch::kDouble);
    const double scale = std::max(x.abs().max().item<double>(), 1e-30);
    const double d = (x - y).abs().max().item<double>() / scale;
    if (d > worst) {
      worst = d;
      if (where) *where = item.key();
    }
  }
  return worst;
}

TEST(DataParallel, Collectives) {
  test::TempDir dir;
  for (int ranks : {2, 3}) {
    const auto log = dir.path("log" + std::to_string(ranks));
    EXPECT_EQ(run(launch(ranks) + DIST_WORKER + " collectives", log), 0) << tail_of(log);
  }
}

TEST(DataParallel, GradSyncSumsLikeOneProcess) {
  // The reference: one process, the 7 rows in one backward (the worker's problem, same seeds).
  torch::manual_seed(7);
  auto model = model::CausalLM(model::test::tiny_dsv3(), torch::TensorOptions().dtype(torch::kFloat));
  torch::manual_seed(8);
  const auto ids = torch::randint(0, model->config().vocab_size, {7, 12}, torch::kLong);
  const auto o = model->forward(ids, torch::arange(12).expand({7, 12}), torch::ones_like(ids), nullptr, {});
  (o.logits.square().mean(-1).sum() / 7.0).backward();
  int64_t unused = 0;
  for (const auto& p : model->parameters()) unused += p.grad().defined() ? 0 : 1;
  EXPECT_GT(unused, 0) << "the MTP module is not run: its parameters get no gradient";
  test::TempDir dir;
  for (int ranks : {2, 3}) {
    const auto log = dir.path("log" + std::to_string(ranks));
    ASSERT_EQ(run(launch(ranks) + DIST_WORKER + " grad_sync " + dir.path(), log), 0) << tail_of(log);
    std::vector<torch::Tensor> grads;
    torch::load(grads, dir.path("grads.pt"));
    const auto params = model->parameters();
    ASSERT_EQ(grads.size(), params.size());
    for (size_t i = 0; i < params.size(); ++i) {
      const auto& want = params[i].grad();
      if (!want.defined()) {
        EXPECT_EQ(grads[i].numel(), 0) << "parameter " << i << " has no gradient in one process";
        continue;
      }
      ASSERT_EQ(grads[i].sizes(), want.sizes()) << "parameter " << i;
      const double scale = std::max(want.abs().max().item<double>(), 1e-30);
      EXPECT_LE((grads[i] - want).abs().max().item<double>() / scale, 1e-5) << "parameter " << i << ", " << ranks;
    }
    // Several buckets, some of them started while backward still ran.
    const std::string out = read_file(log);
    const auto at = out.find("buckets ");
    ASSERT_NE(at, std::string::npos) << out;
    std::istringstream in(out.substr(at + 8));
    int64_t buckets = 0, overlapped = 0;
    std::string word;
    in >> buckets >> word >> overlapped;
    EXPECT_GT(buckets, 2);
    EXPECT_GT(overlapped, 0);
  }
}

// Rejection sampling under data parallelism: rank 0 writes every rank's traces, and no rank returns
// before they are on disk (the next stage reads them on every rank). The 2-rank distillation run
// below once read a short file on a rank whose peer was still writing.
TEST(DataParallel, TracesAreOnDiskForEveryRankWhenRejectionSamplingReturns) {
  test::TempDir dir;
  const auto log = dir.path("log");
  EXPECT_EQ(run(launch(2) + DIST_WORKER + " traces " + dir.path(), log), 0) << tail_of(log);
}

TEST(DataParallel, ReplicaCheckNamesTheTensor) {
  test::TempDir dir;
  const auto log = dir.path("log");
  EXPECT_EQ(run(launch(2) + DIST_WORKER + " replicas", log), 0) << tail_of(log);
  EXPECT_NE(read_file(log).find("detected: rank"), std::string::npos) << tail_of(log);
}

// train_sft on the shipped config, made short: 20 steps, the global batch 16 (8 per rank on 2).
std::string sft_command(const std::string& out, const std::string& extra = "") {
  return std::string(TRAIN_SFT) + " --config " + kSource + "/configs/train/sft.yaml --set run.output_dir=" + out +
         " --set sft.steps=20 --set sft.eval_every=0 --set sft.schedule.warmup_steps=2"
         " --set eval_data.generator.count=6 --set eval.max_new_tokens=8 --set sft.checkpoint.every_steps=10"
         " --set sft.checkpoint.keep_last=0 " +
         extra;
}

TEST(DataParallel, SftMatchesOneProcess) {
  test::TempDir dir;
  ASSERT_EQ(run(single() + sft_command(dir.path("one")), dir.path("one.log")), 0) << tail_of(dir.path("one.log"));
  struct Case {
    std::string name;
    int ranks;
    std::string extra;
  };
  for (const auto& c :
       {Case{"two", 2, ""}, Case{"three", 3, ""}, Case{"two_zero1", 2, "--set run.dist.sharding=optimizer"},
        Case{"two_packed", 2, "--set sft.packing=true --set sft.batch_size=4"}}) {
    const auto log = dir.path(c.name + ".log");
    ASSERT_EQ(run(launch(c.ranks) + sft_command(dir.path(c.name), c.extra), log), 0) << tail_of(log);
    std::string where;
    const std::string reference = c.name == "two_packed" ? dir.path("one_packed") : dir.path("one");
    if (c.name == "two_packed") {
      ASSERT_EQ(run(single() + sft_command(reference, c.extra), reference + ".log"), 0) << tail_of(reference + ".log");
    }
    EXPECT_LE(max_relative_difference(reference + "/model", dir.path(c.name) + "/model", &where), 1e-5)
        << c.name << ": " << where;
    // Metrics come from rank 0 alone, over the whole batch: the same tokens per step.
    const auto one = read_metrics(reference + "/metrics.jsonl"), dp = read_metrics(dir.path(c.name) + "/metrics.jsonl");
    ASSERT_EQ(one.size(), dp.size()) << c.name;
    for (size_t i = 0; i < one.size(); ++i) {
      EXPECT_EQ(one[i].get("completion_tokens", -1), dp[i].get("completion_tokens", -2)) << c.name << " row " << i;
      EXPECT_NEAR(one[i].get("loss", -1), dp[i].get("loss", -2), 1e-5) << c.name << " row " << i;
    }
  }
  // ZeRO-1: two optimizer shards, each about half of the single-process optimizer.pt.
  const auto shards = dir.path("two_zero1/checkpoints/sft/step_20/optimizer");
  ASSERT_TRUE(fs::exists(shards + "/rank_0.pt") && fs::exists(shards + "/rank_1.pt"));
  const double whole = static_cast<double>(fs::file_size(dir.path("one/checkpoints/sft/step_20/optimizer.pt")));
  for (const char* f : {"/rank_0.pt", "/rank_1.pt"}) {
    EXPECT_LT(static_cast<double>(fs::file_size(shards + f)), 0.6 * whole) << f;
  }
}

// A checkpoint folder of `from` at step 10 copied into a new run folder, as if it stopped there.
void stopped_at_step_10(const std::string& from, const std::string& to) {
  const auto src = fs::path(from) / "checkpoints/sft/step_10";
  const auto dst = fs::path(to) / "checkpoints/sft/step_10";
  fs::create_directories(dst.parent_path());
  fs::copy(src, dst, fs::copy_options::recursive);
  write_file_atomic((dst.parent_path() / "latest").string(), "step_10\n");
}

// "memory per rank (after the first step): parameters P MB, gradients G MB, optimizer O MB" of rank 0.
std::array<double, 3> memory_line(const std::string& log) {
  const std::string text = read_file(log);
  const std::string key = "memory per rank (after the first step): ";
  const auto at = text.find(key);
  std::array<double, 3> mb{-1, -1, -1};
  if (at == std::string::npos) return mb;
  std::sscanf(text.c_str() + at + key.size(), "parameters %lf MB, gradients %lf MB, optimizer %lf MB", &mb[0], &mb[1],
              &mb[2]);
  return mb;
}

// Full sharding (FSDP) against plain data parallelism on 2 ranks: 2 and 4 ranks, and 2 ranks with
// blocks kept gathered after the forward, no prefetch and activation checkpointing; parameters,
// gradients and AdamW's moments per rank at 1/2 and 1/4; a resume from the 4-rank run's step-10
// checkpoint on 2 ranks (full), on 2 ranks (replicas) and in one process.
TEST(DataParallel, FullShardingMatchesDataParallelAndResumesOnOtherLayouts) {
  test::TempDir dir;
  ASSERT_EQ(run(launch(2) + sft_command(dir.path("dp2")), dir.path("dp2.log")), 0) << tail_of(dir.path("dp2.log"));
  const std::string full = "--set run.dist.sharding=full";
  struct Case {
    std::string name;
    int ranks;
    std::string extra;
  };
  for (const auto& c : {Case{"full2", 2, full}, Case{"full4", 4, full},
                        Case{"full2_kept", 2,
                             full + " --set run.dist.reshard_after_forward=false --set run.dist.prefetch=false"
                                    " --set sft.activation_checkpointing=true"}}) {
    const auto log = dir.path(c.name + ".log");
    ASSERT_EQ(run(launch(c.ranks) + sft_command(dir.path(c.name), c.extra), log), 0) << tail_of(log);
    std::string where;
    EXPECT_LE(max_relative_difference(dir.path("dp2/model"), dir.path(c.name + "/model"), &where), 1e-5)
        << c.name << ": " << where;
    const auto dp = read_metrics(dir.path("dp2/metrics.jsonl")), fs = read_metrics(dir.path(c.name + "/metrics.jsonl"));
    ASSERT_EQ(dp.size(), fs.size()) << c.name;
    for (size_t i = 0; i < dp.size(); ++i) {
      EXPECT_NEAR(dp[i].get("loss", -1), fs[i].get("loss", -2), 1e-5) << c.name << " row " << i;
      EXPECT_NEAR(dp[i].get("grad_norm", -1), fs[i].get("grad_norm", -2), 1e-5) << c.name << " row " << i;
    }
  }
  // Bytes per rank: 1/N of the replicas' (up to each tensor's padding to a multiple of N).
  const auto replicas = memory_line(dir.path("dp2.log"));
  ASSERT_GT(replicas[0], 0) << tail_of(dir.path("dp2.log"));
  for (const auto& [name, n] :
       {std::pair<std::string, double>{"full2", 2}, std::pair<std::string, double>{"full4", 4}}) {
    const auto mine = memory_line(dir.path(name + ".log"));
    for (size_t k = 0; k < 3; ++k) {
      EXPECT_NEAR(mine[k], replicas[k] / n, 0.01 * replicas[k]) << name << " quantity " << k;
    }
  }
  for (const auto& c : {Case{"resume_full2", 2, full}, Case{"resume_dp2", 2, ""}, Case{"resume_one", 1, ""}}) {
    stopped_at_step_10(dir.path("full4"), dir.path(c.name));
    const auto log = dir.path(c.name + ".log");
    const auto cmd = (c.ranks == 1 ? single() : launch(c.ranks)) + sft_command(dir.path(c.name), c.extra) + " --resume";
    ASSERT_EQ(run(cmd, log), 0) << tail_of(log);
    EXPECT_NE(read_file(log).find("resumed from"), std::string::npos) << tail_of(log);
    std::string where;
    EXPECT_LE(max_relative_difference(dir.path("full4/model"), dir.path(c.name) + "/model", &where), 1e-5)
        << c.name << ": " << where;
  }
}

// Expert parallelism, one MoE layer (dist_worker moe_ep): outputs, input gradients and parameter
// gradients against the whole layer on every rank's tokens, within 1e-6 of each tensor's largest
// entry; uneven routing, an expert no token chooses, and (on 4 ranks) a rank without tokens.
TEST(DataParallel, ExpertParallelMoeLayerMatchesOneProcess) {
  test::TempDir dir;
  for (const auto& [ranks, ep] : {std::pair{2, 2}, std::pair{4, 4}, std::pair{4, 2}}) {
    const auto log = dir.path("log_" + std::to_string(ranks) + "_" + std::to_string(ep));
    EXPECT_EQ(run(launch(ranks) + DIST_WORKER + " moe_ep " + std::to_string(ep), log), 0)
        << ranks << " ranks, expert_parallel " << ep << ": " << tail_of(log);
  }
}

// Generation in the training layout (run.dist.generation: sharded, dist_worker generate): with the
// experts over every rank (tokens all-to-all per prefill and decode step) and with full sharding
// (each block gathered for its forward), every rank's completions are the whole model's: the same
// tokens and finish reasons, log-probs within 1e-5; the last rank has no prompts and stands in,
// and completions end at different lengths.
TEST(DataParallel, ShardedGenerationMatchesTheWholeModel) {
  test::TempDir dir;
  for (const auto& [ranks, layout] :
       {std::pair{2, "ep"}, std::pair{4, "ep"}, std::pair{2, "full"}, std::pair{4, "full"}}) {
    const auto log = dir.path(std::string("log_") + layout + std::to_string(ranks));
    EXPECT_EQ(run(launch(ranks) + DIST_WORKER + " generate " + layout, log), 0)
        << ranks << " ranks, " << layout << ": " << tail_of(log);
  }
}

// Expert parallelism in training: train_sft's tiny DeepSeek-V3 (8 experts, MTP) with its experts
// over 2 ranks against one process, then a resume from its step-10 checkpoint on one process and
// on 4 ranks (experts over 4, and over 2 with 2 replicas each).
TEST(DataParallel, ExpertParallelSftMatchesOneProcessAndResumesOnOtherLayouts) {
  test::TempDir dir;
  ASSERT_EQ(run(single() + sft_command(dir.path("one")), dir.path("one.log")), 0) << tail_of(dir.path("one.log"));
  const std::string ep2 = "--set run.dist.expert_parallel=2";
  ASSERT_EQ(run(launch(2) + sft_command(dir.path("ep2"), ep2), dir.path("ep2.log")), 0) << tail_of(dir.path("ep2.log"));
  EXPECT_NE(read_file(dir.path("ep2.log")).find("4 of 8 routed experts"), std::string::npos);
  std::string where;
  EXPECT_LE(max_relative_difference(dir.path("one/model"), dir.path("ep2/model"), &where), 1e-5) << where;
  // The checkpoint holds whole experts under their HF names, as one process writes them.
  EXPECT_LE(max_relative_difference(dir.path("one/checkpoints/sft/step_20/model"),
                                    dir.path("ep2/checkpoints/sft/step_20/model"), &where),
            1e-5)
      << where;
  const auto one = read_metrics(dir.path("one/metrics.jsonl")), ep = read_metrics(dir.path("ep2/metrics.jsonl"));
  ASSERT_EQ(one.size(), ep.size());
  for (size_t i = 0; i < one.size(); ++i) {
    EXPECT_NEAR(one[i].get("loss", -1), ep[i].get("loss", -2), 1e-5) << "row " << i;
    EXPECT_NEAR(one[i].get("grad_norm", -1), ep[i].get("grad_norm", -2), 1e-5) << "row " << i;
  }
  struct Case {
    std::string name;
    int ranks;
    std::string extra;
  };
  for (const auto& c : {Case{"resume_one", 1, ""}, Case{"resume_ep4", 4, "--set run.dist.expert_parallel=4"},
                        Case{"resume_ep2x2", 4, ep2}}) {
    stopped_at_step_10(dir.path("ep2"), dir.path(c.name));
    const auto log = dir.path(c.name + ".log");
    const auto cmd = (c.ranks == 1 ? single() : launch(c.ranks)) + sft_command(dir.path(c.name), c.extra) + " --resume";
    ASSERT_EQ(run(cmd, log), 0) << tail_of(log);
    EXPECT_NE(read_file(log).find("resumed from"), std::string::npos) << tail_of(log);
    EXPECT_LE(max_relative_difference(dir.path("one/model"), dir.path(c.name) + "/model", &where), 1e-5)
        << c.name << ": " << where;
  }
}

TEST(DataParallel, ResumeOnTheSameAndOtherWorldSizes) {
  test::TempDir dir;
  const auto zero = std::string("--set run.dist.sharding=optimizer");
  ASSERT_EQ(run(launch(2) + sft_command(dir.path("full"), zero), dir.path("full.log")), 0)
      << tail_of(dir.path("full.log"));
  struct Case {
    std::string name;
    int ranks;  // 1 = a single process
    std::string extra;
  };
  for (const auto& c : {Case{"two", 2, zero}, Case{"one", 1, ""}, Case{"three", 3, zero}}) {
    stopped_at_step_10(dir.path("full"), dir.path(c.name));
    const auto log = dir.path(c.name + ".log");
    const auto cmd = (c.ranks == 1 ? single() : launch(c.ranks)) + sft_command(dir.path(c.name), c.extra) + " --resume";
    ASSERT_EQ(run(cmd, log), 0) << tail_of(log);
    EXPECT_NE(read_file(log).find("resumed from"), std::string::npos) << tail_of(log);
    std::string where;
    EXPECT_LE(max_relative_difference(dir.path("full/model"), dir.path(c.name) + "/model", &where), 1e-5)
        << c.name << ": " << where;
  }
}

const char* teacher() {
  const char* t = std::getenv("GRPO_DIST_TEACHER");
  return t != nullptr ? t : "";
}

// train_grpo from the SFT'd fixture model: 6 steps of 4 groups of 4, with the reference KL,
// batch-level reward scaling and dynamic sampling (refills) on.
std::string grpo_command(const std::string& out, const std::string& extra = "") {
  return std::string(TRAIN_GRPO) + " --config " + kSource + "/configs/train/grpo.yaml --set run.output_dir=" + out +
         " --set model.init=" + teacher() +
         " --set grpo.steps=6 --set grpo.eval_every=0 --set eval_data.generator.count=6 --set eval.max_new_tokens=8"
         " --set grpo.generation.max_new_tokens=48 --set grpo.prompts_per_step=4"
         " --set grpo.generation.num_generations=4 --set grpo.schedule.warmup_steps=1 --set grpo.loss.beta=0.04"
         " --set grpo.dynamic_sampling=true --set grpo.loss.scale_rewards=batch --set grpo.micro_batch_size=4 " +
         extra;
}

TEST(DataParallel, GrpoMatchesOneProcess) {
  ASSERT_TRUE(fs::exists(std::string(teacher()) + "/config.json")) << "GRPO_DIST_TEACHER (the fixture) is missing";
  test::TempDir dir;
  ASSERT_EQ(run(single() + grpo_command(dir.path("one")), dir.path("one.log")), 0) << tail_of(dir.path("one.log"));
  const auto one = read_metrics(dir.path("one/metrics.jsonl"));
  ASSERT_EQ(one.size(), 6u);
  double reward = 0, refills = 0;
  for (const auto& r : one) {
    reward += r.get("reward", 0);
    refills += r.get("generated_groups", 0) - 4;
  }
  ASSERT_GT(reward, 0) << "the fixture model should earn some reward";
  ASSERT_GT(refills, 0) << "dynamic sampling should refill some steps";
  for (const auto& [ranks, extra, tag] :
       {std::tuple<int, std::string, std::string>{2, "", ""}, std::tuple<int, std::string, std::string>{3, "", ""},
        std::tuple<int, std::string, std::string>{2, "--set run.dist.sharding=optimizer", "_zero1"},
        std::tuple<int, std::string, std::string>{2, "--set run.dist.sharding=full", "_full"},
        std::tuple<int, std::string, std::string>{4, "--set run.dist.sharding=full", "_full"},
        std::tuple<int, std::string, std::string>{2, "--set run.dist.expert_parallel=2", "_ep"},
        // Rollouts and evaluation in the training layout: blocks gathered per forward / tokens
        // exchanged per decode step, the ranks' forwards paired.
        std::tuple<int, std::string, std::string>{2, "--set run.dist.sharding=full --set run.dist.generation=sharded",
                                                  "_full_sharded_generation"},
        std::tuple<int, std::string, std::string>{
            2, "--set run.dist.expert_parallel=2 --set run.dist.generation=sharded", "_ep_sharded_generation"},
        // Whole gradients accumulated over the micro-batches, reduce-scattered once per step: plain
        // data parallelism's summation order (checked against dp2 below).
        std::tuple<int, std::string, std::string>{
            2, "--set run.dist.sharding=full --set run.dist.reduce_every_micro_batch=false", "_full_accumulated"}}) {
    const auto name = "dp" + std::to_string(ranks) + tag;
    const auto log = dir.path(name + ".log");
    ASSERT_EQ(run(launch(ranks) + grpo_command(dir.path(name), extra), log), 0) << tail_of(log);
    std::string where;
    if (tag.rfind("_full", 0) == 0 || tag.rfind("_ep", 0) == 0) {
      // Sharded or split, every tensor holds 1e-5 but the embedding: two rows of it (rare byte
      // tokens, gradients at rounding-noise level, which AdamW scales up to steps of the learning
      // rate's size) end 1.2e-5..2.8e-5 from one process after 6 steps (docs/distributed.md).
      EXPECT_LE(max_relative_difference(dir.path("one/model"), dir.path(name) + "/model", &where, "embed_tokens"), 1e-5)
          << name << ": " << where;
      EXPECT_LE(max_relative_difference(dir.path("one/model"), dir.path(name) + "/model", &where), 5e-5)
          << name << ": " << where;
    } else {
      EXPECT_LE(max_relative_difference(dir.path("one/model"), dir.path(name) + "/model", &where), 1e-5)
          << name << ": " << where;
    }
    if (tag == "_full_accumulated") {
      // Plain data parallelism's sums and clipping coefficient: bit for bit its weights.
      EXPECT_EQ(max_relative_difference(dir.path("dp2/model"), dir.path(name) + "/model", &where), 0)
          << name << " against plain data parallelism: " << where;
    } else if (ranks == 2 && tag.rfind("_full", 0) == 0) {
      // Reduce-scattered per micro-batch: other sums, within 1e-5 of plain data parallelism.
      EXPECT_LE(max_relative_difference(dir.path("dp2/model"), dir.path(name) + "/model", &where), 1e-5)
          << name << " against plain data parallelism: " << where;
    }
    // The same completions: every step's rewards, lengths and refills over all ranks are those of
    // one process.
    const auto dp = read_metrics(dir.path(name + "/metrics.jsonl"));
    ASSERT_EQ(dp.size(), one.size());
    for (size_t i = 0; i < one.size(); ++i) {
      for (const char* key : {"reward", "reward_std", "completion_length", "completion_length_max", "generated_groups",
                              "zero_std_fraction", "truncated_fraction"}) {
        EXPECT_NEAR(one[i].get(key, -1), dp[i].get(key, -2), 1e-9) << name << " step " << i + 1 << " " << key;
      }
      EXPECT_NEAR(one[i].get("kl", -1), dp[i].get("kl", -2), 1e-4) << name << " step " << i + 1;
    }
  }
}

// Disaggregated rollouts (grpo.async.mode: disaggregated): rank 1 only generates and scores, rank 0
// only trains. Batch k is sampled by the weights rank 0 had before step k - s, checked by hash,
// and the run is the one-step-off run of one process (same seed and staleness): the same
// batches, the same evaluation and the same final weights.
// metrics.jsonl's rows with their text fields (the hashes).
std::vector<nlohmann::json> json_rows(const std::string& path) {
  std::vector<nlohmann::json> rows;
  std::istringstream in(read_file(path));
  for (std::string line; std::getline(in, line);) {
    if (!line.empty()) rows.push_back(nlohmann::json::parse(line));
  }
  return rows;
}

TEST(DataParallel, DisaggregatedRolloutsAreOneStepOffAcrossProcesses) {
  ASSERT_TRUE(fs::exists(std::string(teacher()) + "/config.json")) << "GRPO_DIST_TEACHER (the fixture) is missing";
  test::TempDir dir;
  for (const int s : {1, 2}) {
    const std::string common = " --set grpo.async.hash_weights=true --set grpo.async.max_staleness=" +
                               std::to_string(s) + " --set grpo.steps=5 --set grpo.eval_every=2";
    const auto one = dir.path("one_step_off" + std::to_string(s)), two = dir.path("disaggregated" + std::to_string(s));
    // The one process's two threads get one core each, as the two ranks do.
    ASSERT_EQ(run(single() + grpo_command(one,
                                          "--set grpo.async.mode=one_step_off --set grpo.async.rollout_threads=1"
                                          " --set grpo.async.trainer_threads=1" +
                                              common),
                  one + ".log"),
              0)
        << tail_of(one + ".log");
    // A deadlock would show as a collective timeout.
    ASSERT_EQ(
        run(launch(2) + grpo_command(two, "--set grpo.async.mode=disaggregated --set run.dist.timeout_s=60" + common),
            two + ".log"),
        0)
        << tail_of(two + ".log");
    const auto a = read_metrics(one + "/metrics.jsonl"), b = read_metrics(two + "/metrics.jsonl");
    ASSERT_EQ(a.size(), 5u);
    ASSERT_EQ(b.size(), 5u);
    const auto ja = json_rows(one + "/metrics.jsonl"), jb = json_rows(two + "/metrics.jsonl");
    ASSERT_EQ(jb.size(), 5u);
    std::vector<std::string> sampler, policy;
    for (const auto& r : jb) {
      sampler.push_back(r.at("sampler_weights_hash").get<std::string>());
      policy.push_back(r.at("policy_weights_hash").get<std::string>());
    }
    for (size_t k = 0; k < 5; ++k) {
      // The generator's weights at step k are rank 0's before step k - s (the first s: the start).
      EXPECT_EQ(sampler[k], policy[static_cast<size_t>(std::max<int>(0, static_cast<int>(k) - s))])
          << "staleness " << s << " step " << k + 1;
      EXPECT_EQ(b[k].get("staleness", -1), std::min<double>(static_cast<double>(k), s));
      if (k > static_cast<size_t>(s)) EXPECT_GT(b[k].get("weight_sync_bytes", 0), 0) << "a new version came";
      for (const char* key : {"reward", "completion_length", "generated_groups", "staleness"}) {
        EXPECT_EQ(a[k].get(key, -1), b[k].get(key, -2)) << "staleness " << s << " step " << k + 1 << " " << key;
      }
      EXPECT_NEAR(a[k].get("loss", -1), b[k].get("loss", -2), 1e-6) << "step " << k + 1;
      EXPECT_EQ(ja[k].at("sampler_weights_hash"), jb[k].at("sampler_weights_hash")) << "step " << k + 1;
    }
    EXPECT_NE(policy[1], policy[2]) << "the trainer's weights move";
    // Evaluations at steps 2, 4 and 5, every rank taking part: those of one process.
    for (const size_t k : {1, 3, 4}) EXPECT_EQ(a[k].get("eval_accuracy", -1), b[k].get("eval_accuracy", -2)) << k;
    std::string where;
    EXPECT_EQ(max_relative_difference(one + "/model", two + "/model", &where), 0) << where;
  }
  // One rank: a clear error.
  const auto log = dir.path("alone.log");
  EXPECT_NE(run(single() + grpo_command(dir.path("alone"), "--set grpo.async.mode=disaggregated"), log), 0);
  EXPECT_NE(read_file(log).find("disaggregated needs at least one trainer and one generator rank"), std::string::npos)
      << tail_of(log);
}

// Partial rollouts (grpo.async.partial_after_tokens): batch k starts on rank 0's weights before
// step k - s and continues, after 6 decode steps, on those before step k - s + 1 (hashes); the
// completions are longer than that, so both versions sampled; and a second run is the same.
TEST(DataParallel, PartialRolloutsContinueOnTheNextWeightsAndAreReproducible) {
  ASSERT_TRUE(fs::exists(std::string(teacher()) + "/config.json")) << "GRPO_DIST_TEACHER (the fixture) is missing";
  test::TempDir dir;
  const std::string extra =
      "--set grpo.async.mode=disaggregated --set grpo.async.hash_weights=true --set grpo.async.max_staleness=1"
      " --set grpo.async.partial_after_tokens=6 --set grpo.steps=5 --set grpo.eval_every=2 --set run.dist.timeout_s=60";
  std::vector<std::vector<nlohmann::json>> runs;
  for (const char* name : {"a", "b"}) {
    const auto out = dir.path(name);
    ASSERT_EQ(run(launch(2) + grpo_command(out, extra), out + ".log"), 0) << tail_of(out + ".log");
    runs.push_back(json_rows(out + "/metrics.jsonl"));
  }
  const auto& a = runs[0];
  ASSERT_EQ(a.size(), 5u);
  std::vector<std::string> policy;
  for (const auto& r : a) policy.push_back(r.at("policy_weights_hash").get<std::string>());
  int switched = 0;
  for (size_t k = 0; k < 5; ++k) {
    const auto& r = a[k];
    EXPECT_EQ(r.at("sampler_weights_hash").get<std::string>(), policy[k == 0 ? 0 : k - 1]) << "step " << k + 1;
    if (k >= 1) {  // batch k continues on the weights before step k (s = 1): rank 0's current ones
      ASSERT_TRUE(r.contains("partial_weights_hash")) << "step " << k + 1;
      EXPECT_EQ(r.at("partial_weights_hash").get<std::string>(), policy[k]) << "step " << k + 1;
      EXPECT_EQ(r.at("partial_staleness").get<int64_t>(), 0);
      EXPECT_GT(r.at("completion_length_max").get<double>(), 7.0) << "some tokens sampled after the switch";
      ++switched;
    } else {
      EXPECT_FALSE(r.contains("partial_weights_hash")) << "the first batch has no older version to start on";
    }
    for (const char* key : {"reward", "loss", "completion_length", "sampler_weights_hash", "policy_weights_hash"}) {
      EXPECT_EQ(a[k].at(key), runs[1][k].at(key)) << "step " << k + 1 << " " << key;
    }
  }
  EXPECT_EQ(switched, 4);
  std::string where;
  EXPECT_EQ(max_relative_difference(dir.path("a/model"), dir.path("b/model"), &where), 0) << where;
}

// distill from the fixture teacher: traces (rejection sampling of 24 prompts, well-formed ones kept:
// the fixture is too small to be right often), then 6 steps of logit distillation, half of them on
// the student's own samples.
std::string distill_command(const std::string& out) {
  return std::string(DISTILL) + " --config " + kSource + "/configs/distill.yaml --set run.output_dir=" + out +
         " --set teacher.init=" + teacher() +
         " --set \"stages=[traces, distill]\" --set prompts.generator.count=24"
         " --set rejection_sampling.prompts_per_batch=10 --set rejection_sampling.keep=all_correct"
         " --set rejection_sampling.accuracy_reward=format --set eval_data.generator.count=6"
         " --set eval.max_new_tokens=8 --set distill.steps=6 --set distill.batch_size=8"
         " --set distill.schedule.warmup_steps=1 --set distill.generation.max_new_tokens=24"
         " --set distill.on_policy_fraction=0.5";
}

TEST(DataParallel, DistillMatchesOneProcess) {
  ASSERT_TRUE(fs::exists(std::string(teacher()) + "/config.json")) << "GRPO_DIST_TEACHER (the fixture) is missing";
  test::TempDir dir;
  ASSERT_EQ(run(single() + distill_command(dir.path("one")), dir.path("one.log")), 0) << tail_of(dir.path("one.log"));
  const auto log = dir.path("two.log");
  ASSERT_EQ(run(launch(2) + distill_command(dir.path("two")), log), 0) << tail_of(log);
  // Rejection sampling: rank 0 writes every rank's traces, in prompt order, byte for byte.
  const auto traces = read_file(dir.path("one/traces.jsonl"));
  EXPECT_FALSE(traces.empty());
  EXPECT_EQ(traces, read_file(dir.path("two/traces.jsonl")));
  const auto one = read_metrics(dir.path("one/metrics.jsonl"));
  const auto two = read_metrics(dir.path("two/metrics.jsonl"));
  ASSERT_EQ(one.size(), two.size());
  double on_policy = 0;
  for (size_t i = 0; i < one.size(); ++i) {
    on_policy += one[i].get("on_policy", 0);
    EXPECT_EQ(one[i].get("completion_tokens", -1), two[i].get("completion_tokens", -2)) << "row " << i;
    EXPECT_NEAR(one[i].get("divergence", -1), two[i].get("divergence", -2), 1e-5) << "row " << i;
  }
  EXPECT_GT(on_policy, 0);
  // The student is Qwen2-style: its k_proj bias has a gradient of exactly 0 in exact arithmetic
  // (softmax ignores a constant added to every key), so what it has is rounding noise, which AdamW
  // scales up to steps of the learning rate's size; those entries are all noise and differ at
  // 1e-5..1e-4 between summation orders. Every other tensor is held to 1e-5.
  std::string where;
  EXPECT_LE(
      max_relative_difference(dir.path("one/student_model"), dir.path("two/student_model"), &where, "k_proj.bias"),
      1e-5)
      << where;
  // Fully sharded on 2 ranks (the student's blocks gathered as the passes reach them; on-policy
  // steps sample on the gathered student): the same traces, tokens and weights.
  ASSERT_EQ(run(launch(2) + distill_command(dir.path("full")) + " --set run.dist.sharding=full", dir.path("full.log")),
            0)
      << tail_of(dir.path("full.log"));
  const auto full = read_metrics(dir.path("full/metrics.jsonl"));
  ASSERT_EQ(one.size(), full.size());
  for (size_t i = 0; i < one.size(); ++i) {
    EXPECT_EQ(one[i].get("completion_tokens", -1), full[i].get("completion_tokens", -2)) << "row " << i;
    EXPECT_NEAR(one[i].get("divergence", -1), full[i].get("divergence", -2), 1e-5) << "row " << i;
  }
  EXPECT_LE(
      max_relative_difference(dir.path("one/student_model"), dir.path("full/student_model"), &where, "k_proj.bias"),
      1e-5)
      << "full: " << where;
}

// The pid of the process of rank `rank` whose command line mentions `marker` (or -1).
pid_t rank_pid(int rank, const std::string& marker) {
  for (const auto& entry : fs::directory_iterator("/proc")) {
    const auto name = entry.path().filename().string();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    std::string cmdline, environ;
    try {
      cmdline = read_file(entry.path().string() + "/cmdline");
      environ = read_file(entry.path().string() + "/environ");
    } catch (const std::exception&) {
      continue;
    }
    if (cmdline.find(marker) == std::string::npos || cmdline.find("launch") != std::string::npos) continue;
    if (environ.find(std::string("RANK=") + std::to_string(rank) + '\0') == 0 ||
        environ.find(std::string("\0RANK=", 6) + std::to_string(rank) + '\0') != std::string::npos) {
      return static_cast<pid_t>(std::stoi(name));
    }
  }
  return -1;
}

TEST(DataParallel, KilledRankStopsTheJobAndKeepsTheCheckpoint) {
  test::TempDir dir;
  const auto out = dir.path("run");
  const auto log = dir.path("log");
  // Long enough to be killed mid-run, checkpoints every 5 steps, a 30 s collective timeout.
  const auto cmd = launch(2) +
                   sft_command(out,
                               "--set sft.steps=2000 --set sft.checkpoint.every_steps=5 "
                               "--set sft.checkpoint.keep_last=2 --set run.dist.timeout_s=30") +
                   " > '" + log + "' 2>&1";
  const pid_t launcher = fork();
  ASSERT_GE(launcher, 0);
  if (launcher == 0) {
    execl("/bin/sh", "sh", "-c", cmd.c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  const auto latest = out + "/checkpoints/sft/latest";
  const auto t0 = std::chrono::steady_clock::now();
  auto seconds = [&] { return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(); };
  while (!fs::exists(latest) && seconds() < 120) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  ASSERT_TRUE(fs::exists(latest)) << tail_of(log);
  const pid_t victim = rank_pid(1, out);
  ASSERT_GT(victim, 0) << "rank 1 not found";
  ASSERT_EQ(kill(victim, SIGKILL), 0);
  const auto killed_at = seconds();
  int status = 0;
  pid_t done = 0;
  while ((done = waitpid(launcher, &status, WNOHANG)) == 0 && seconds() - killed_at < 60) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  if (done == 0) kill(launcher, SIGKILL), waitpid(launcher, &status, 0);
  ASSERT_NE(done, 0) << "grpo launch still runs 60 s after rank 1 died";
  EXPECT_LT(seconds() - killed_at, 30.0);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_NE(WEXITSTATUS(status), 0);
  const std::string text = read_file(log);
  EXPECT_NE(text.find("grpo launch: failed: rank 1"), std::string::npos) << tail_of(log);
  EXPECT_EQ(rank_pid(0, out), -1) << "rank 0 outlived the job";
  // The last checkpoint loads: weights, RNG and both optimizer shards.
  const auto path = train::latest_checkpoint(out + "/checkpoints/sft");
  ASSERT_TRUE(path.has_value());
  auto m = model::load_hf_checkpoint(*path + "/model");
  train::OptimizerConfig oc;
  World one;
  ShardedOptimizer opt(*m, oc, one, false);
  const auto st = train::load_checkpoint(*path, m, opt, oc);
  EXPECT_GT(st.step, 0);
  EXPECT_FALSE(opt.adamw().state().empty());
}

}  // namespace
}  // namespace grpo::dist
