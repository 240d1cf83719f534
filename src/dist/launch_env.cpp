#include "grpo/dist/launch_env.h"

#include <cstdlib>
#include <mutex>
#include <optional>
#include <stdexcept>

namespace grpo::dist {

namespace {

std::optional<std::string> value(const std::function<const char*(const char*)>& get, const char* name) {
  const char* v = get(name);
  if (v == nullptr || *v == '\0') return std::nullopt;
  return std::string(v);
}

int64_t parse_int(const std::string& text, const char* name, int64_t min) {
  size_t used = 0;
  int64_t v = 0;
  try {
    v = std::stoll(text, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used != text.size() || text.empty() || v < min) {
    throw std::invalid_argument(std::string("environment variable ") + name + "='" + text +
                                "': expected an integer >= " + std::to_string(min));
  }
  return v;
}

// SLURM_NTASKS_PER_NODE / SLURM_TASKS_PER_NODE look like "4" or "4(x2),3": the first count.
std::optional<int64_t> slurm_tasks_per_node(const std::function<const char*(const char*)>& get) {
  for (const char* name : {"SLURM_NTASKS_PER_NODE", "SLURM_TASKS_PER_NODE"}) {
    if (auto v = value(get, name)) {
      const auto end = v->find_first_not_of("0123456789");
      return parse_int(v->substr(0, end), name, 1);
    }
  }
  return std::nullopt;
}

DistConfig& stored_config() {
  static DistConfig cfg;
  return cfg;
}

}  // namespace

LaunchEnv launch_env_from(const std::function<const char*(const char*)>& get) {
  LaunchEnv env;
  const char *rank_var = "RANK", *size_var = "WORLD_SIZE", *local_var = "LOCAL_RANK",
             *local_size_var = "LOCAL_WORLD_SIZE";
  if (value(get, "WORLD_SIZE") || value(get, "RANK")) {
    env.source = "torchrun";
    if (!value(get, "WORLD_SIZE") || !value(get, "RANK")) {
      throw std::invalid_argument("environment: RANK and WORLD_SIZE must be set together (found only " +
                                  std::string(value(get, "RANK") ? "RANK" : "WORLD_SIZE") + ")");
    }
    env.rank = parse_int(*value(get, rank_var), rank_var, 0);
    env.world_size = parse_int(*value(get, size_var), size_var, 1);
    env.local_rank = value(get, local_var) ? parse_int(*value(get, local_var), local_var, 0) : env.rank;
    env.local_world_size = value(get, local_size_var) ? parse_int(*value(get, local_size_var), local_size_var, 1)
                                                      : env.world_size;
  } else if (value(get, "SLURM_PROCID") && value(get, "SLURM_NTASKS")) {
    env.source = "slurm";
    rank_var = "SLURM_PROCID";
    size_var = "SLURM_NTASKS";
    local_var = "SLURM_LOCALID";
    local_size_var = "SLURM_NTASKS_PER_NODE";
    env.rank = parse_int(*value(get, rank_var), rank_var, 0);
    env.world_size = parse_int(*value(get, size_var), size_var, 1);
    env.local_rank = value(get, local_var) ? parse_int(*value(get, local_var), local_var, 0) : 0;
    env.local_world_size = slurm_tasks_per_node(get).value_or(env.world_size);
  } else {
    return env;
  }
  if (env.rank >= env.world_size) {
    throw std::invalid_argument(std::string("environment: ") + rank_var + "=" + std::to_string(env.rank) +
                                " is not below " + size_var + "=" + std::to_string(env.world_size));
  }
  if (env.local_rank >= env.local_world_size) {
    throw std::invalid_argument(std::string("environment: ") + local_var + "=" + std::to_string(env.local_rank) +
                                " is not below " + local_size_var + "=" + std::to_string(env.local_world_size));
  }
  if (const auto addr = value(get, "MASTER_ADDR")) {
    env.master_addr = *addr;
  } else if (env.source == "slurm" && env.world_size > 1) {
    throw std::invalid_argument(
        "environment: a Slurm job of " + std::to_string(env.world_size) +
        " tasks needs MASTER_ADDR (e.g. export MASTER_ADDR=$(scontrol show hostnames $SLURM_JOB_NODELIST | head -n1))");
  }
  if (const auto port = value(get, "MASTER_PORT")) {
    env.master_port = parse_int(*port, "MASTER_PORT", 1);
    if (env.master_port > 65535) {
      throw std::invalid_argument("environment variable MASTER_PORT='" + *port + "': expected a port in 1..65535");
    }
  }
  return env;
}

const LaunchEnv& launch_env() {
  static const LaunchEnv env = launch_env_from([](const char* name) { return std::getenv(name); });
  return env;
}

bool is_main_process() { return launch_env().rank == 0; }

void set_config(const DistConfig& cfg) { stored_config() = cfg; }
const DistConfig& config() { return stored_config(); }

}  // namespace grpo::dist
