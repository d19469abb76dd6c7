#include "bench/model_text.h"

#include <string_view>

#include "base/status_macros.h"
#include "model/chat_template.h"

namespace xkv {

absl::StatusOr<ModelText> OpenModelText(const std::string& model) {
  ModelText t;
  ASSIGN_OR_RETURN(t.file, GgufFile::Open(model));
  ASSIGN_OR_RETURN(t.tokenizer, Tokenizer::FromGguf(*t.file));
  const Tokenizer* tok = t.tokenizer.get();
  t.encode = [tok](absl::string_view text, bool at_start) {
    return tok->Encode(std::string_view(text.data(), text.size()), /*parse_special=*/true,
                       /*add_special=*/at_start);
  };
  t.render = [](absl::Span<const ChatMessage> messages) {
    return ApplyChatTemplate(messages, /*add_generation_prompt=*/true);
  };
  return t;
}

}  // namespace xkv
