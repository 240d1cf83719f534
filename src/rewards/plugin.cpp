#include "grpo/rewards/plugin.h"

#include <dlfcn.h>
#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <tuple>

namespace grpo::rewards {

namespace {

// One line: plugin messages and dlerror() text must not break a log line.
std::string one_line(std::string text) {
  std::replace(text.begin(), text.end(), '\n', ' ');
  std::replace(text.begin(), text.end(), '\r', ' ');
  return text;
}

std::string rebuild_hint() { return "rebuild it against grpo " GRPO_VERSION_STRING; }

// The plugins loaded so far, per registry and file, so that loading one twice registers it once.
struct LoadedKey {
  const RewardRegistry* registry;
  dev_t device;
  ino_t inode;
  auto operator<=>(const LoadedKey&) const = default;
};

std::mutex& loaded_mutex() {
  static std::mutex mutex;
  return mutex;
}

std::map<LoadedKey, PluginInfo>& loaded_plugins() {
  static auto* loaded = new std::map<LoadedKey, PluginInfo>();
  return *loaded;
}

bool registry_has(const RewardRegistry& registry, const std::string& name) {
  const auto names = registry.names();
  return std::find(names.begin(), names.end(), name) != names.end();
}

// Closes a library that registered nothing, so that a failed load leaves nothing behind.
struct HandleGuard {
  void* handle;
  ~HandleGuard() {
    if (handle != nullptr) dlclose(handle);
  }
};

}  // namespace

PluginInfo load_reward_plugin(const std::string& path, RewardRegistry& registry) {
  const std::string quoted = "'" + path + "'";
  struct stat file = {};
  if (::stat(path.c_str(), &file) != 0) {
    throw std::runtime_error("cannot load reward plugin " + quoted + ": " + std::strerror(errno));
  }
  if (!S_ISREG(file.st_mode)) {
    throw std::runtime_error("cannot load reward plugin " + quoted + ": not a regular file");
  }

  std::lock_guard<std::mutex> lock(loaded_mutex());
  const LoadedKey key{&registry, file.st_dev, file.st_ino};
  if (const auto it = loaded_plugins().find(key); it != loaded_plugins().end()) {
    // The same registry object again, unless a new registry took the old one's address: then its
    // functions are missing and the plugin is registered anew.
    const auto& functions = it->second.functions;
    if (std::all_of(functions.begin(), functions.end(),
                    [&](const std::string& name) { return registry_has(registry, name); })) {
      return it->second;
    }
    loaded_plugins().erase(it);
  }

  // A name without '/' would be searched in the library path; a plugin path is always a file.
  const std::string open_path = path.find('/') == std::string::npos ? "./" + path : path;
  dlerror();
  HandleGuard library{dlopen(open_path.c_str(), RTLD_NOW | RTLD_LOCAL)};
  if (library.handle == nullptr) {
    const char* error = dlerror();
    std::string why = error != nullptr ? error : "dlopen failed";
    // dlerror starts with the path ("p: invalid ELF header"), which the message already names.
    if (why.starts_with(open_path + ": ")) why.erase(0, open_path.size() + 2);
    throw std::runtime_error("cannot load reward plugin " + quoted + ": " + one_line(why));
  }
  using Entry = const grpo_reward_plugin* (*)();
  dlerror();
  const auto entry = reinterpret_cast<Entry>(dlsym(library.handle, GRPO_REWARD_PLUGIN_ENTRY_SYMBOL));
  if (entry == nullptr) {
    throw std::runtime_error("reward plugin " + quoted +
                             " is not a grpo reward plugin: it does not export " GRPO_REWARD_PLUGIN_ENTRY_SYMBOL);
  }
  const grpo_reward_plugin* plugin = entry();
  if (plugin == nullptr) {
    throw std::runtime_error("reward plugin " + quoted + ": " GRPO_REWARD_PLUGIN_ENTRY_SYMBOL " returned null");
  }
  // abi_version first: the rest of the layout is only known when it matches.
  if (plugin->abi_version != GRPO_REWARD_PLUGIN_ABI_VERSION) {
    throw std::runtime_error("reward plugin " + quoted + " was built for grpo reward plugin ABI " +
                             std::to_string(plugin->abi_version) + ", this grpo has ABI " +
                             std::to_string(GRPO_REWARD_PLUGIN_ABI_VERSION) + ": " + rebuild_hint());
  }
  const std::string built_with = plugin->grpo_version != nullptr
                                     ? std::string(" (built with grpo ") + plugin->grpo_version + ")"
                                     : "";
  if (plugin->cxx11_abi != GRPO_REWARD_PLUGIN_CXX11_ABI) {
    throw std::runtime_error("reward plugin " + quoted + built_with +
                             " was compiled with _GLIBCXX_USE_CXX11_ABI=" + std::to_string(plugin->cxx11_abi) +
                             ", this grpo with _GLIBCXX_USE_CXX11_ABI=" + std::to_string(GRPO_REWARD_PLUGIN_CXX11_ABI) +
                             ": " + rebuild_hint() + " with the same compiler");
  }
  if (plugin->sizeof_sample != sizeof(Sample)) {
    throw std::runtime_error("reward plugin " + quoted + built_with +
                             " has sizeof(grpo::rewards::Sample) = " + std::to_string(plugin->sizeof_sample) +
                             ", this grpo has " + std::to_string(sizeof(Sample)) + ": " + rebuild_hint());
  }
  if (plugin->register_rewards == nullptr) {
    throw std::runtime_error("reward plugin " + quoted + ": its descriptor has no register_rewards function");
  }

  PluginInfo info;
  info.path = path;
  info.name = plugin->name != nullptr ? plugin->name : "";
  info.grpo_version = plugin->grpo_version != nullptr ? plugin->grpo_version : "";
  const std::string label = "reward plugin " + quoted + (info.name.empty() ? "" : " (" + info.name + ")");

  // Into a scratch registry first: a plugin that fails halfway leaves nothing in `registry`.
  auto scratch = std::make_shared<RewardRegistry>();
  char error[4096] = {};
  if (plugin->register_rewards(scratch.get(), error, sizeof(error)) != 0) {
    throw std::runtime_error(label +
                             " failed to register its rewards: " + one_line(error[0] != '\0' ? error : "no message"));
  }
  info.functions = scratch->names();
  if (info.functions.empty()) throw std::runtime_error(label + " registered no reward functions");
  for (const auto& name : info.functions) {
    if (registry_has(registry, name)) {
      throw std::runtime_error(label + " registers reward function '" + name +
                               "', which is already registered: rename it in the plugin");
    }
  }
  // The scratch registry's factories stay where they are; the target forwards to them.
  for (const auto& name : info.functions) {
    registry.add(name, [scratch, name](const config::Value& options) { return scratch->create(name, options); });
  }
  library.handle = nullptr;  // its code now lives in `registry`: never unloaded
  loaded_plugins().emplace(key, info);
  return info;
}

}  // namespace grpo::rewards
