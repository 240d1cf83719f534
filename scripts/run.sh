#!/usr/bin/env bash
# The main job: set-up (idempotent), build, and run the default example pipeline on CPU.
# Extra arguments go to the program (e.g. --set train.steps=500).
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

grpo_setup || exit 1
grpo_configure || exit 1
grpo_build char_lm || { grpo_say "build failed"; exit 1; }
cd "$GRPO_ROOT" && exec "$GRPO_BUILD_DIR/examples/char_lm" --config configs/char_lm.yaml "$@"
