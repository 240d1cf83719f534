// `grpo launch`: runs a program on N local processes, torchrun-style (docs/distributed.md).
//
//   grpo launch --nproc-per-node N [--nnodes M] [--node-rank R] [--master-addr A] [--master-port P]
//               [--prefix | --no-prefix] [--] PROGRAM [ARGS...]
//
// Each process gets RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, GROUP_RANK, NODE_RANK, MASTER_ADDR,
// MASTER_PORT (and OMP_NUM_THREADS unless set) in its environment; its stdout and stderr come back
// line by line prefixed "[rank K] ". The first rank to fail stops the others; SIGINT, SIGTERM and
// SIGHUP sent to the launcher reach every rank. Pure C++ and POSIX: no torch, so it compiles fast.
#pragma once

#include <string>
#include <vector>

namespace grpo::tools {

// Runs `grpo launch` with the arguments after "launch". Returns the launcher's exit status: 0 when every
// rank exited 0, 1 when one failed (or could not be started), 2 for a bad command line, 128 + signo when
// the launcher itself was stopped by a signal.
int launch_main(const std::vector<std::string>& args);

}  // namespace grpo::tools
