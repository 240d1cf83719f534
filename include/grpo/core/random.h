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

// The one rule that derives seeds from a seed and a list of tags (step, round, record index, ...):
//   derive_seed(s)            = s
//   derive_seed(s, t)         = splitmix64(splitmix64(s) ^ (t * 0xD1B54A32D192ED03 + 0x2545F4914F6CDD1D))
//   derive_seed(s, t, u, ...) = derive_seed(derive_seed(s, t), u, ...)
// Different tag lists give independent-looking seeds; the same list always the same seed, so what a
// request samples depends only on the run's seed and its tags, never on batching or interruptions.
// Every sampling seed of the trainers comes from here (grpo/train/scored_rollouts.h lists them).
inline uint64_t derive_seed(uint64_t seed) { return seed; }

template <class... Tags>
uint64_t derive_seed(uint64_t seed, uint64_t tag, Tags... rest) {
  const uint64_t next = splitmix64(splitmix64(seed) ^ (tag * 0xD1B54A32D192ED03ULL + 0x2545F4914F6CDD1DULL));
  return derive_seed(next, static_cast<uint64_t>(rest)...);
}

// Uniform in [0, 1) from a 64-bit hash (its top 53 bits).
inline double unit_interval(uint64_t h) { return static_cast<double>(h >> 11) * 0x1.0p-53; }

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
