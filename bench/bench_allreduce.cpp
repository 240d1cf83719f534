// Collective bandwidth of the active process group (Gloo on CPU, NCCL on CUDA), as nccl-tests
// reports it, one JSON line per size on rank 0: the all-reduce of data parallelism, and the
// all-gather / reduce-scatter of full sharding and the all-to-all of expert parallelism. Run it
// under a launcher:
//
//   build/grpo launch --nproc-per-node 2 -- build/bench/grpo_bench_allreduce [--device cpu|cuda]
//       [--max-mb 64] [--op all_reduce|all_gather|reduce_scatter|all_to_all]
//
// bytes: the whole buffer (all-gather's output, reduce-scatter's input, all-to-all's input, each
// rank sending 1/N to every rank). algbw = bytes / time; busbw = algbw * 2 (N - 1) / N for the
// all-reduce, algbw * (N - 1) / N for the others (what each link carries), to set against the
// device's link bandwidth. float32 tensors, 5 warm-up and at least 10 timed calls per size.
#include <torch/torch.h>

#include <chrono>
#include <cstdio>
#include <iostream>
#include <string>
#include <vector>

#include "grpo/dist/world.h"

int main(int argc, char** argv) {
  try {
    std::string device = "cpu", op = "all_reduce";
    double max_mb = 64;
    for (int i = 1; i + 1 < argc; i += 2) {
      const std::string flag = argv[i];
      if (flag == "--device") {
        device = argv[i + 1];
      } else if (flag == "--max-mb") {
        max_mb = std::stod(argv[i + 1]);
      } else if (flag == "--op") {
        op = argv[i + 1];
      } else {
        throw std::invalid_argument("unknown flag " + flag + " (expected --device, --max-mb, --op)");
      }
    }
    const auto dev = grpo::dist::device_for(device);
    auto& w = grpo::dist::world(dev);
    if (!w.distributed()) throw std::runtime_error("run under grpo launch / torchrun (a world of one has no peers)");
    if (op != "all_reduce" && op != "all_gather" && op != "reduce_scatter" && op != "all_to_all") {
      throw std::invalid_argument("--op " + op + ": expected all_reduce, all_gather, reduce_scatter or all_to_all");
    }
    const double n = static_cast<double>(w.size());
    const int64_t ranks = w.size();
    for (int64_t bytes = 4096 * ranks; static_cast<double>(bytes) <= max_mb * 1024 * 1024; bytes *= 4) {
      const auto opts = torch::TensorOptions().dtype(torch::kFloat).device(w.comm_device());
      auto whole = torch::ones({bytes / 4}, opts);
      auto part = torch::ones({bytes / 4 / ranks}, opts);
      const std::vector<int64_t> splits(static_cast<size_t>(ranks), bytes / 4 / ranks);
      const auto once = [&] {
        if (op == "all_reduce") {
          w.all_reduce(whole);
        } else if (op == "all_gather") {
          w.all_gather_async(whole, part).wait();
        } else if (op == "reduce_scatter") {
          w.reduce_scatter(part, whole);
        } else {
          whole = w.all_to_all(whole, splits, splits);
        }
      };
      for (int k = 0; k < 5; ++k) once();
      const int iters = std::max<int>(10, static_cast<int>(256 * 1024 * 1024 / bytes));
      w.barrier();
      const auto t0 = std::chrono::steady_clock::now();
      for (int k = 0; k < iters; ++k) once();
      if (dev.is_cuda()) torch::cuda::synchronize();
      const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / iters;
      const double algbw = static_cast<double>(bytes) / s / 1e9;
      if (w.is_main()) {
        std::printf(
            "{\"backend\": \"%s\", \"op\": \"%s\", \"ranks\": %d, \"bytes\": %ld, \"us\": %.1f, "
            "\"algbw_GBps\": %.3f, \"busbw_GBps\": %.3f}\n",
            w.backend_name().c_str(), op.c_str(), static_cast<int>(n), static_cast<long>(bytes), s * 1e6, algbw,
            algbw * (op == "all_reduce" ? 2.0 : 1.0) * (n - 1) / n);
        std::fflush(stdout);
      }
    }
    return 0;
  } catch (const std::exception& e) {
    std::cerr << "grpo_bench_allreduce: error: " << e.what() << "\n";
    return 1;
  }
}
