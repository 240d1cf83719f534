// A hand-written entry point whose descriptor is wrong in one way, as a plugin built against another
// grpo would be. Compiled several times, each with one of:
//   GRPO_TEST_OTHER_ABI       abi_version = GRPO_REWARD_PLUGIN_ABI_VERSION + 1 (and garbage after it)
//   GRPO_TEST_OTHER_SAMPLE    sizeof_sample off by 8
//   GRPO_TEST_NULL_DESCRIPTOR the entry returns null
#include <grpo/rewards/plugin.h>

#if defined(GRPO_TEST_OTHER_SAMPLE)
namespace {

int register_nothing(void*, char*, size_t) { return 0; }

}  // namespace
#endif

extern "C" GRPO_REWARD_PLUGIN_EXPORT const grpo_reward_plugin* grpo_reward_plugin_entry(void) {
#if defined(GRPO_TEST_NULL_DESCRIPTOR)
  return nullptr;
#else
  static const grpo_reward_plugin plugin = {
#if defined(GRPO_TEST_OTHER_ABI)
    GRPO_REWARD_PLUGIN_ABI_VERSION + 1,
    0xdeadbeef,  // a later ABI may lay the rest out differently: the loader must not read it
    0,
    nullptr,
    nullptr,
    nullptr,
#else
    GRPO_REWARD_PLUGIN_ABI_VERSION,
    GRPO_REWARD_PLUGIN_CXX11_ABI,
    static_cast<uint32_t>(sizeof(grpo::rewards::Sample) + 8),
    "9.9.9",
    "other_sample",
    &register_nothing,
#endif
  };
  return &plugin;
#endif
}
