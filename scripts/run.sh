#!/usr/bin/env bash
# The main job: set-up (idempotent), build, and run the R1 pipeline (cold-start SFT, GRPO, rejection
# sampling + SFT, GRPO, distillation into a dense student, and the student's raw-data baseline) on
# its built-in default (configs/r1_pipeline.yaml) on CPU. Run again, it skips the stages finished in
# runs/r1_pipeline (stages/*.json). Extra arguments go to the program (e.g. --set run.seed=2,
# --set run.output_dir=runs/seed2, --resume).
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

grpo_setup || exit 1
grpo_configure || exit 1
grpo_build r1_pipeline || { grpo_say "build failed"; exit 1; }
cd "$GRPO_ROOT" && exec "$GRPO_BUILD_DIR/examples/r1_pipeline" "$@"
