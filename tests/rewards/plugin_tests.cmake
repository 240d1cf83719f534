# Reward plugins: the example plugin (examples/reward_plugin, when examples are built) and test
# plugins that are wrong in one way each. The test binary gets their paths as compile definitions.
set(GRPO_TEST_PLUGIN_DIR "${CMAKE_CURRENT_BINARY_DIR}/plugins")

# grpo_add_test_plugin(NAME SOURCE [DEFINITIONS...]): a MODULE library lib<NAME>.so.
function(grpo_add_test_plugin name source)
  add_library(${name} MODULE ${source})
  target_link_libraries(${name} PRIVATE grpo::grpo)
  target_compile_options(${name} PRIVATE -Wall -Wextra)
  target_compile_definitions(${name} PRIVATE ${ARGN})
  set_target_properties(${name} PROPERTIES PREFIX "lib" LIBRARY_OUTPUT_DIRECTORY "${GRPO_TEST_PLUGIN_DIR}")
endfunction()

grpo_add_test_plugin(grpo_test_plugin_other_abi rewards/plugins/other_abi_plugin.cpp GRPO_TEST_OTHER_ABI)
grpo_add_test_plugin(grpo_test_plugin_other_sample rewards/plugins/other_abi_plugin.cpp GRPO_TEST_OTHER_SAMPLE)
grpo_add_test_plugin(grpo_test_plugin_null_entry rewards/plugins/other_abi_plugin.cpp GRPO_TEST_NULL_DESCRIPTOR)
grpo_add_test_plugin(grpo_test_plugin_throwing rewards/plugins/throwing_plugin.cpp)
grpo_add_test_plugin(grpo_test_plugin_failing_register rewards/plugins/failing_register_plugin.cpp)
grpo_add_test_plugin(grpo_test_plugin_clash rewards/plugins/clash_plugin.cpp)
grpo_add_test_plugin(grpo_test_plugin_no_entry rewards/plugins/no_entry_plugin.cpp)

grpo_add_test(grpo_rewards_plugin_tests rewards/test_plugin.cpp)
set(GRPO_TEST_PLUGINS other_abi other_sample null_entry throwing failing_register clash no_entry)
foreach(plugin IN LISTS GRPO_TEST_PLUGINS)
  string(TOUPPER "${plugin}" upper)
  target_compile_definitions(grpo_rewards_plugin_tests PRIVATE
    GRPO_TEST_PLUGIN_${upper}="$<TARGET_FILE:grpo_test_plugin_${plugin}>")
  add_dependencies(grpo_rewards_plugin_tests grpo_test_plugin_${plugin})
endforeach()
if(TARGET grpo_example_reward_plugin)
  target_compile_definitions(grpo_rewards_plugin_tests PRIVATE
    GRPO_EXAMPLE_PLUGIN="$<TARGET_FILE:grpo_example_reward_plugin>")
  add_dependencies(grpo_rewards_plugin_tests grpo_example_reward_plugin)
endif()
