# Shared training machinery: AdamW groups and clipping, learning-rate schedules (against HF
# transformers' values), atomic checkpoints and bit-exact resume.
grpo_add_test(grpo_train_tests
  train/test_optimizer.cpp
  train/test_schedule.cpp
  train/test_train_state.cpp)
target_precompile_headers(grpo_train_tests PRIVATE "${PROJECT_SOURCE_DIR}/src/pch.h")

# The trainers themselves on a tiny model: batching, loss masks, metrics, checkpoints, resume; the
# phases of the GRPO step and the scored rollouts they share with evaluation and distillation.
grpo_add_test(grpo_trainer_tests train/test_trainers.cpp train/test_golden.cpp train/test_grpo_step.cpp
  train/test_scored_rollouts.cpp train/test_router_replay.cpp train/test_async_rollouts.cpp)
target_precompile_headers(grpo_trainer_tests REUSE_FROM grpo_train_tests)

# Rejection-sampling trace generation (distillation data): parser, keep rules, resumable JSONL.
grpo_add_test(grpo_rejection_sampling_tests train/test_rejection_sampling.cpp)
target_precompile_headers(grpo_rejection_sampling_tests REUSE_FROM grpo_train_tests)

# Logit distillation (the trainer) and the stage ledger of the multi-stage programs.
grpo_add_test(grpo_distill_tests train/test_distill_trainer.cpp train/test_stage_ledger.cpp)
target_precompile_headers(grpo_distill_tests REUSE_FROM grpo_train_tests)
