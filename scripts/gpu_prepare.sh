#!/usr/bin/env bash
# Run here (a Debian 12 machine): downloads the Debian packages that the GPU host lacks into
# .gpu/debs (git-ignored), for the device tool to carry:  run(command="bash scripts/gpu.sh",
# carry=[".gpu"]). The packages are unpacked there, not installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PACKAGES="libyaml-cpp-dev libyaml-cpp0.7 nlohmann-json3-dev libspdlog-dev libspdlog1.10 libfmt-dev
  libfmt9 libgtest-dev libgmock-dev libbenchmark-dev libbenchmark1debian libpcre2-dev libpcre2-8-0
  libpcre2-16-0 libpcre2-32-0 libpcre2-posix3 libicu-dev libicu72 icu-devtools"
mkdir -p .gpu/debs
(cd .gpu/debs && apt-get download $PACKAGES)
du -sh .gpu/debs
