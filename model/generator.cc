#include "model/generator.h"

#include <algorithm>
#include <memory>
#include <utility>

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"

namespace xkv {

std::string StopMatcher::Push(std::string_view bytes, bool* stopped) {
  *stopped = stopped_;
  if (stopped_) return "";
  pending_.append(bytes);
  size_t first = std::string::npos;
  for (const std::string& s : stops_) {
    if (s.empty()) continue;
    first = std::min(first, pending_.find(s));
  }
  if (first != std::string::npos) {
    stopped_ = *stopped = true;
    std::string out = pending_.substr(0, first);
    pending_.clear();
    return out;
  }
  // Hold back the longest suffix of pending_ that is a proper prefix of some stop string.
  size_t hold = 0;
  for (const std::string& s : stops_) {
    if (s.empty()) continue;
    for (size_t len = std::min(s.size() - 1, pending_.size()); len > hold; --len) {
      if (pending_.compare(pending_.size() - len, len, s, 0, len) == 0) {
        hold = len;
        break;
      }
    }
  }
  std::string out = pending_.substr(0, pending_.size() - hold);
  pending_.erase(0, pending_.size() - hold);
  return out;
}

std::string StopMatcher::Flush() {
  std::string out;
  if (!stopped_) out.swap(pending_);
  return out;
}

struct Generator::State {
  int index = 0;
  const GenerationRequest* request = nullptr;
  std::unique_ptr<KvCache> cache;
  std::unique_ptr<Sampler> sampler;
  std::unique_ptr<StopMatcher> stop;
  int64_t prefilled = 0;  // prompt tokens already run
  bool done = false;
  GenerationResult result;

  int64_t position_next() const {  // logical position of the next token fed to the model
    return static_cast<int64_t>(request->prompt.size() + result.tokens.size()) - 1;
  }
};

Generator::Generator(LlamaModel* model, GeneratorOptions options)
    : model_(model), options_(std::move(options)) {
  if (options_.eos_tokens.empty() && model_->config().eos_token >= 0) {
    options_.eos_tokens.push_back(model_->config().eos_token);
  }
  options_.prefill_chunk = std::max<int64_t>(1, options_.prefill_chunk);
}

bool Generator::IsEos(int32_t token) const {
  return std::find(options_.eos_tokens.begin(), options_.eos_tokens.end(), token) !=
         options_.eos_tokens.end();
}

absl::Status Generator::Validate(absl::Span<const GenerationRequest> requests) const {
  const ModelConfig& c = model_->config();
  for (size_t i = 0; i < requests.size(); ++i) {
    const GenerationRequest& r = requests[i];
    if (r.prompt.empty() || r.max_tokens < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("request ", i, ": empty prompt or negative max_tokens"));
    }
    for (int32_t t : r.prompt) {
      if (t < 0 || t >= c.vocab_size) {
        return absl::InvalidArgumentError(
            absl::StrCat("request ", i, ": token ", t, " outside the vocabulary"));
      }
    }
    if (c.context_length > 0 && static_cast<int64_t>(r.prompt.size()) > c.context_length) {
      return absl::InvalidArgumentError(absl::StrCat("request ", i, ": prompt of ", r.prompt.size(),
                                                     " tokens exceeds context ", c.context_length));
    }
    RETURN_IF_ERROR(ValidateSamplingParams(r.sampling));
    if (!r.stop.empty() && !options_.token_bytes) {
      return absl::InvalidArgumentError("stop strings need GeneratorOptions::token_bytes");
    }
  }
  return absl::OkStatus();
}

void Generator::Finish(State& st, FinishReason reason) {
  st.done = true;
  st.result.finish = reason;
  st.result.kv_bytes_held = st.cache->BytesHeld();
  if (reason != FinishReason::kStop) {
    const std::string rest = st.stop->Flush();
    st.result.text += rest;
    if (on_token_ && !rest.empty()) on_token_(st.index, -1, rest);
  }
}

void Generator::Accept(State& st, int32_t token) {
  const GenerationRequest& r = *st.request;
  if (!r.ignore_eos && IsEos(token)) return Finish(st, FinishReason::kEos);
  st.result.tokens.push_back(token);
  bool stopped = false;
  std::string text;
  if (options_.token_bytes) text = st.stop->Push(options_.token_bytes(token), &stopped);
  st.result.text += text;
  if (on_token_) on_token_(st.index, token, text);
  if (stopped) return Finish(st, FinishReason::kStop);
  const int64_t ctx = model_->config().context_length;
  if (static_cast<int>(st.result.tokens.size()) >= r.max_tokens ||
      (ctx > 0 && st.position_next() >= ctx)) {
    Finish(st, FinishReason::kLength);
  }
}

absl::Status Generator::CompressedPrefill(std::vector<State>& states) {
  std::vector<PrefillRequest> requests;
  std::vector<State*> members;
  for (State& st : states) {
    if (st.done) continue;
    requests.push_back({st.request->prompt, st.cache.get(), static_cast<uint64_t>(st.index)});
    members.push_back(&st);
  }
  if (members.empty()) return absl::OkStatus();
  ASSIGN_OR_RETURN(std::vector<xkv::CompressedPrefill> out,
                   options_.compressor->Prefill(*model_, requests));
  for (size_t i = 0; i < members.size(); ++i) {
    State& st = *members[i];
    st.prefilled = static_cast<int64_t>(st.request->prompt.size());
    st.result.allocation = std::move(out[i].report);
    if (options_.after_prefill) RETURN_IF_ERROR(options_.after_prefill(st.index, *st.cache));
    Accept(st, st.sampler->Sample(out[i].logits));
  }
  return absl::OkStatus();
}

absl::Status Generator::Prefill(std::vector<State>& states) {
  if (options_.compressor != nullptr) return CompressedPrefill(states);
  for (;;) {
    BatchStep batch;
    std::vector<int32_t> tokens;
    std::vector<State*> members;
    for (State& st : states) {
      const std::vector<int32_t>& prompt = st.request->prompt;
      if (st.done || st.prefilled >= static_cast<int64_t>(prompt.size())) continue;
      const int64_t n = std::min<int64_t>(options_.prefill_chunk, prompt.size() - st.prefilled);
      batch.sequences.push_back({st.cache.get(), n, st.prefilled, false});
      tokens.insert(tokens.end(), prompt.begin() + st.prefilled, prompt.begin() + st.prefilled + n);
      members.push_back(&st);
    }
    if (members.empty()) return absl::OkStatus();
    ASSIGN_OR_RETURN(std::vector<float> logits, model_->Forward(tokens, batch));
    const int64_t vocab = model_->config().vocab_size;
    for (size_t i = 0; i < members.size(); ++i) {
      State& st = *members[i];
      st.prefilled += batch.sequences[i].n_new;
      if (st.prefilled < static_cast<int64_t>(st.request->prompt.size())) continue;
      if (options_.after_prefill) RETURN_IF_ERROR(options_.after_prefill(st.index, *st.cache));
      Accept(st, st.sampler->Sample(absl::MakeConstSpan(logits.data() + i * vocab, vocab)));
    }
  }
}

absl::Status Generator::DecodeStep(std::vector<State>& states) {
  BatchStep batch;
  std::vector<int32_t> tokens;
  std::vector<State*> members;
  for (State& st : states) {
    if (st.done) continue;
    batch.sequences.push_back({st.cache.get(), 1, st.position_next(), false});
    tokens.push_back(st.result.tokens.back());
    members.push_back(&st);
  }
  if (members.empty()) return absl::OkStatus();
  ASSIGN_OR_RETURN(std::vector<float> logits, model_->Forward(tokens, batch));
  const int64_t vocab = model_->config().vocab_size;
  for (size_t i = 0; i < members.size(); ++i) {
    Accept(*members[i],
           members[i]->sampler->Sample(absl::MakeConstSpan(logits.data() + i * vocab, vocab)));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<GenerationResult>> Generator::Generate(
    absl::Span<const GenerationRequest> requests, const TokenCallback& on_token) {
  RETURN_IF_ERROR(Validate(requests));
  on_token_ = on_token;
  std::vector<State> states(requests.size());
  for (size_t i = 0; i < requests.size(); ++i) {
    State& st = states[i];
    st.index = static_cast<int>(i);
    st.request = &requests[i];
    st.cache = model_->NewCache();
    st.sampler = std::make_unique<Sampler>(requests[i].sampling);
    st.stop = std::make_unique<StopMatcher>(requests[i].stop);
    st.result.prompt_tokens = requests[i].prompt.size();
    if (requests[i].max_tokens == 0) Finish(st, FinishReason::kLength);
  }
  RETURN_IF_ERROR(Prefill(states));
  while (std::any_of(states.begin(), states.end(), [](const State& s) { return !s.done; })) {
    RETURN_IF_ERROR(DecodeStep(states));
  }
  std::vector<GenerationResult> results;
  for (State& st : states) results.push_back(std::move(st.result));
  return results;
}

}  // namespace xkv
