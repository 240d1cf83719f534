// Seeded randomness that gives the same numbers with every standard library
// (std::uniform_int_distribution and std::shuffle differ between implementations): used wherever a
// seed must reproduce data, such as shuffles, generated tasks and sampling seeds.
#pragma once

#include <cstdint>
#include <limits>
#include <random>

namespace grpo {

// SplitMix64's finaliser: mixes a 64-bit value into a well-distributed one (seed derivation, hashing).
inline uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ULL;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
  return x ^ (x >> 31);
}

// Uniform in [0, n) by rejection, n >= 1.
inline uint64_t uniform_below(std::mt19937_64& rng, uint64_t n) {
  const uint64_t limit = std::numeric_limits<uint64_t>::max() - std::numeric_limits<uint64_t>::max() % n;
  uint64_t x;
  do {
    x = rng();
  } while (x >= limit);
  return x % n;
}

}  // namespace grpo
