#include "grpo/train/train_state.h"

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Context.h>
#include <fcntl.h>
#include <torch/cuda.h>
#include <torch/optim/adamw.h>
#include <torch/serialize/archive.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <sstream>
#include <stdexcept>

#include "../error_text.h"
#include "grpo/core/files.h"
#include "grpo/core/log.h"
#include "grpo/dist/data_parallel.h"
#include "grpo/dist/sharded_optimizer.h"
#include "grpo/dist/whole_model.h"
#include "grpo/model/checkpoint.h"
#include "grpo/version.h"

namespace grpo::train {

using grpo::detail::one_line;

namespace fs = std::filesystem;

namespace {

constexpr int kStateFormat = 1;

[[noreturn]] void fail(const fs::path& file, const std::string& what) {
  throw std::runtime_error(file.string() + ": " + what);
}

// "step_<digits>" -> the number; nullopt for anything else (step_3.tmp, latest, ...).
std::optional<int64_t> parse_step_name(const std::string& name) {
  constexpr std::string_view prefix = "step_";
  if (name.size() <= prefix.size() || name.compare(0, prefix.size(), prefix) != 0) return std::nullopt;
  const std::string digits = name.substr(prefix.size());
  if (digits.size() > 18 || !std::all_of(digits.begin(), digits.end(), [](char c) { return c >= '0' && c <= '9'; })) {
    return std::nullopt;
  }
  return std::stoll(digits);
}

bool is_complete(const fs::path& folder) {
  std::error_code ec;
  return fs::is_directory(folder, ec) && fs::is_regular_file(folder / "state.json", ec);
}

// Complete step_<N> folders of `root`, by N ascending.
std::vector<std::pair<int64_t, fs::path>> complete_checkpoints(const fs::path& root) {
  std::vector<std::pair<int64_t, fs::path>> out;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(root, ec)) {
    const auto step = parse_step_name(entry.path().filename().string());
    if (step && is_complete(entry.path())) out.emplace_back(*step, entry.path());
  }
  std::sort(out.begin(), out.end());
  return out;
}

void fsync_path(const fs::path& path, bool directory) {
  const int fd = ::open(path.c_str(), directory ? (O_RDONLY | O_DIRECTORY) : O_RDONLY);
  if (fd < 0) fail(path, std::string("cannot open to flush: ") + std::strerror(errno));
  const int rc = ::fsync(fd);
  const int err = errno;
  ::close(fd);
  if (rc != 0) fail(path, std::string("fsync failed: ") + std::strerror(err));
}

// Flushes every file and folder under `root`, and `root` itself.
void fsync_tree(const fs::path& root) {
  for (const auto& entry : fs::recursive_directory_iterator(root)) {
    if (entry.is_regular_file()) {
      fsync_path(entry.path(), false);
    } else if (entry.is_directory()) {
      fsync_path(entry.path(), true);
    }
  }
  fsync_path(root, true);
}

void write_bytes(const fs::path& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  out.flush();
  if (!out) fail(path, "cannot write");
}

std::string utc_now() {
  const std::time_t now = std::chrono::system_clock::to_time_t(std::chrono::system_clock::now());
  std::tm tm{};
  gmtime_r(&now, &tm);
  char buf[32];
  std::strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

// torch's RNG states, read and checked, not yet applied.
struct RngState {
  torch::Tensor cpu;
  std::vector<torch::Tensor> cuda;  // by device index
};

torch::Tensor generator_state(at::Generator generator) {
  std::lock_guard<std::mutex> lock(generator.mutex());
  return generator.get_state();
}

int64_t cuda_generator_count() {
  return torch::cuda::is_available() ? static_cast<int64_t>(torch::cuda::device_count()) : 0;
}

at::Generator cuda_generator(int64_t index) {
  return at::globalContext().defaultGenerator(at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(index)));
}

RngState parse_rng_state(const std::string& bytes) {
  RngState state;
  try {
    torch::serialize::InputArchive archive;
    std::istringstream in(bytes);
    archive.load_from(in);
    archive.read("cpu", state.cpu);
    torch::Tensor count;
    archive.read("cuda_count", count);
    for (int64_t i = 0; i < count.item<int64_t>(); ++i) {
      torch::Tensor t;
      archive.read("cuda_" + std::to_string(i), t);
      state.cuda.push_back(t);
    }
  } catch (const std::exception& e) {
    throw std::runtime_error("not an RNG state: " + one_line(e));
  }
  const torch::Tensor current = generator_state(at::detail::getDefaultCPUGenerator());
  if (state.cpu.scalar_type() != torch::kByte || state.cpu.numel() != current.numel()) {
    throw std::runtime_error("CPU generator state has " + std::to_string(state.cpu.numel()) + " " +
                             std::string(c10::toString(state.cpu.scalar_type())) + " elements, expected " +
                             std::to_string(current.numel()) + " Byte");
  }
  return state;
}

void apply_rng_state(const RngState& state) {
  {
    at::Generator cpu = at::detail::getDefaultCPUGenerator();
    std::lock_guard<std::mutex> lock(cpu.mutex());
    cpu.set_state(state.cpu);
  }
  const int64_t n = std::min<int64_t>(cuda_generator_count(), static_cast<int64_t>(state.cuda.size()));
  for (int64_t i = 0; i < n; ++i) {
    at::Generator g = cuda_generator(i);
    std::lock_guard<std::mutex> lock(g.mutex());
    g.set_state(state.cuda[i]);
  }
}

}  // namespace

std::string capture_rng_state() {
  torch::serialize::OutputArchive archive;
  archive.write("cpu", generator_state(at::detail::getDefaultCPUGenerator()));
  const int64_t n = cuda_generator_count();
  archive.write("cuda_count", torch::tensor(n));
  for (int64_t i = 0; i < n; ++i) archive.write("cuda_" + std::to_string(i), generator_state(cuda_generator(i)));
  std::ostringstream out;
  archive.save_to(out);
  return out.str();
}

void restore_rng_state(const std::string& bytes) { apply_rng_state(parse_rng_state(bytes)); }

std::string mt_state(const std::mt19937_64& rng) {
  std::ostringstream out;
  out << rng;
  return out.str();
}

void set_mt_state(std::mt19937_64& rng, const std::string& text) {
  std::istringstream in(text);
  std::mt19937_64 parsed;
  in >> parsed;
  std::string rest;
  if (in.fail() || (in >> rest)) {
    throw std::runtime_error("not a std::mt19937_64 state (312 numbers): '" + text.substr(0, 40) +
                             (text.size() > 40 ? "...'" : "'"));
  }
  rng = parsed;
}

namespace {

// Saving in three steps: the temporary folder (leftovers of interrupted saves removed), the files,
// and publishing it under its final name. A multi-process save runs the first and last on rank 0
// only, the middle on every rank.
fs::path begin_save(const fs::path& root, int64_t step) {
  fs::create_directories(root);
  // Leftovers of an interrupted save (step_<N>.tmp, step_<N>.old.tmp) are never a checkpoint.
  std::vector<fs::path> leftovers;
  for (const auto& entry : fs::directory_iterator(root)) {
    const std::string name = entry.path().filename().string();
    if (entry.is_directory() && name.rfind("step_", 0) == 0 && name.size() > 4 &&
        name.compare(name.size() - 4, 4, ".tmp") == 0) {
      leftovers.push_back(entry.path());
    }
  }
  for (const auto& path : leftovers) fs::remove_all(path);
  const fs::path tmp = root / ("step_" + std::to_string(step) + ".tmp");
  fs::create_directories(tmp);
  return tmp;
}

void write_main_files(const fs::path& tmp, int64_t step, model::CausalLM& model, torch::optim::Optimizer* optimizer,
                      const TrainState& state, bool with_optimizer, int64_t optimizer_shards, bool with_model = true) {
  if (with_model) model::save_hf_checkpoint(model, (tmp / "model").string(), torch::kFloat);
  if (optimizer != nullptr) {
    torch::serialize::OutputArchive archive;
    optimizer->save(archive);
    archive.save_to((tmp / "optimizer.pt").string());
  }
  write_bytes(tmp / "rng.pt", capture_rng_state());
  nlohmann::json j;
  j["format"] = kStateFormat;
  j["step"] = step;
  j["values"] = state.values;
  j["grpo_version"] = GRPO_VERSION_STRING;
  j["torch_version"] = GRPO_TORCH_VERSION;
  j["time"] = utc_now();
  j["optimizer"] = with_optimizer;
  if (optimizer_shards > 0) j["optimizer_shards"] = optimizer_shards;
  write_bytes(tmp / "state.json", j.dump(2) + "\n");
}

std::string publish(const fs::path& root, const fs::path& tmp, int64_t step, const CheckpointConfig& cfg) {
  fsync_tree(tmp);
  // Publish: the folder appears under its final name complete, or not at all.
  const std::string name = "step_" + std::to_string(step);
  const fs::path final_path = root / name;
  const fs::path old = root / (name + ".old.tmp");
  if (fs::exists(final_path)) fs::rename(final_path, old);
  fs::rename(tmp, final_path);
  fsync_path(root, true);
  std::error_code ec;
  fs::remove_all(old, ec);
  write_file_atomic((root / "latest").string(), name + "\n");
  if (cfg.keep_last > 0) {
    auto all = complete_checkpoints(root);
    std::erase_if(all, [&](const auto& c) { return c.second == final_path; });
    const std::size_t others = static_cast<std::size_t>(cfg.keep_last - 1);
    for (std::size_t i = 0; i + others < all.size(); ++i) fs::remove_all(all[i].second);
  }
  return final_path.string();
}

}  // namespace

std::string save_checkpoint(const std::string& dir, int64_t step, model::CausalLM& model,
                            torch::optim::Optimizer* optimizer, const TrainState& state, const CheckpointConfig& cfg) {
  const fs::path root(dir);
  const fs::path final_path = root / ("step_" + std::to_string(step));
  const bool with_optimizer = optimizer != nullptr && cfg.save_optimizer;
  fs::path tmp;
  try {
    tmp = begin_save(root, step);
    write_main_files(tmp, step, model, with_optimizer ? optimizer : nullptr, state, with_optimizer, 0);
  } catch (const std::exception& e) {
    std::error_code ec;
    if (!tmp.empty()) fs::remove_all(tmp, ec);
    throw std::runtime_error("saving checkpoint " + final_path.string() + ": " + one_line(e));
  }
  return publish(root, tmp, step, cfg);
}

std::string save_checkpoint(const std::string& dir, int64_t step, model::CausalLM& model,
                            dist::ShardedOptimizer& optimizer, const TrainState& state, const CheckpointConfig& cfg) {
  auto& w = optimizer.world();
  if (!w.distributed()) return save_checkpoint(dir, step, model, &optimizer.adamw(), state, cfg);
  const fs::path root(dir);
  const fs::path final_path = root / ("step_" + std::to_string(step));
  const fs::path tmp = root / ("step_" + std::to_string(step) + ".tmp");
  // Every rank learns whether every rank's part was written; rank 0 publishes only then.
  std::string error;
  auto agree = [&](const char* phase) {
    auto failed = torch::tensor({error.empty() ? 0.0 : 1.0}, torch::kDouble);
    w.all_reduce(failed);
    if (failed.item<double>() > 0) {
      if (w.is_main()) {
        std::error_code ec;
        fs::remove_all(tmp, ec);
      }
      throw std::runtime_error("saving checkpoint " + final_path.string() + ": " +
                               (error.empty() ? std::string("another rank failed while ") + phase : error));
    }
  };
  // Expert parallel / full sharding: the HF checkpoint is written block by block, one block (or
  // one MoE layer's experts) whole at a time, rank 0 writing every tensor under its HF name.
  auto* fsdp = optimizer.fully_shard();
  auto* experts = optimizer.expert_parallel();
  const bool split = fsdp != nullptr || (experts != nullptr && experts->active());
  std::optional<dist::FullyShard::RootGathered> root_gathered;
  std::shared_ptr<model::BlockHooks> blocks;
  if (fsdp != nullptr) {
    root_gathered.emplace(fsdp);
    blocks = model->block_hooks;
  } else if (split) {
    blocks = experts->block_by_block(model);
  }
  // A checkpoint of one model for every rank: the replicated tensors compare (an expert group's
  // ranks hold different experts; full sharding's blocks are chunks, resharded here).
  dist::check_replicas(*model, w, [&](const torch::Tensor& t) { return experts != nullptr && experts->is_expert(t); });
  if (w.is_main()) {
    try {
      begin_save(root, step);
    } catch (const std::exception& e) {
      error = one_line(e);
    }
  }
  agree("preparing the folder");
  try {
    if (cfg.save_optimizer) {
      fs::create_directories(tmp / "optimizer");
      dist::save_adam_states(optimizer.owned_states(),
                             (tmp / "optimizer" / ("rank_" + std::to_string(w.rank()) + ".pt")).string());
    }
    if (split) {
      model::save_hf_checkpoint(model, (tmp / "model").string(), torch::kFloat, 5ull << 30,
                                {.blocks = blocks.get(), .write = w.is_main()});
    }
    if (w.is_main()) write_main_files(tmp, step, model, nullptr, state, cfg.save_optimizer, w.size(), !split);
  } catch (const std::exception& e) {
    error = "rank " + std::to_string(w.rank()) + ": " + one_line(e);
  }
  agree("writing its files");
  std::string path = final_path.string();
  if (w.is_main()) {
    try {
      path = publish(root, tmp, step, cfg);
    } catch (const std::exception& e) {
      error = one_line(e);
    }
  }
  agree("publishing");
  return path;
}

std::optional<std::string> latest_checkpoint(const std::string& dir) {
  const fs::path root(dir);
  std::error_code ec;
  if (!fs::is_directory(root, ec)) return std::nullopt;
  if (fs::is_regular_file(root / "latest", ec)) {
    std::string name;
    try {
      name = read_file((root / "latest").string());
    } catch (const std::exception&) {
      name.clear();
    }
    while (!name.empty() && std::isspace(static_cast<unsigned char>(name.back()))) name.pop_back();
    if (parse_step_name(name) && is_complete(root / name)) return (root / name).string();
  }
  const auto all = complete_checkpoints(root);
  if (all.empty()) return std::nullopt;
  return all.back().second.string();
}

TrainState load_checkpoint(const std::string& path, model::CausalLM& model, torch::optim::Optimizer* optimizer) {
  const fs::path root(path);
  std::error_code ec;
  if (!fs::is_directory(root, ec)) fail(root, "no such checkpoint folder");

  // 1. state.json
  const fs::path state_path = root / "state.json";
  if (!fs::is_regular_file(state_path, ec)) fail(state_path, "missing");
  TrainState state;
  bool has_optimizer = false;
  try {
    const nlohmann::json j = nlohmann::json::parse(read_file(state_path.string()));
    if (j.value("format", 0) != kStateFormat) {
      fail(state_path, "unsupported format " + j.value("format", nlohmann::json()).dump() + ", expected " +
                           std::to_string(kStateFormat));
    }
    state.step = j.at("step").get<int64_t>();
    state.values = j.at("values").get<std::map<std::string, std::string>>();
    has_optimizer = j.at("optimizer").get<bool>();
  } catch (const nlohmann::json::exception& e) {
    fail(state_path, std::string("not a checkpoint state: ") + e.what());
  }

  // 2. rng.pt
  const fs::path rng_path = root / "rng.pt";
  if (!fs::is_regular_file(rng_path, ec)) fail(rng_path, "missing");
  RngState rng;
  try {
    rng = parse_rng_state(read_file(rng_path.string()));
  } catch (const std::exception& e) {
    fail(rng_path, one_line(e));
  }

  // 3. optimizer.pt, into a temporary AdamW over the same parameters.
  std::unique_ptr<torch::optim::AdamW> loaded;
  torch::optim::AdamW* adamw = nullptr;
  const fs::path optimizer_path = root / "optimizer.pt";
  if (optimizer != nullptr) {
    adamw = dynamic_cast<torch::optim::AdamW*>(optimizer);
    if (adamw == nullptr) fail(optimizer_path, "load_checkpoint restores AdamW optimizers only");
    if (!has_optimizer) fail(optimizer_path, "not saved (the checkpoint was written with save_optimizer: false)");
    if (!fs::is_regular_file(optimizer_path, ec)) fail(optimizer_path, "missing");
    std::vector<torch::optim::OptimizerParamGroup> groups;
    for (auto& g : adamw->param_groups()) groups.emplace_back(g.params(), g.options().clone());
    loaded = std::make_unique<torch::optim::AdamW>(std::move(groups),
                                                   static_cast<const torch::optim::AdamWOptions&>(adamw->defaults()));
    try {
      torch::serialize::InputArchive archive;
      archive.load_from(optimizer_path.string());
      loaded->load(archive);
    } catch (const std::exception& e) {
      fail(optimizer_path, "cannot read the optimizer state: " + one_line(e));
    }
    const auto& groups_now = loaded->param_groups();
    for (std::size_t g = 0; g < groups_now.size(); ++g) {
      const auto& params = groups_now[g].params();
      for (std::size_t i = 0; i < params.size(); ++i) {
        auto it = loaded->state().find(params[i].unsafeGetTensorImpl());
        if (it == loaded->state().end()) continue;
        const auto& s = static_cast<const torch::optim::AdamWParamState&>(*it->second);
        for (const torch::Tensor* t : {&s.exp_avg(), &s.exp_avg_sq()}) {
          if (!t->defined() || t->sizes() != params[i].sizes()) {
            fail(optimizer_path, "group " + std::to_string(g) + " parameter " + std::to_string(i) + " has shape " +
                                     c10::str(params[i].sizes()) + " but its saved moments have shape " +
                                     (t->defined() ? c10::str(t->sizes()) : std::string("(none)")));
          }
        }
      }
    }
  }

  // 4. The weights: load_hf_weights reads and checks every tensor before copying any.
  const fs::path model_path = root / "model";
  if (!fs::is_directory(model_path, ec)) fail(model_path, "missing");
  try {
    model::load_hf_weights(model, model_path.string());
  } catch (const std::exception& e) {
    const std::string what = one_line(e);
    if (what.find(model_path.string()) != std::string::npos) throw std::runtime_error(what);
    fail(model_path, what);
  }

  // 5. Nothing left can fail: apply the optimizer state and the RNG.
  if (adamw != nullptr) {
    adamw->state().clear();
    for (auto& [key, value] : loaded->state()) adamw->state()[key] = std::move(value);
    for (std::size_t g = 0; g < adamw->param_groups().size(); ++g) {
      adamw->param_groups()[g].set_options(loaded->param_groups()[g].options().clone());
    }
    // The moments belong on the parameters' device (a checkpoint written on GPU loads as saved).
    for (auto& group : adamw->param_groups()) {
      for (auto& p : group.params()) {
        auto it = adamw->state().find(p.unsafeGetTensorImpl());
        if (it == adamw->state().end()) continue;
        auto& s = static_cast<torch::optim::AdamWParamState&>(*it->second);
        s.exp_avg(s.exp_avg().to(p.device(), p.scalar_type()));
        s.exp_avg_sq(s.exp_avg_sq().to(p.device(), p.scalar_type()));
        if (s.max_exp_avg_sq().defined()) s.max_exp_avg_sq(s.max_exp_avg_sq().to(p.device(), p.scalar_type()));
      }
    }
  }
  apply_rng_state(rng);
  return state;
}

TrainState load_checkpoint(const std::string& path, model::CausalLM& model, dist::ShardedOptimizer& optimizer,
                           const OptimizerConfig& cfg) {
  const fs::path root(path);
  std::error_code ec;
  const fs::path shards = root / "optimizer";
  const fs::path single = root / "optimizer.pt";
  // A single-process optimizer.pt into an AdamW over every parameter: as before.
  dist::ExpertParallel* experts = optimizer.expert_parallel();
  const bool split = (experts != nullptr && experts->active()) || optimizer.fully_shard() != nullptr;
  if (!fs::is_directory(shards, ec) && !optimizer.zero1() && !split) {
    return load_checkpoint(path, model, &optimizer.adamw());
  }
  // Otherwise by parameter name: every shard there is (or optimizer.pt), checked before anything
  // changes.
  dist::NamedAdamStates states;
  std::string source;
  {
    const fs::path state_path = root / "state.json";
    if (!fs::is_regular_file(state_path, ec)) fail(state_path, "missing");
    bool has_optimizer = false;
    try {
      has_optimizer = nlohmann::json::parse(read_file(state_path.string())).at("optimizer").get<bool>();
    } catch (const nlohmann::json::exception& e) {
      fail(state_path, std::string("not a checkpoint state: ") + e.what());
    }
    if (!has_optimizer) fail(single, "not saved (the checkpoint was written with save_optimizer: false)");
  }
  // Expert parallel / full sharding: the checkpoint holds the whole model; the model takes it whole,
  // then each rank its part.
  std::optional<dist::WholeModel> whole;
  whole.emplace(optimizer);
  if (fs::is_directory(shards, ec)) {
    source = shards.string();
    std::vector<fs::path> files;
    for (const auto& entry : fs::directory_iterator(shards)) {
      if (entry.path().extension() == ".pt") files.push_back(entry.path());
    }
    std::sort(files.begin(), files.end());
    if (files.empty()) fail(shards, "no optimizer shards (rank_<r>.pt)");
    for (const auto& f : files) {
      for (auto& [name, st] : dist::load_adam_states(f.string())) states[name] = std::move(st);
    }
  } else {
    if (!fs::is_regular_file(single, ec)) fail(single, "missing");
    source = single.string();
    states = dist::load_legacy_adam_states(single.string(), *model, cfg);
  }
  TrainState state = load_checkpoint(path, model, nullptr);
  whole.reset();
  optimizer.load_states(states, source);
  return state;
}

namespace {

// What both resume_latest and both save_stage_checkpoint do around their load / save.
template <class Load>
std::optional<TrainState> resume_with(const std::string& dir, const std::string& stage, const Load& load) {
  const auto path = latest_checkpoint(dir);
  if (!path) {
    log::info("{}: --resume: no checkpoint in {}, starting at step 0", stage, dir);
    return std::nullopt;
  }
  TrainState st = load(*path);
  log::info("{}: resumed from {} at step {}", stage, *path, st.step);
  return st;
}

template <class Save>
std::string save_stage_with(int64_t step, TrainState state, const std::string& stage, const Save& save) {
  state.step = step;
  state.values["stage"] = stage;
  const auto path = save(state);
  log::info("{}: checkpoint {}", stage, path);
  return path;
}

}  // namespace

std::optional<TrainState> resume_latest(const std::string& dir, model::CausalLM& model,
                                        dist::ShardedOptimizer& optimizer, const OptimizerConfig& cfg,
                                        const std::string& stage) {
  return resume_with(dir, stage, [&](const std::string& path) { return load_checkpoint(path, model, optimizer, cfg); });
}

std::string save_stage_checkpoint(const std::string& dir, int64_t step, model::CausalLM& model,
                                  dist::ShardedOptimizer& optimizer, TrainState state, const CheckpointConfig& cfg,
                                  const std::string& stage) {
  return save_stage_with(step, std::move(state), stage,
                         [&](const TrainState& st) { return save_checkpoint(dir, step, model, optimizer, st, cfg); });
}

std::optional<TrainState> resume_latest(const std::string& dir, model::CausalLM& model,
                                        torch::optim::Optimizer* optimizer, const std::string& stage) {
  return resume_with(dir, stage, [&](const std::string& path) { return load_checkpoint(path, model, optimizer); });
}

std::string save_stage_checkpoint(const std::string& dir, int64_t step, model::CausalLM& model,
                                  torch::optim::Optimizer* optimizer, TrainState state, const CheckpointConfig& cfg,
                                  const std::string& stage) {
  return save_stage_with(step, std::move(state), stage,
                         [&](const TrainState& st) { return save_checkpoint(dir, step, model, optimizer, st, cfg); });
}

}  // namespace grpo::train
