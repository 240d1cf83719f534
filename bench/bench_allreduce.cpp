// All-reduce bandwidth of the active process group (Gloo on CPU, NCCL on CUDA), as nccl-tests
// reports it, one JSON line per size on rank 0. Run it under a launcher:
//
//   build/grpo launch --nproc-per-node 2 -- build/bench/grpo_bench_allreduce [--device cpu|cuda] [--max-mb 64]
//
// algbw = bytes / time; busbw = algbw * 2 (N - 1) / N (what each link carries in a ring), to set
// against the device's link bandwidth (NVLink / PCIe on a GPU, memory bandwidth for Gloo on one
// machine). float32 tensors, 5 warm-up and at least 10 timed all-reduces per size.
#include <torch/torch.h>

#include <chrono>
#include <cstdio>
#include <iostream>
#include <string>

#include "grpo/dist/world.h"

int main(int argc, char** argv) {
  try {
    std::string device = "cpu";
    double max_mb = 64;
    for (int i = 1; i + 1 < argc; i += 2) {
      const std::string flag = argv[i];
      if (flag == "--device") {
        device = argv[i + 1];
      } else if (flag == "--max-mb") {
        max_mb = std::stod(argv[i + 1]);
      } else {
        throw std::invalid_argument("unknown flag " + flag + " (expected --device, --max-mb)");
      }
    }
    const auto dev = grpo::dist::device_for(device);
    auto& w = grpo::dist::world(dev);
    if (!w.distributed()) throw std::runtime_error("run under grpo launch / torchrun (a world of one has no peers)");
    const double n = static_cast<double>(w.size());
    for (int64_t bytes = 4096; static_cast<double>(bytes) <= max_mb * 1024 * 1024; bytes *= 4) {
      auto t = torch::ones({bytes / 4}, torch::TensorOptions().dtype(torch::kFloat).device(w.comm_device()));
      for (int k = 0; k < 5; ++k) w.all_reduce(t);
      const int iters = std::max<int>(10, static_cast<int>(256 * 1024 * 1024 / bytes));
      w.barrier();
      const auto t0 = std::chrono::steady_clock::now();
      for (int k = 0; k < iters; ++k) w.all_reduce(t);
      if (dev.is_cuda()) torch::cuda::synchronize();
      const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / iters;
      const double algbw = static_cast<double>(bytes) / s / 1e9;
      if (w.is_main()) {
        std::printf(
            "{\"backend\": \"%s\", \"ranks\": %d, \"bytes\": %ld, \"us\": %.1f, \"algbw_GBps\": %.3f, "
            "\"busbw_GBps\": %.3f}\n",
            w.backend_name().c_str(), static_cast<int>(n), static_cast<long>(bytes), s * 1e6, algbw,
            algbw * 2 * (n - 1) / n);
        std::fflush(stdout);
      }
    }
    return 0;
  } catch (const std::exception& e) {
    std::cerr << "grpo_bench_allreduce: error: " << e.what() << "\n";
    return 1;
  }
}
