// A shared library that is not a reward plugin: it exports a function, but not the entry point.
extern "C" __attribute__((visibility("default"))) int grpo_not_a_reward_plugin(void) { return 42; }
