// ProcessGroupGloo from the torch wheel; its headers include gloo's, which the wheel does not ship
// (Debian's libgloo-dev supplies them; the code that runs is the wheel's).
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>

#include <cstdlib>

#include "backend_factory.h"

namespace grpo::dist::detail {

c10::intrusive_ptr<c10d::Backend> make_gloo(const c10::intrusive_ptr<c10d::Store>& store, int rank, int size,
                                            std::chrono::milliseconds timeout, const std::string& master_addr) {
  auto options = c10d::ProcessGroupGloo::Options::create(timeout);
  // As torch.distributed: GLOO_SOCKET_IFNAME names the interface; a loopback master (one machine)
  // binds to loopback; otherwise the address this machine's hostname resolves to.
  if (const char* ifname = std::getenv("GLOO_SOCKET_IFNAME"); ifname != nullptr && *ifname != '\0') {
    options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(ifname));
  } else if (master_addr == "127.0.0.1" || master_addr == "localhost" || master_addr == "::1") {
    options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname(master_addr));
  } else {
    options->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
  }
  options->threads = 2;
  return c10::make_intrusive<c10d::ProcessGroupGloo>(store, rank, size, options);
}

}  // namespace grpo::dist::detail
