// Precompiled header for grpo's torch translation units (see CMakeLists.txt). Only stable,
// heavy third-party headers belong here.
#pragma once

#include <ATen/ATen.h>
#include <torch/torch.h>
