#include "bench/eval_prompts.h"

#include <algorithm>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "base/status_macros.h"

namespace xkv {
namespace {

using Json = nlohmann::json;

constexpr const char* kFields[] = {"id",       "task",        "split",         "length",
                                   "context",  "question",    "answer_prefix", "answers",
                                   "messages", "context_ids", "question_ids",  "continuation"};
constexpr int64_t kMaxLength = int64_t{1} << 24;

absl::Status FieldError(int line, absl::string_view field, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat("line ", line, ": field '", field, "': ", what));
}

absl::StatusOr<std::string> GetString(const Json& j, const char* field, int line, bool required,
                                      bool non_empty) {
  auto it = j.find(field);
  if (it == j.end()) {
    if (required) return FieldError(line, field, "missing (a string)");
    return std::string();
  }
  if (!it->is_string()) return FieldError(line, field, "not a string");
  std::string s = it->get<std::string>();
  if (non_empty && s.empty()) return FieldError(line, field, "empty");
  return s;
}

absl::StatusOr<std::vector<int32_t>> GetIds(const Json& j, const char* field, int line) {
  std::vector<int32_t> out;
  auto it = j.find(field);
  if (it == j.end()) return out;
  if (!it->is_array() || it->empty()) return FieldError(line, field, "not a non-empty list");
  for (size_t i = 0; i < it->size(); ++i) {
    const Json& v = (*it)[i];
    if (!v.is_number_integer() || v.get<int64_t>() < 0 || v.get<int64_t>() > INT32_MAX) {
      return FieldError(line, field,
                        absl::StrCat("item ", i, " is not a token id in [0, 2147483647]"));
    }
    out.push_back(static_cast<int32_t>(v.get<int64_t>()));
  }
  return out;
}

absl::StatusOr<std::vector<ChatMessage>> GetMessages(const Json& j, int line) {
  std::vector<ChatMessage> out;
  auto it = j.find("messages");
  if (it == j.end()) return out;
  if (!it->is_array() || it->empty()) return FieldError(line, "messages", "not a non-empty list");
  for (size_t i = 0; i < it->size(); ++i) {
    const Json& m = (*it)[i];
    auto role = m.is_object() ? m.find("role") : m.end();
    auto content = m.is_object() ? m.find("content") : m.end();
    if (!m.is_object() || m.size() != 2 || role == m.end() || content == m.end() ||
        !role->is_string() || !content->is_string()) {
      return FieldError(
          line, "messages",
          absl::StrCat("item ", i, " is not {\"role\": string, \"content\": string}"));
    }
    const std::string r = role->get<std::string>();
    if (r != "system" && r != "user" && r != "assistant") {
      return FieldError(line, "messages",
                        absl::StrCat("item ", i, ": role '", r,
                                     "' (allowed: system, user, "
                                     "assistant)"));
    }
    out.push_back({r, content->get<std::string>()});
  }
  if (out.back().role != "user") {
    return FieldError(line, "messages", "the last message is not the user's");
  }
  return out;
}

}  // namespace

absl::StatusOr<TaskRecord> ParseTaskRecord(absl::string_view text, int line) {
  const Json j = Json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat("line ", line, ": not a JSON object"));
  }
  for (const auto& item : j.items()) {
    if (std::find(std::begin(kFields), std::end(kFields), item.key()) == std::end(kFields)) {
      return FieldError(line, item.key(),
                        absl::StrCat("unknown (allowed: ", absl::StrJoin(kFields, ", "), ")"));
    }
  }
  TaskRecord r;
  ASSIGN_OR_RETURN(r.id, GetString(j, "id", line, true, true));
  ASSIGN_OR_RETURN(r.task, GetString(j, "task", line, true, true));
  ASSIGN_OR_RETURN(r.split, GetString(j, "split", line, true, true));
  if (r.split != "dev" && r.split != "test") {
    return FieldError(line, "split", absl::StrCat("'", r.split, "' (allowed: dev, test)"));
  }
  auto len = j.find("length");
  if (len == j.end() || !len->is_number_integer() || len->get<int64_t>() < 1 ||
      len->get<int64_t>() > kMaxLength) {
    return FieldError(line, "length", absl::StrCat("not an integer in [1, ", kMaxLength, "]"));
  }
  r.length = len->get<int64_t>();
  ASSIGN_OR_RETURN(r.messages, GetMessages(j, line));
  ASSIGN_OR_RETURN(r.context_ids, GetIds(j, "context_ids", line));
  ASSIGN_OR_RETURN(r.question_ids, GetIds(j, "question_ids", line));
  if (r.context_ids.empty() != r.question_ids.empty()) {
    return FieldError(line, r.context_ids.empty() ? "context_ids" : "question_ids",
                      "missing (context_ids and question_ids come together)");
  }
  const bool ids = !r.context_ids.empty();
  const bool own_context = ids || !r.messages.empty();
  ASSIGN_OR_RETURN(r.context, GetString(j, "context", line, true, !own_context));
  ASSIGN_OR_RETURN(r.question, GetString(j, "question", line, true, !ids));
  ASSIGN_OR_RETURN(r.answer_prefix, GetString(j, "answer_prefix", line, false, false));
  ASSIGN_OR_RETURN(r.continuation, GetString(j, "continuation", line, false, false));
  if (!r.messages.empty() && !absl::EndsWith(r.messages.back().content, r.question)) {
    return FieldError(line, "messages", "the last message's content does not end with question");
  }
  auto answers = j.find("answers");
  if (answers == j.end() || !answers->is_array() || answers->empty()) {
    return FieldError(line, "answers", "not a non-empty list of strings");
  }
  for (size_t i = 0; i < answers->size(); ++i) {
    const Json& a = (*answers)[i];
    if (!a.is_string() || a.get<std::string>().empty()) {
      return FieldError(line, "answers", absl::StrCat("item ", i, " is not a non-empty string"));
    }
    r.answers.push_back(a.get<std::string>());
  }
  return r;
}

absl::StatusOr<std::vector<TaskRecord>> ParseTaskRecords(absl::string_view text) {
  std::vector<TaskRecord> out;
  absl::flat_hash_map<std::string, int> seen;  // id → line
  int line = 0;
  for (absl::string_view l : absl::StrSplit(absl::string_view(text.data(), text.size()), '\n')) {
    ++line;
    if (absl::StripAsciiWhitespace(l).empty()) continue;
    ASSIGN_OR_RETURN(TaskRecord r, ParseTaskRecord(l, line));
    auto [it, fresh] = seen.emplace(r.id, line);
    if (!fresh) {
      return FieldError(line, "id", absl::StrCat("'", r.id, "' repeats line ", it->second));
    }
    out.push_back(std::move(r));
  }
  if (out.empty()) return absl::InvalidArgumentError("prompts file: no prompts");
  return out;
}

std::string TaskRecordJson(const TaskRecord& r) {
  Json j = Json::object();
  j["id"] = r.id;
  j["task"] = r.task;
  j["split"] = r.split;
  j["length"] = r.length;
  j["context"] = r.context;
  j["question"] = r.question;
  j["answer_prefix"] = r.answer_prefix;
  j["answers"] = r.answers;
  if (!r.messages.empty()) {
    Json m = Json::array();
    for (const ChatMessage& c : r.messages) m.push_back({{"role", c.role}, {"content", c.content}});
    j["messages"] = m;
  }
  if (!r.context_ids.empty()) {
    j["context_ids"] = r.context_ids;
    j["question_ids"] = r.question_ids;
  }
  if (!r.continuation.empty()) j["continuation"] = r.continuation;
  return j.dump(-1, ' ', false, Json::error_handler_t::replace);
}

absl::StatusOr<std::vector<TaskRecord>> ReadTaskFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("prompts file '", path, "' cannot be read"));
  std::stringstream ss;
  ss << in.rdbuf();
  absl::StatusOr<std::vector<TaskRecord>> records = ParseTaskRecords(ss.str());
  if (!records.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", records.status().message()));
  }
  return records;
}

absl::Status WriteTaskFile(const std::string& path, absl::Span<const TaskRecord> records) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) return absl::PermissionDeniedError(absl::StrCat("cannot write '", path, "'"));
  for (const TaskRecord& r : records) out << TaskRecordJson(r) << '\n';
  out.close();
  if (!out) return absl::DataLossError(absl::StrCat("writing '", path, "' failed"));
  return absl::OkStatus();
}

namespace {

absl::Status CheckIds(const TaskRecord& r, const char* field, absl::Span<const int32_t> ids,
                      int64_t vocab) {
  for (int32_t id : ids) {
    if (id < 0 || id >= vocab) {
      return absl::InvalidArgumentError(absl::StrCat(
          "prompt '", r.id, "': field '", field, "': token id ", id, " outside [0, ", vocab, ")"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<EvalPrompt> TokenizeRecord(const TaskRecord& r, const TextEncoder& encode,
                                          const ChatRenderer& render, int64_t vocab) {
  EvalPrompt p;
  p.id = r.id;
  p.task = r.task;
  p.split = r.split;
  p.target_tokens = r.length;
  p.depth = r.depth;
  p.answers = r.answers;
  if (!r.context_ids.empty()) {
    RETURN_IF_ERROR(CheckIds(r, "context_ids", r.context_ids, vocab));
    RETURN_IF_ERROR(CheckIds(r, "question_ids", r.question_ids, vocab));
    p.context = r.context_ids;
    p.question = r.question_ids;
  } else {
    std::vector<ChatMessage> messages = r.messages;
    if (messages.empty()) messages.push_back({"user", r.context + r.question});
    ASSIGN_OR_RETURN(std::string text, render(messages));
    // The question is the end of the last (user) message: its last occurrence in the rendering.
    const size_t pos = text.rfind(r.question);
    if (r.question.empty() || pos == std::string::npos) {
      return absl::InvalidArgumentError(absl::StrCat(
          "prompt '", r.id, "': field 'question': not found in the chat template's rendering"));
    }
    ASSIGN_OR_RETURN(p.context, encode(text.substr(0, pos), true));
    ASSIGN_OR_RETURN(p.question, encode(r.question, false));
    ASSIGN_OR_RETURN(p.suffix,
                     encode(text.substr(pos + r.question.size()) + r.answer_prefix, false));
  }
  if (!r.continuation.empty()) {
    ASSIGN_OR_RETURN(p.continuation, encode(r.continuation, false));
  }
  if (p.context.empty() || p.question.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("prompt '", r.id, "': field '",
                                                   p.context.empty() ? "context" : "question",
                                                   "': no tokens"));
  }
  return p;
}

bool ScoreAnswer(absl::string_view answer, absl::Span<const std::string> answers) {
  for (const std::string& a : answers) {
    if (!a.empty() && answer.find(a) != absl::string_view::npos) return true;
  }
  return false;
}

}  // namespace xkv
