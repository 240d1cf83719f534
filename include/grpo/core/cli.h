// Command-line arguments shared by every grpo program that runs from a YAML config:
//   PROGRAM [--config FILE] [--set key.path=value]... [--resume] [--print-config] [--help]
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace grpo::cli {

struct JobArgs {
  std::optional<std::string> config_path;  // --config FILE (a program may supply a default)
  std::vector<std::string> overrides;      // each --set key=value, in order
  bool print_config = false;               // --print-config: print the effective config and exit
  bool resume = false;                     // --resume: continue from the run folder's last checkpoint
  bool help = false;                       // --help / -h
};

// Parses argv[1..]. Accepts "--config F", "--config=F", "--set k=v", "--set=k=v". Throws
// std::invalid_argument naming the argument for anything else or a flag missing its value.
JobArgs parse_job_args(int argc, const char* const argv[]);

// The usage text for a program: "usage: PROGRAM [--config FILE] ...", then `description`.
std::string job_usage(std::string_view program, std::string_view description);

}  // namespace grpo::cli
