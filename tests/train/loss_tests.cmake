# The GRPO loss: hand-computed unit tests, and parity with TRL's GRPOTrainer (trl_oracle.py runs
# TRL's own trainer on a tiny Qwen2 for a grid of configurations and saves loss, advantages,
# log-probs and every gradient; the gtest TrlOracle must reproduce them).
grpo_add_test(grpo_train_loss_tests train/test_grpo_loss.cpp train/test_trl_parity.cpp)
target_precompile_headers(grpo_train_loss_tests REUSE_FROM grpo_model_tests)

if(GRPO_PYTHON)
  set(GRPO_TRL_ORACLE_DIR "${CMAKE_CURRENT_BINARY_DIR}/trl_oracle")
  add_test(NAME trl_oracle_generate
           COMMAND "${GRPO_PYTHON}" "${CMAKE_CURRENT_SOURCE_DIR}/train/trl_oracle.py"
                   generate "${GRPO_TRL_ORACLE_DIR}")
  add_test(NAME trl_oracle_cpp COMMAND grpo_train_loss_tests --gtest_filter=TrlOracle.*)
  set_tests_properties(trl_oracle_generate PROPERTIES FIXTURES_SETUP trl_oracle TIMEOUT 600)
  set_tests_properties(trl_oracle_cpp PROPERTIES
    FIXTURES_REQUIRED trl_oracle
    ENVIRONMENT "GRPO_TRL_ORACLE_DIR=${GRPO_TRL_ORACLE_DIR}"
    FAIL_REGULAR_EXPRESSION "\\[  SKIPPED \\]|\\[  PASSED  \\] 0 tests")
endif()

# Distillation divergences (forward KL, reverse KL, generalized JSD): hand-computed values, the
# chunked path against the plain formula, and parity with TRL's GKDTrainer.generalized_jsd_loss
# (gkd_oracle.py calls it on fixed random inputs; the gtest GkdOracle must reproduce loss and grads).
grpo_add_test(grpo_train_distill_tests train/test_distill_loss.cpp)
target_precompile_headers(grpo_train_distill_tests REUSE_FROM grpo_model_tests)

if(GRPO_PYTHON)
  set(GRPO_GKD_ORACLE_DIR "${CMAKE_CURRENT_BINARY_DIR}/gkd_oracle")
  add_test(NAME gkd_oracle_generate
           COMMAND "${GRPO_PYTHON}" "${CMAKE_CURRENT_SOURCE_DIR}/train/gkd_oracle.py"
                   generate "${GRPO_GKD_ORACLE_DIR}")
  add_test(NAME gkd_oracle_cpp COMMAND grpo_train_distill_tests --gtest_filter=GkdOracle.*)
  set_tests_properties(gkd_oracle_generate PROPERTIES FIXTURES_SETUP gkd_oracle TIMEOUT 300)
  set_tests_properties(gkd_oracle_cpp PROPERTIES
    FIXTURES_REQUIRED gkd_oracle
    ENVIRONMENT "GRPO_GKD_ORACLE_DIR=${GRPO_GKD_ORACLE_DIR}"
    FAIL_REGULAR_EXPRESSION "\\[  SKIPPED \\]|\\[  PASSED  \\] 0 tests")
endif()
