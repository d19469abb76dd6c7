#include "model/stop_tokens.h"

#include <algorithm>

namespace xkv {

std::vector<int32_t> StopTokens(const Tokenizer& tokenizer, const ChatTemplate* chat) {
  std::vector<int32_t> out;
  auto add = [&](int32_t id) {
    if (id >= 0 && std::find(out.begin(), out.end(), id) == out.end()) out.push_back(id);
  };
  add(tokenizer.eos());
  add(tokenizer.eot());
  add(tokenizer.eom());
  if (chat != nullptr) add(tokenizer.FindToken(chat->end_of_turn()));
  return out;
}

}  // namespace xkv
