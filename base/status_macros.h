// Status propagation helpers shared by every module (absl does not export its own).
#ifndef XKV_BASE_STATUS_MACROS_H_
#define XKV_BASE_STATUS_MACROS_H_

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define XKV_CONCAT_INNER_(a, b) a##b
#define XKV_CONCAT_(a, b) XKV_CONCAT_INNER_(a, b)

// Returns the status from the enclosing function when `expr` is not OK.
#define RETURN_IF_ERROR(expr)                  \
  do {                                         \
    ::absl::Status xkv_status_ = (expr);       \
    if (!xkv_status_.ok()) return xkv_status_; \
  } while (0)

// `ASSIGN_OR_RETURN(auto x, F())` binds the value of a StatusOr or returns its error.
#define ASSIGN_OR_RETURN(lhs, expr) \
  ASSIGN_OR_RETURN_IMPL_(XKV_CONCAT_(xkv_statusor_, __LINE__), lhs, expr)
#define ASSIGN_OR_RETURN_IMPL_(tmp, lhs, expr) \
  auto tmp = (expr);                           \
  if (!tmp.ok()) return tmp.status();          \
  lhs = std::move(tmp).value()

#endif  // XKV_BASE_STATUS_MACROS_H_
