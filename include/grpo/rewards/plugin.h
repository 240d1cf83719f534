// Reward plugins: reward functions in a shared library that grpo loads with dlopen, without being
// rebuilt. A plugin exports ONE C function, grpo_reward_plugin_entry, returning a static descriptor:
// the ABI it was built for, checked before anything else, and a function that registers its rewards.
//
// Writing one (link it against grpo::grpo as a MODULE library; see examples/reward_plugin/):
//
//   #include <grpo/rewards/plugin.h>
//   GRPO_REWARD_PLUGIN("my_plugin", registry) {
//     registry.add("my_reward", [](const grpo::config::Value& options) {
//       return std::make_unique<MyReward>(grpo::config::from_value<MyConfig>(
//           options.is_null() ? grpo::config::Value::make_map(options.loc) : options));
//     });
//   }
//
// Loading one: load_reward_plugin("/path/libmy_plugin.so") registers its functions in the global
// registry; the YAML names them like the built-ins. Exceptions thrown while registering are caught
// in the plugin and returned as text: they never cross the C boundary.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <string>
#include <vector>

#include "grpo/rewards/reward.h"
#include "grpo/version.h"

// Bumped whenever the descriptor below, Sample, RewardBatch, RewardFunction or RewardRegistry change
// in a way that breaks plugins built before.
#define GRPO_REWARD_PLUGIN_ABI_VERSION 1

// The one symbol a plugin exports, as the loader looks it up.
#define GRPO_REWARD_PLUGIN_ENTRY_SYMBOL "grpo_reward_plugin_entry"

#define GRPO_REWARD_PLUGIN_EXPORT __attribute__((visibility("default")))

// The standard library's C++ ABI the including code is compiled with: _GLIBCXX_USE_CXX11_ABI (0 or 1)
// for libstdc++, 2 for any other standard library.
#if defined(_GLIBCXX_USE_CXX11_ABI)
#define GRPO_REWARD_PLUGIN_CXX11_ABI _GLIBCXX_USE_CXX11_ABI
#else
#define GRPO_REWARD_PLUGIN_CXX11_ABI 2
#endif

extern "C" {

// What a plugin tells the loader about itself. `abi_version` stays the first member in every ABI
// version, so that any loader can read it before trusting the rest of the layout.
struct grpo_reward_plugin {
  uint32_t abi_version;      // GRPO_REWARD_PLUGIN_ABI_VERSION the plugin was compiled with
  uint32_t cxx11_abi;        // GRPO_REWARD_PLUGIN_CXX11_ABI of the plugin's compiler
  uint32_t sizeof_sample;    // sizeof(grpo::rewards::Sample) in the plugin: a cheap check of the headers
  const char* grpo_version;  // GRPO_VERSION_STRING of the grpo headers, e.g. "0.1.0"
  const char* name;          // the plugin's name, for messages, e.g. "example"
  // Registers the plugin's functions into `registry` (a grpo::rewards::RewardRegistry*). Returns 0 on
  // success; otherwise writes a NUL-terminated one-line message into `error` (at most `error_size`
  // bytes) and returns non-zero. Must not throw.
  int (*register_rewards)(void* registry, char* error, size_t error_size);
};

// The entry point every plugin defines (GRPO_REWARD_PLUGIN writes it): returns a descriptor that
// lives as long as the library.
GRPO_REWARD_PLUGIN_EXPORT const grpo_reward_plugin* grpo_reward_plugin_entry(void);

}  // extern "C"

namespace grpo::rewards {

// What load_reward_plugin loaded.
struct PluginInfo {
  std::string path;                    // the path as given
  std::string name;                    // the plugin's own name (its descriptor's `name`)
  std::string grpo_version;            // the grpo version its headers came from
  std::vector<std::string> functions;  // the reward functions it registered, sorted
};

// Loads the plugin at `path` (a file path, taken as given; one without a '/' is read as "./path",
// never searched in the library path) and registers its functions in `registry`. The library is
// never unloaded once registered. Loading the same file (same device and inode) again into the same
// registry returns the first PluginInfo and registers nothing. Registration is all or nothing: the
// plugin registers into a scratch registry, and its functions move to `registry` only when none of
// their names is taken. Thread-safe with respect to other calls of this function.
//
// Throws std::runtime_error, one line naming the path and the reason: the file is missing or not a
// loadable library (with dlerror's text), it exports no grpo_reward_plugin_entry, it was built for
// another plugin ABI, C++ ABI or Sample layout (rebuild it against this grpo), its registration
// failed (with its message), it registered nothing, or a name clashes with a registered function.
PluginInfo load_reward_plugin(const std::string& path, RewardRegistry& registry = RewardRegistry::global());

namespace plugin_detail {

// Copies `message` into `error` (truncated, NUL-terminated) for the C boundary.
inline void copy_error(const char* message, char* error, size_t error_size) {
  if (error == nullptr || error_size == 0) return;
  std::snprintf(error, error_size, "%s", message);
}

// Runs `body` on the registry behind `registry`, turning any exception into an error message.
template <class Body>
int register_rewards_guarded(Body body, void* registry, char* error, size_t error_size) noexcept {
  try {
    body(*static_cast<RewardRegistry*>(registry));
    return 0;
  } catch (const std::exception& e) {
    copy_error(e.what(), error, error_size);
  } catch (...) {
    copy_error("an exception that is not a std::exception", error, error_size);
  }
  return 1;
}

}  // namespace plugin_detail
}  // namespace grpo::rewards

// Defines the plugin's entry point; the braces that follow are the body of its registration, with
// `registry_var` a grpo::rewards::RewardRegistry&. Use it once per plugin, at namespace scope.
#define GRPO_REWARD_PLUGIN(plugin_name, registry_var)                                                            \
  static void grpo_reward_plugin_register_body(::grpo::rewards::RewardRegistry& registry_var);                   \
  static int grpo_reward_plugin_register_c(void* registry, char* error, size_t error_size) {                     \
    return ::grpo::rewards::plugin_detail::register_rewards_guarded(&grpo_reward_plugin_register_body, registry, \
                                                                    error, error_size);                          \
  }                                                                                                              \
  extern "C" GRPO_REWARD_PLUGIN_EXPORT const grpo_reward_plugin* grpo_reward_plugin_entry(void) {                \
    static const grpo_reward_plugin plugin = {                                                                   \
        GRPO_REWARD_PLUGIN_ABI_VERSION,                                                                          \
        GRPO_REWARD_PLUGIN_CXX11_ABI,                                                                            \
        static_cast<uint32_t>(sizeof(::grpo::rewards::Sample)),                                                  \
        GRPO_VERSION_STRING,                                                                                     \
        plugin_name,                                                                                             \
        &grpo_reward_plugin_register_c,                                                                          \
    };                                                                                                           \
    return &plugin;                                                                                              \
  }                                                                                                              \
  static void grpo_reward_plugin_register_body(::grpo::rewards::RewardRegistry& registry_var)
