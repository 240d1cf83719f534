#include "grpo/train/disaggregated.h"

#include <chrono>
#include <cstring>
#include <map>
#include <optional>
#include <stdexcept>
#include <type_traits>

#include <nlohmann/json.hpp>

#include "grpo/train/grpo_trainer.h"

namespace grpo::train {

// ---- Bytes ---------------------------------------------------------------------------------------

namespace {

class Writer {
 public:
  template <class T>
  void pod(const T& v) {
    static_assert(std::is_trivially_copyable_v<T>);
    out_.append(reinterpret_cast<const char*>(&v), sizeof(T));
  }
  void str(const std::string& s) {
    pod<uint64_t>(s.size());
    out_.append(s);
  }
  template <class T>
  void vec(const std::vector<T>& v) {
    pod<uint64_t>(v.size());
    if (!v.empty()) out_.append(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(T));
  }
  std::string take() { return std::move(out_); }

 private:
  std::string out_;
};

class Reader {
 public:
  explicit Reader(const std::string& in) : in_(in) {}
  template <class T>
  T pod() {
    T v;
    need(sizeof(T));
    std::memcpy(&v, in_.data() + at_, sizeof(T));
    at_ += sizeof(T);
    return v;
  }
  std::string str() {
    const auto n = pod<uint64_t>();
    need(n);
    std::string s = in_.substr(at_, n);
    at_ += n;
    return s;
  }
  template <class T>
  std::vector<T> vec() {
    const auto n = pod<uint64_t>();
    need(n * sizeof(T));
    std::vector<T> v(n);
    if (n > 0) std::memcpy(v.data(), in_.data() + at_, n * sizeof(T));
    at_ += n * sizeof(T);
    return v;
  }
  bool done() const { return at_ == in_.size(); }

 private:
  void need(uint64_t n) const {
    if (n > in_.size() - at_) {
      throw std::runtime_error("disaggregated rollouts: a batch message ends after " + std::to_string(in_.size()) +
                               " bytes, " + std::to_string(n) + " more expected at byte " + std::to_string(at_));
    }
  }
  const std::string& in_;
  size_t at_ = 0;
};

void put_routing(Writer& w, const torch::Tensor& routing) {
  w.pod<uint8_t>(routing.defined());
  if (!routing.defined()) return;
  const auto r = routing.to(torch::kCPU, torch::kShort).contiguous();
  w.vec(r.sizes().vec());
  const auto* p = r.const_data_ptr<int16_t>();
  w.vec(std::vector<int16_t>(p, p + r.numel()));
}

torch::Tensor get_routing(Reader& r) {
  if (r.pod<uint8_t>() == 0) return {};
  const auto sizes = r.vec<int64_t>();
  const auto data = r.vec<int16_t>();
  return torch::from_blob(const_cast<int16_t*>(data.data()), sizes, torch::kShort).clone();
}

}  // namespace

std::string scores_to_text(const rewards::RewardScores& r) {
  nlohmann::json j;
  j["labels"] = r.labels;
  j["weights"] = r.weights;
  j["total"] = r.total;
  j["errors"] = r.errors;
  j["reasons"] = r.reasons;
  j["metrics"] = r.metrics;
  nlohmann::json scores = nlohmann::json::array();
  for (const auto& f : r.scores) {
    nlohmann::json col = nlohmann::json::array();
    for (const auto& x : f) col.push_back(x ? nlohmann::json(*x) : nlohmann::json());
    scores.push_back(std::move(col));
  }
  j["scores"] = std::move(scores);
  return j.dump();
}

rewards::RewardScores scores_from_text(const std::string& text) {
  const auto j = nlohmann::json::parse(text);
  rewards::RewardScores r;
  r.labels = j.at("labels").get<std::vector<std::string>>();
  r.weights = j.at("weights").get<std::vector<double>>();
  r.total = j.at("total").get<std::vector<double>>();
  r.errors = j.at("errors").get<std::vector<std::string>>();
  r.reasons = j.at("reasons").get<std::vector<std::vector<std::string>>>();
  r.metrics = j.at("metrics").get<std::map<std::string, double>>();
  for (const auto& col : j.at("scores")) {
    std::vector<std::optional<double>> f;
    for (const auto& x : col) f.push_back(x.is_null() ? std::nullopt : std::optional<double>(x.get<double>()));
    r.scores.push_back(std::move(f));
  }
  return r;
}

std::string encode_batch(const StepRollouts& rollouts, const BatchMeta& meta) {
  Writer w;
  w.pod(meta.index);
  w.pod(meta.version);
  w.str(meta.hash);
  w.str(meta.order);
  w.pod(meta.weight_wait_seconds);
  w.pod(meta.weight_bytes);
  w.pod(meta.switched_version);
  w.str(meta.switched_hash);
  w.pod<uint64_t>(rollouts.groups.size());
  for (const auto& g : rollouts.groups) {
    w.pod(g.record);
    w.pod(g.seed);
    w.str(g.prompt_text);
    w.vec(g.prompt_ids);
    w.vec(g.totals);
    w.pod<uint64_t>(g.completions.size());
    for (const auto& c : g.completions) {
      w.pod(c.prompt_index);
      w.pod(c.sample_index);
      w.vec(c.token_ids);
      w.vec(c.logprobs);
      w.str(c.text);
      w.pod(static_cast<int32_t>(c.finish_reason));
      w.str(c.stop_string);
      w.pod(c.seconds);
      put_routing(w, c.routing);
    }
  }
  w.str(rollouts.scores.total.empty() ? std::string() : scores_to_text(rollouts.scores));
  w.pod(rollouts.generated_groups);
  w.pod(rollouts.zero_std_groups);
  w.pod(rollouts.generated_tokens);
  w.pod(rollouts.generation_seconds);
  w.pod(rollouts.reward_seconds);
  return w.take();
}

void decode_batch(const std::string& bytes, StepRollouts& rollouts, BatchMeta& meta) {
  Reader r(bytes);
  meta.index = r.pod<int64_t>();
  meta.version = r.pod<int64_t>();
  meta.hash = r.str();
  meta.order = r.str();
  meta.weight_wait_seconds = r.pod<double>();
  meta.weight_bytes = r.pod<int64_t>();
  meta.switched_version = r.pod<int64_t>();
  meta.switched_hash = r.str();
  rollouts = StepRollouts{};
  const auto groups = r.pod<uint64_t>();
  for (uint64_t i = 0; i < groups; ++i) {
    RolloutGroup g;
    g.record = r.pod<int64_t>();
    g.seed = r.pod<uint64_t>();
    g.prompt_text = r.str();
    g.prompt_ids = r.vec<int64_t>();
    g.totals = r.vec<double>();
    const auto n = r.pod<uint64_t>();
    for (uint64_t k = 0; k < n; ++k) {
      rollout::Completion c;
      c.prompt_index = r.pod<int64_t>();
      c.sample_index = r.pod<int64_t>();
      c.token_ids = r.vec<int64_t>();
      c.logprobs = r.vec<float>();
      c.text = r.str();
      c.finish_reason = static_cast<rollout::FinishReason>(r.pod<int32_t>());
      c.stop_string = r.str();
      c.seconds = r.pod<double>();
      c.routing = get_routing(r);
      g.completions.push_back(std::move(c));
    }
    rollouts.groups.push_back(std::move(g));
  }
  if (const auto scores = r.str(); !scores.empty()) rollouts.scores = scores_from_text(scores);
  rollouts.generated_groups = r.pod<int64_t>();
  rollouts.zero_std_groups = r.pod<int64_t>();
  rollouts.generated_tokens = r.pod<int64_t>();
  rollouts.generation_seconds = r.pod<double>();
  rollouts.reward_seconds = r.pod<double>();
  if (!r.done()) throw std::runtime_error("disaggregated rollouts: a batch message has bytes after its end");
}

// ---- The link ------------------------------------------------------------------------------------

// What a rank posted and must keep alive until the collectives finish.
struct DisaggregatedLink::Posted {
  std::vector<torch::Tensor> tensors;
  std::vector<dist::World::Pending> pending;
  void wait() {
    for (auto& p : pending) p.wait();
    pending.clear();
    tensors.clear();
  }
};

namespace {

// Every parameter and buffer in named order (the same on every rank: one architecture).
std::vector<torch::Tensor> state_of(model::CausalLM& model) {
  std::vector<torch::Tensor> out;
  for (const auto& item : model->named_parameters()) out.push_back(item.value());
  for (const auto& item : model->named_buffers()) out.push_back(item.value());
  return out;
}

// Runs of consecutive tensors of one dtype, each at most `bucket_bytes` (or one larger tensor).
std::vector<std::pair<size_t, size_t>> buckets_of(const std::vector<torch::Tensor>& ts, int64_t bucket_bytes) {
  std::vector<std::pair<size_t, size_t>> out;
  size_t begin = 0;
  int64_t bytes = 0;
  for (size_t i = 0; i < ts.size(); ++i) {
    const int64_t b = static_cast<int64_t>(ts[i].nbytes());
    if (i > begin && (ts[i].scalar_type() != ts[begin].scalar_type() || bytes + b > bucket_bytes)) {
      out.emplace_back(begin, i);
      begin = i;
      bytes = 0;
    }
    bytes += b;
  }
  if (begin < ts.size()) out.emplace_back(begin, ts.size());
  return out;
}

torch::Tensor flat_copy(const std::vector<torch::Tensor>& ts, size_t begin, size_t end, const torch::Device& device) {
  std::vector<torch::Tensor> parts;
  for (size_t i = begin; i < end; ++i) parts.push_back(ts[i].detach().reshape({-1}));
  return torch::cat(parts).to(device).contiguous();
}

void scatter_back(const torch::Tensor& flat, const std::vector<torch::Tensor>& ts, size_t begin, size_t end) {
  torch::NoGradGuard no_grad;
  int64_t at = 0;
  for (size_t i = begin; i < end; ++i) {
    const int64_t n = ts[i].numel();
    ts[i].copy_(flat.narrow(0, at, n).view(ts[i].sizes()));
    at += n;
  }
}

torch::Tensor bytes_tensor(const std::string& s, const torch::Device& device) {
  auto t = torch::empty({static_cast<int64_t>(s.size())}, torch::kByte);
  if (!s.empty()) std::memcpy(t.data_ptr<uint8_t>(), s.data(), s.size());
  return t.to(device);
}

std::string tensor_bytes(const torch::Tensor& t) {
  const auto c = t.to(torch::kCPU).contiguous();
  return std::string(reinterpret_cast<const char*>(c.const_data_ptr<uint8_t>()), static_cast<size_t>(c.numel()));
}

// Blocking: `root`'s string on every rank of `g`.
std::string broadcast_string(dist::World& g, const std::string& mine, int64_t root) {
  auto size = torch::tensor({static_cast<int64_t>(mine.size())}, torch::kLong).to(g.comm_device());
  g.broadcast(size, root);
  auto payload = g.rank() == root ? bytes_tensor(mine, g.comm_device())
                                  : torch::empty({size.item<int64_t>()},
                                                 torch::TensorOptions().dtype(torch::kByte).device(g.comm_device()));
  g.broadcast(payload, root);
  return tensor_bytes(payload);
}

}  // namespace

DisaggregatedLink::DisaggregatedLink(dist::World& world, int64_t generator_ranks, int64_t max_staleness,
                                     double bucket_mb)
    : max_staleness_(max_staleness),
      bucket_bytes_(static_cast<int64_t>(bucket_mb * 1024 * 1024)),
      posted_weights_(std::make_unique<Posted>()) {
  if (!world.distributed() || generator_ranks >= world.size()) {
    throw std::invalid_argument(
        "grpo.async.mode: disaggregated needs at least one trainer and one generator rank under grpo launch; this run "
        "has " +
        std::to_string(world.size()) + " rank(s) and async.generator_ranks " + std::to_string(generator_ranks));
  }
  generators_ = generator_ranks;
  trainers_ = world.size() - generators_;
  generator_ = world.rank() >= trainers_;
  std::vector<int64_t> trainers, generators, weights = {0};
  for (int64_t r = 0; r < world.size(); ++r) (r < trainers_ ? trainers : generators).push_back(r);
  weights.insert(weights.end(), generators.begin(), generators.end());
  trainer_group_ = world.new_group(trainers, "disaggregated_trainers");
  generator_group_ = world.new_group(generators, "disaggregated_generators");
  weights_ = world.new_group(weights, "disaggregated_weights");
  for (int64_t g = 0; g < generators_; ++g) {
    auto ranks = trainers;
    ranks.push_back(trainers_ + g);
    if (auto made = world.new_group(ranks, "disaggregated_rollouts_" + std::to_string(g))) {
      rollouts_.push_back(std::move(made));
    }
  }
}

DisaggregatedLink::~DisaggregatedLink() {
  try {
    finish();
  } catch (...) {  // a failed peer: the error was (or will be) reported by the step that saw it
  }
}

void DisaggregatedLink::share_start(int64_t& step, std::string& order, model::CausalLM& model) {
  if (!weights_) return;
  nlohmann::json j = {{"step", step}, {"order", order}};
  const auto got = nlohmann::json::parse(broadcast_string(*weights_, weights_->is_main() ? j.dump() : "", 0));
  step = got.at("step").get<int64_t>();
  order = got.at("order").get<std::string>();
  if (weights_->is_main()) {
    post_weights(model);
    posted_weights_->wait();
  } else {
    receive_weights(model);
  }
}

double DisaggregatedLink::post_weights(model::CausalLM& model) {
  if (!weights_ || !weights_->is_main()) return 0;
  const auto t0 = std::chrono::steady_clock::now();
  posted_weights_->wait();
  const auto ts = state_of(model);
  for (const auto& [begin, end] : buckets_of(ts, bucket_bytes_)) {
    posted_weights_->tensors.push_back(flat_copy(ts, begin, end, weights_->comm_device()));
    posted_weights_->pending.push_back(weights_->broadcast_async(posted_weights_->tensors.back(), 0));
  }
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

int64_t DisaggregatedLink::receive_weights(model::CausalLM& model) {
  const auto ts = state_of(model);
  int64_t bytes = 0;
  for (const auto& [begin, end] : buckets_of(ts, bucket_bytes_)) {
    int64_t n = 0;
    for (size_t i = begin; i < end; ++i) n += ts[i].numel();
    auto flat = torch::empty({n},
                             torch::TensorOptions().dtype(ts[begin].scalar_type()).device(weights_->comm_device()));
    weights_->broadcast(flat, 0);
    scatter_back(flat, ts, begin, end);
    bytes += static_cast<int64_t>(flat.nbytes());
  }
  return bytes;
}

void DisaggregatedLink::post_batch(std::string bytes) {
  auto& g = *rollouts_.front();
  const int64_t root = g.size() - 1;  // the generator is the group's last rank
  // Never wait for the trainers here: a generator runs up to s + 1 batches ahead of the batch the
  // trainers take next, and they may be in an evaluation that waits for this rank. The weights
  // bound how far ahead it gets; finish() waits for all.
  // Batches older than that have been taken: their buffers go.
  while (static_cast<int64_t>(posted_batches_.size()) > max_staleness_ + 1) {
    posted_batches_.front()->wait();
    posted_batches_.pop_front();
  }
  auto p = std::make_unique<Posted>();
  p->tensors.push_back(torch::tensor({static_cast<int64_t>(bytes.size())}, torch::kLong).to(g.comm_device()));
  p->pending.push_back(g.broadcast_async(p->tensors.back(), root));
  p->tensors.push_back(bytes_tensor(bytes, g.comm_device()));
  p->pending.push_back(g.broadcast_async(p->tensors.back(), root));
  posted_batches_.push_back(std::move(p));
}

std::vector<std::string> DisaggregatedLink::receive_batch() {
  std::vector<std::string> out;
  for (auto& g : rollouts_) out.push_back(broadcast_string(*g, "", g->size() - 1));
  return out;
}

void DisaggregatedLink::finish() {
  posted_weights_->wait();
  for (auto& p : posted_batches_) p->wait();
  posted_batches_.clear();
}

}  // namespace grpo::train
