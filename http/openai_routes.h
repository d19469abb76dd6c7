// The OpenAI-compatible routes over a Coordinator: POST /v1/chat/completions, POST /v1/completions
// (JSON or server-sent events with `stream: true`), GET /v1/models and /v1/models/{id}; optional
// bearer API key for /v1/*, a limit on generation requests in flight (429 above it) and OpenAI
// error bodies for every failure, including the server's own 404 and 413.
//
// Each request becomes the same xkv::v1::GenerateRequest the gRPC Generation service takes and
// goes through ValidatePresence, ParamsFromProto and Coordinator::Submit, so both APIs accept and
// reject the same requests. `n` > 1 submits n requests (ChoicesFromProto: seeds seed, seed + 1,
// …); without `seed` a random one is drawn, as OpenAI samples differently on every call.
#ifndef XKV_HTTP_OPENAI_ROUTES_H_
#define XKV_HTTP_OPENAI_ROUTES_H_

#include <string>

#include "coordinator/coordinator.h"

namespace httplib {
class Server;
}  // namespace httplib

namespace xkv {

struct OpenAiRoutesOptions {
  std::string model_name;   // the one model id served (GET /v1/models)
  std::string api_key;      // non-empty: /v1/* needs `Authorization: Bearer <api_key>`
  int max_concurrent = 32;  // generation requests in flight (streams included); more get 429
};

// `coordinator` must outlive the server.
void MountOpenAiRoutes(httplib::Server& server, Coordinator* coordinator,
                       const OpenAiRoutesOptions& options);

}  // namespace xkv

#endif  // XKV_HTTP_OPENAI_ROUTES_H_
