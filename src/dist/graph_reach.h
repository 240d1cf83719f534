// Internal: which gradient accumulators a loss's graph reaches (as DDP's find_unused_parameters
// finds them), for GradSync and FullyShard.
#pragma once

#include <torch/csrc/autograd/function.h>
#include <torch/torch.h>

#include <cstddef>
#include <unordered_map>
#include <unordered_set>
#include <vector>

namespace grpo::dist::detail {

// reached[index_of[node]] = 1 for every accumulator node in `index_of` that loss's graph reaches;
// `count` entries, all 0 for a loss without a graph.
template <class Index>
std::vector<char> reached_accumulators(const torch::Tensor& loss,
                                       const std::unordered_map<const torch::autograd::Node*, Index>& index_of,
                                       size_t count) {
  std::vector<char> reached(count, 0);
  if (!loss.defined() || !loss.grad_fn()) return reached;
  std::unordered_set<const torch::autograd::Node*> seen;
  std::vector<torch::autograd::Node*> stack = {loss.grad_fn().get()};
  while (!stack.empty()) {
    auto* node = stack.back();
    stack.pop_back();
    if (node == nullptr || !seen.insert(node).second) continue;
    if (const auto it = index_of.find(node); it != index_of.end()) reached[static_cast<size_t>(it->second)] = 1;
    for (const auto& edge : node->next_edges()) stack.push_back(edge.function.get());
  }
  return reached;
}

}  // namespace grpo::dist::detail
