// The serving loop of `xkv serve` and `xkv coordinator`: the gRPC servers, the optional HTTP
// listeners (--http-listen: OpenAI API + probes + /metrics; --metrics-listen: probes + /metrics),
// then waits for SIGINT/SIGTERM and shuts everything down in order.
#ifndef XKV_TOOLS_SERVE_LOOP_H_
#define XKV_TOOLS_SERVE_LOOP_H_

#include "coordinator/coordinator.h"
#include "tools/serve_flags.h"

namespace xkv {

// Serves until SIGINT/SIGTERM; returns the exit code.
int ServeUntilSignal(const ServeFlags& f, Coordinator* coordinator, const char* command);

}  // namespace xkv

#endif  // XKV_TOOLS_SERVE_LOOP_H_
