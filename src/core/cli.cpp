#include "grpo/core/cli.h"

#include <stdexcept>

namespace grpo::cli {

JobArgs parse_job_args(int argc, const char* const argv[]) {
  JobArgs args;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value_of = [&](std::string_view flag) -> std::string {
      if (a.size() > flag.size() && a.compare(0, flag.size(), flag) == 0 && a[flag.size()] == '=') {
        return a.substr(flag.size() + 1);
      }
      if (i + 1 >= argc) throw std::invalid_argument(std::string(flag) + " needs a value");
      return argv[++i];
    };
    auto is_flag = [&](std::string_view flag) {
      return a == flag || (a.size() > flag.size() && a.compare(0, flag.size(), flag) == 0 && a[flag.size()] == '=');
    };
    if (is_flag("--config")) {
      if (args.config_path) throw std::invalid_argument("--config given twice");
      args.config_path = value_of("--config");
    } else if (is_flag("--set")) {
      args.overrides.push_back(value_of("--set"));
    } else if (a == "--print-config") {
      args.print_config = true;
    } else if (a == "--resume") {
      args.resume = true;
    } else if (a == "--help" || a == "-h") {
      args.help = true;
    } else {
      throw std::invalid_argument("unknown argument '" + a +
                                  "' (expected --config FILE, --set key=value, --resume, --print-config or --help)");
    }
  }
  return args;
}

std::string job_usage(std::string_view program, std::string_view description) {
  std::string s = "usage: ";
  s.append(program);
  s += " [--config FILE] [--set key.path=value]... [--resume] [--print-config] [--help]\n";
  if (!description.empty()) {
    s += '\n';
    s.append(description);
    s += '\n';
  }
  s += "\n  --config FILE      YAML configuration (see docs/config.md)\n"
       "  --set key=value    override one key, e.g. --set run.seed=7 (repeatable)\n"
       "  --resume           continue from the run folder's last checkpoint\n"
       "  --print-config     print the effective configuration and exit\n"
       "  --help             this text\n";
  return s;
}

}  // namespace grpo::cli
