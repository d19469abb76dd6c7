// Prompts shared by the e2e tests: short ones (no compression: T <= window) and a long one for
// the compressing policies.
#ifndef XKV_TESTS_E2E_E2E_PROMPTS_H_
#define XKV_TESTS_E2E_E2E_PROMPTS_H_

namespace xkv::e2e {

inline constexpr char kShortPrompt[] = "The capital of France is";

// About 150 tokens: long enough that xkv's per-layer budgets differ from a full cache.
inline constexpr char kLongPrompt[] =
    "The history of the city of Paris begins with a small settlement of the Parisii, a Celtic "
    "people who lived on an island in the river Seine. The Romans conquered the area and built a "
    "town called Lutetia, with a forum, baths and an amphitheatre on the left bank. In the "
    "Middle Ages the city became the capital of the kings of France, and the cathedral of Notre "
    "Dame, the university and the great markets grew around the island. The revolution of 1789 "
    "began in Paris, and in the nineteenth century the prefect Haussmann rebuilt much of the "
    "city with wide avenues, parks and sewers. Today Paris is known for its museums, its cafes "
    "and its river. Question: who built the wide avenues of Paris? Answer:";

}  // namespace xkv::e2e

#endif  // XKV_TESTS_E2E_E2E_PROMPTS_H_
