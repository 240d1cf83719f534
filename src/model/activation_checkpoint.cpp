#include "grpo/model/activation_checkpoint.h"

#include <torch/autograd.h>
#include <torch/custom_class.h>

namespace grpo::model {
namespace {

thread_local int recompute_depth = 0;

struct RecomputeScope {
  RecomputeScope() { ++recompute_depth; }
  ~RecomputeScope() { --recompute_depth; }
  RecomputeScope(const RecomputeScope&) = delete;
  RecomputeScope& operator=(const RecomputeScope&) = delete;
};

// The function travels through the autograd context as an opaque capsule.
struct FnHolder : torch::CustomClassHolder {
  FnHolder(CheckpointFn f, size_t inputs) : fn(std::move(f)), num_inputs(inputs) {}
  CheckpointFn fn;
  size_t num_inputs;  // tensors [0, num_inputs) are fn's inputs, the rest its parameters
};

struct CheckpointFunction : torch::autograd::Function<CheckpointFunction> {
  // Runs with gradients off (autograd's rule for custom forwards): nothing inside fn is recorded.
  // tensors: fn's inputs, then its parameters.
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, at::TensorList tensors,
                                                c10::IValue holder) {
    const auto* h = static_cast<FnHolder*>(holder.toCapsule().get());
    ctx->save_for_backward(std::vector<torch::Tensor>(tensors.begin(), tensors.end()));
    ctx->saved_data["fn"] = holder;
    auto outputs = h->fn(std::vector<torch::Tensor>(tensors.begin(), tensors.begin() + h->num_inputs));
    for (size_t i = 0; i < outputs.size(); ++i) {
      TORCH_CHECK(outputs[i].defined(), "checkpoint: the function's output ", i, " is undefined");
    }
    return outputs;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    const auto holder = ctx->saved_data["fn"].toCapsule();
    const auto* h = static_cast<FnHolder*>(holder.get());
    const auto saved = ctx->get_saved_variables();
    std::vector<torch::Tensor> inputs;
    for (size_t i = 0; i < h->num_inputs; ++i) {
      inputs.push_back(saved[i].detach().requires_grad_(saved[i].requires_grad()));
    }

    std::vector<torch::Tensor> outputs;
    {
      torch::AutoGradMode grad_on(true);
      RecomputeScope scope;
      outputs = h->fn(inputs);
    }
    TORCH_CHECK(outputs.size() == grad_outputs.size(), "checkpoint: the recomputation returned ", outputs.size(),
                " outputs, the first run ", grad_outputs.size());
    std::vector<torch::Tensor> roots, grads;
    for (size_t i = 0; i < outputs.size(); ++i) {
      if (outputs[i].requires_grad() && grad_outputs[i].defined()) {
        roots.push_back(outputs[i]);
        grads.push_back(grad_outputs[i]);
      }
    }
    // Gradients with respect to every input and parameter that requires them (the parameters are
    // the saved tensors themselves: the recomputation used the very same leaves).
    std::vector<torch::Tensor> wrt;
    std::vector<size_t> where;
    for (size_t i = 0; i < saved.size(); ++i) {
      const auto& t = i < h->num_inputs ? inputs[i] : saved[i];
      if (t.requires_grad()) {
        wrt.push_back(t);
        where.push_back(i);
      }
    }
    torch::autograd::variable_list result(saved.size() + 1);  // + the function (not a tensor)
    if (!roots.empty() && !wrt.empty()) {
      const auto g = torch::autograd::grad(roots, wrt, grads, /*retain_graph=*/false,
                                           /*create_graph=*/false, /*allow_unused=*/true);
      for (size_t j = 0; j < where.size(); ++j) result[where[j]] = g[j];
    }
    return result;
  }
};

}  // namespace

std::vector<torch::Tensor> checkpoint(const CheckpointFn& fn, const std::vector<torch::Tensor>& inputs,
                                      const std::vector<torch::Tensor>& params) {
  if (!torch::GradMode::is_enabled()) return fn(inputs);
  std::vector<torch::Tensor> tensors = inputs;
  tensors.insert(tensors.end(), params.begin(), params.end());
  auto holder = c10::IValue::make_capsule(c10::make_intrusive<FnHolder>(fn, inputs.size()));
  return CheckpointFunction::apply(at::TensorList(tensors), holder);
}

bool recomputing() { return recompute_depth > 0; }

}  // namespace grpo::model
