#include "worker/nccl/nccl_stage_link.h"

#include <cuda_runtime_api.h>
#include <nccl.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "base/status_macros.h"
#include "kernels/cuda/cuda_status.h"

namespace xkv {
namespace {

static_assert(NCCL_UNIQUE_ID_BYTES == kNcclUniqueIdBytes, "ncclUniqueId size");

// INTERNAL "<file>:<line>: <expr>: <ncclGetErrorString>[: <ncclGetLastError>]", or OK.
// ncclInProgress is OK here: on a non-blocking communicator the call goes on in the background
// and the caller waits for it (WaitComm).
absl::Status NcclStatus(ncclResult_t result, const char* expr, const char* file, int line) {
  if (result == ncclSuccess || result == ncclInProgress) return absl::OkStatus();
  const char* last = ncclGetLastError(nullptr);
  return absl::InternalError(
      absl::StrCat(file, ":", line, ": ", expr, ": ", ncclGetErrorString(result),
                   last != nullptr && last[0] != '\0' ? ": " : "", last != nullptr ? last : ""));
}

#define NCCL_RETURN_IF_ERROR(expr)                                               \
  do {                                                                           \
    const ncclResult_t xkv_nccl_result_ = (expr);                                \
    if (xkv_nccl_result_ != ncclSuccess && xkv_nccl_result_ != ncclInProgress) { \
      return ::xkv::NcclStatus(xkv_nccl_result_, #expr, __FILE__, __LINE__);     \
    }                                                                            \
  } while (0)

// One step's header on the wire (both ends are the same build on x86-64: no byte swapping).
struct WireHeader {
  int64_t step_id;      // the coordinator's step id (uint64 bits)
  int64_t status_code;  // absl::StatusCode; 0: n_elems values follow
  int64_t n_elems;      // payload size: [rows, hidden] = n_elems values; 0 with an error
  int64_t dtype;        // payload element type: 0 fp32, 1 bf16
  int64_t width;        // values per row (device rows); 0: not given (host rows)
  char message[NcclStageLink::kMessageBytes];  // NUL-terminated error message
};
static_assert(sizeof(WireHeader) == 5 * sizeof(int64_t) + NcclStageLink::kMessageBytes);

int64_t WireDtype(RowDtype d) { return d == RowDtype::kBf16 ? 1 : 0; }
size_t ElemBytes(RowDtype d) { return d == RowDtype::kBf16 ? 2 : 4; }
ncclDataType_t NcclType(RowDtype d) { return d == RowDtype::kBf16 ? ncclBfloat16 : ncclFloat32; }

// bf16 bits to fp32 (exact: bf16 is the top half of an fp32).
float Bf16ToFloat(uint16_t bits) {
  const uint32_t u = static_cast<uint32_t>(bits) << 16;
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}

// Largest payload accepted from a header (16 Gi floats): a bigger one is a corrupt header.
constexpr int64_t kMaxFloats = int64_t{1} << 34;

// Polls get slower the longer a wait lasts: 10 µs doubling up to 1 ms.
void Backoff(int spin) {
  absl::SleepFor(absl::Microseconds(std::min(1000, 10 << std::min(spin, 7))));
}

}  // namespace

struct NcclStageLink::Device {
  int ordinal = 0;
  ncclComm_t comm = nullptr;      // aborted here unless it was destroyed before
  cudaStream_t stream = nullptr;  // non-blocking: never waits for the legacy default stream
  WireHeader* header = nullptr;   // device: one WireHeader
  float* payload = nullptr;       // device: fp32 [capacity], the largest step seen so far
  size_t capacity = 0;            // floats

  ~Device() {
    cudaSetDevice(ordinal);
    if (comm != nullptr) ncclCommAbort(comm);
    if (stream != nullptr) cudaStreamDestroy(stream);
    if (header != nullptr) cudaFree(header);
    if (payload != nullptr) cudaFree(payload);
  }
};

struct NcclStageLink::Delivery {
  absl::Status error;       // not OK: the previous stage failed this step
  std::vector<float> rows;  // fp32 [rows, hidden], when kept on the host
  int64_t n_elems = 0;      // values in the receive buffer (Keep::kDevice)
  int64_t width = 0;        // values per row (0: the sender did not say)
  RowDtype dtype = RowDtype::kF32;
};

NcclStageLink::NcclStageLink(const NcclStageLinkOptions& options) : options_(options) {}

absl::StatusOr<std::string> NcclStageLink::NewNcclUniqueId() {
  setenv("NCCL_NVLS_ENABLE", "0", /*overwrite=*/1);
  ncclUniqueId id;
  NCCL_RETURN_IF_ERROR(ncclGetUniqueId(&id));
  return std::string(id.internal, sizeof(id.internal));
}

absl::StatusOr<std::unique_ptr<NcclStageLink>> NcclStageLink::Create(
    const NcclStageLinkOptions& options) {
  const NcclLinkConfig& c = options.config;
  if (c.unique_id.size() != kNcclUniqueIdBytes || c.world_size < 1 || c.rank < 0 ||
      c.rank >= c.world_size || c.device < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("NCCL stage link: bad config (id of ", c.unique_id.size(), " bytes, rank ",
                     c.rank, " of ", c.world_size, ", device ", c.device, ")"));
  }
  // NVLink multicast (NVLS) can take a shared host's GPUs out of service; it stays off.
  setenv("NCCL_NVLS_ENABLE", "0", /*overwrite=*/1);
  std::unique_ptr<NcclStageLink> link(new NcclStageLink(options));
  absl::MutexLock lock(&link->mu_);
  auto d = std::make_unique<Device>();
  d->ordinal = c.device;
  CUDA_RETURN_IF_ERROR(cudaSetDevice(c.device));
  CUDA_RETURN_IF_ERROR(cudaStreamCreateWithFlags(&d->stream, cudaStreamNonBlocking));
  CUDA_RETURN_IF_ERROR(cudaMalloc(reinterpret_cast<void**>(&d->header), sizeof(WireHeader)));
  ncclUniqueId id;
  std::memcpy(id.internal, c.unique_id.data(), sizeof(id.internal));
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;
  config.commName = "xkv-stage-link";
  NCCL_RETURN_IF_ERROR(ncclCommInitRankConfig(&d->comm, c.world_size, id, c.rank, &config));
  link->device_ = std::move(d);
  absl::Status joined = link->WaitComm(
      absl::Now() + options.init_timeout,
      absl::StrCat("joining the communicator as rank ", c.rank, " of ", c.world_size));
  if (!joined.ok()) return link->Break(joined);
  return link;
}

NcclStageLink::~NcclStageLink() {
  absl::MutexLock lock(&mu_);
  if (device_ == nullptr) return;
  // A healthy link ends with finalize + destroy; if the peers do not finalize in time, abort.
  cudaSetDevice(device_->ordinal);
  const ncclResult_t finalize = ncclCommFinalize(device_->comm);
  if (finalize == ncclSuccess ||
      (finalize == ncclInProgress &&
       WaitComm(absl::Now() + options_.teardown_timeout, "finalizing the communicator").ok())) {
    const ncclResult_t destroy = ncclCommDestroy(device_->comm);
    if (destroy == ncclSuccess || destroy == ncclInProgress) device_->comm = nullptr;
  }
  if (device_->comm != nullptr) {
    Break(absl::UnavailableError("NCCL stage link: closed")).IgnoreError();
    return;
  }
  device_.reset();
}

absl::Status NcclStageLink::health() const {
  absl::MutexLock lock(&state_mu_);
  return broken_;
}

void NcclStageLink::Close() { closing_.store(true); }

absl::Status NcclStageLink::Usable() const {
  if (closing_.load()) return absl::UnavailableError("NCCL stage link: closed (shutting down)");
  absl::Status broken = health();
  if (broken.ok() && device_ != nullptr) return absl::OkStatus();
  return absl::UnavailableError(
      absl::StrCat("NCCL stage link of rank ", rank(),
                   " is broken (the coordinator must reload the stages): ", broken.message()));
}

absl::Status NcclStageLink::Break(absl::Status cause) {
  {
    absl::MutexLock lock(&state_mu_);
    if (broken_.ok()) broken_ = cause.ok() ? absl::UnknownError("broken") : cause;
  }
  if (device_ != nullptr) {
    // ncclCommAbort may wait for the peers to abort too: never on the caller's thread.
    std::thread([d = std::move(device_)]() mutable { d.reset(); }).detach();
  }
  return cause;
}

absl::Status NcclStageLink::Waitable(absl::Time deadline, const std::string& what) const {
  if (closing_.load()) {
    return absl::UnavailableError(absl::StrCat("NCCL stage link: ", what, ": closed"));
  }
  if (absl::Now() >= deadline) {
    return absl::DeadlineExceededError(absl::StrCat("NCCL stage link: ", what, " timed out"));
  }
  return absl::OkStatus();
}

absl::Status NcclStageLink::WaitComm(absl::Time deadline, const std::string& what) {
  for (int spin = 0;; ++spin) {
    ncclResult_t state = ncclSuccess;
    NCCL_RETURN_IF_ERROR(ncclCommGetAsyncError(device_->comm, &state));
    if (state == ncclSuccess) return absl::OkStatus();
    if (state != ncclInProgress) {
      return absl::InternalError(absl::StrCat("NCCL stage link: ", what, ": ",
                                              ncclGetErrorString(state), ": ",
                                              ncclGetLastError(device_->comm)));
    }
    RETURN_IF_ERROR(Waitable(deadline, what));
    Backoff(spin);
  }
}

absl::Status NcclStageLink::WaitStream(absl::Time deadline, const std::string& what) {
  for (int spin = 0;; ++spin) {
    const cudaError_t query = cudaStreamQuery(device_->stream);
    if (query == cudaSuccess) return absl::OkStatus();
    if (query != cudaErrorNotReady) {
      return cuda::CudaStatus(query, "cudaStreamQuery", __FILE__, __LINE__);
    }
    ncclResult_t state = ncclSuccess;
    NCCL_RETURN_IF_ERROR(ncclCommGetAsyncError(device_->comm, &state));
    if (state != ncclSuccess && state != ncclInProgress) {
      return absl::InternalError(absl::StrCat("NCCL stage link: ", what, ": ",
                                              ncclGetErrorString(state), ": ",
                                              ncclGetLastError(device_->comm)));
    }
    RETURN_IF_ERROR(Waitable(deadline, what));
    Backoff(spin);
  }
}

absl::Status NcclStageLink::Reserve(size_t n) {
  Device& d = *device_;
  if (n <= d.capacity) return absl::OkStatus();
  const size_t capacity = std::max(n, d.capacity + d.capacity / 2);
  if (d.payload != nullptr) CUDA_RETURN_IF_ERROR(cudaFree(d.payload));
  d.payload = nullptr;
  d.capacity = 0;
  CUDA_RETURN_IF_ERROR(cudaMalloc(reinterpret_cast<void**>(&d.payload), capacity * sizeof(float)));
  d.capacity = capacity;
  return absl::OkStatus();
}

absl::Status NcclStageLink::Post(uint64_t step_id, const absl::Status& error,
                                 absl::Span<const float> rows, absl::Time deadline,
                                 const DeviceRows* device) {
  WireHeader h = {};
  h.step_id = static_cast<int64_t>(step_id);
  h.status_code = static_cast<int64_t>(error.code());
  const RowDtype dtype = device != nullptr ? device->dtype : RowDtype::kF32;
  h.n_elems = !error.ok()         ? 0
              : device != nullptr ? device->rows * device->width
                                  : static_cast<int64_t>(rows.size());
  h.dtype = WireDtype(dtype);
  h.width = device != nullptr && error.ok() ? device->width : 0;
  const size_t len = std::min(error.message().size(), kMessageBytes - 1);
  std::memcpy(h.message, error.message().data(), len);
  Device& d = *device_;
  const int next = rank() + 1;
  const std::string what = absl::StrCat("sending step ", step_id, " to stage ", next);
  CUDA_RETURN_IF_ERROR(cudaSetDevice(d.ordinal));
  const void* payload = device != nullptr ? device->data.get() : d.payload;
  if (h.n_elems > 0 && device == nullptr) RETURN_IF_ERROR(Reserve(rows.size()));
  // Pageable sources: both copies have consumed the host memory when they return.
  CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(d.header, &h, sizeof(h), cudaMemcpyHostToDevice, d.stream));
  if (h.n_elems > 0 && device == nullptr) {
    CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(d.payload, rows.data(), rows.size() * sizeof(float),
                                         cudaMemcpyHostToDevice, d.stream));
  }
  NCCL_RETURN_IF_ERROR(ncclSend(d.header, sizeof(h), ncclUint8, next, d.comm, d.stream));
  RETURN_IF_ERROR(WaitComm(deadline, what));
  if (h.n_elems > 0) {
    NCCL_RETURN_IF_ERROR(ncclSend(payload, h.n_elems, NcclType(dtype), next, d.comm, d.stream));
    RETURN_IF_ERROR(WaitComm(deadline, what));
  }
  return WaitStream(deadline, what);
}

absl::Status NcclStageLink::RecvRows(int64_t n_elems, RowDtype dtype, Keep keep,
                                     absl::Time deadline, Delivery* out) {
  Device& d = *device_;
  const std::string what = absl::StrCat("receiving ", n_elems, " values from stage ", rank() - 1);
  const size_t bytes = static_cast<size_t>(n_elems) * ElemBytes(dtype);
  RETURN_IF_ERROR(Reserve((bytes + sizeof(float) - 1) / sizeof(float)));
  NCCL_RETURN_IF_ERROR(ncclRecv(d.payload, n_elems, NcclType(dtype), rank() - 1, d.comm, d.stream));
  RETURN_IF_ERROR(WaitComm(deadline, what));
  RETURN_IF_ERROR(WaitStream(deadline, what));
  out->n_elems = n_elems;
  out->dtype = dtype;
  if (keep != Keep::kHost) return absl::OkStatus();
  out->rows.resize(n_elems);  // fp32 [rows, hidden]
  if (dtype == RowDtype::kF32) {
    CUDA_RETURN_IF_ERROR(
        cudaMemcpyAsync(out->rows.data(), d.payload, bytes, cudaMemcpyDeviceToHost, d.stream));
    CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(d.stream));  // only the copy is pending
    return absl::OkStatus();
  }
  std::vector<uint16_t> bits(n_elems);
  CUDA_RETURN_IF_ERROR(
      cudaMemcpyAsync(bits.data(), d.payload, bytes, cudaMemcpyDeviceToHost, d.stream));
  CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(d.stream));
  for (int64_t i = 0; i < n_elems; ++i) out->rows[i] = Bf16ToFloat(bits[i]);
  return absl::OkStatus();
}

absl::StatusOr<NcclStageLink::Delivery> NcclStageLink::Take(uint64_t step_id, absl::Time deadline,
                                                            Keep keep) {
  Device& d = *device_;
  const int prev = rank() - 1;
  const std::string what = absl::StrCat("waiting for step ", step_id, " from stage ", prev);
  CUDA_RETURN_IF_ERROR(cudaSetDevice(d.ordinal));
  NCCL_RETURN_IF_ERROR(ncclRecv(d.header, sizeof(WireHeader), ncclUint8, prev, d.comm, d.stream));
  RETURN_IF_ERROR(WaitComm(deadline, what));
  RETURN_IF_ERROR(WaitStream(deadline, what));
  WireHeader h;
  CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(&h, d.header, sizeof(h), cudaMemcpyDeviceToHost, d.stream));
  CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(d.stream));  // only the copy is pending
  h.message[kMessageBytes - 1] = '\0';
  const bool has_rows = h.status_code == 0;
  if (h.n_elems < 0 || h.n_elems > kMaxFloats || (!has_rows && h.n_elems != 0) ||
      h.status_code < 0 || h.dtype < 0 || h.dtype > 1 || h.width < 0 ||
      (h.width > 0 && h.n_elems % h.width != 0) ||
      h.status_code > static_cast<int64_t>(absl::StatusCode::kUnauthenticated)) {
    return absl::InternalError(absl::StrCat("NCCL stage link: corrupt header from stage ", prev,
                                            " (status ", h.status_code, ", ", h.n_elems,
                                            " values of type ", h.dtype, ")"));
  }
  Delivery out;
  if (!has_rows) {
    out.error = absl::Status(static_cast<absl::StatusCode>(h.status_code),
                             absl::StrCat("stage ", prev, ": ", h.message));
  } else if (h.n_elems > 0) {
    // Rows sent from the host (no width) are received as host rows, whatever was asked.
    if (keep == Keep::kDevice && h.width == 0) keep = Keep::kHost;
    RETURN_IF_ERROR(
        RecvRows(h.n_elems, h.dtype == 1 ? RowDtype::kBf16 : RowDtype::kF32, keep, deadline, &out));
    out.width = h.width;
  }
  if (static_cast<uint64_t>(h.step_id) != step_id) {
    return absl::InternalError(absl::StrCat("NCCL stage link: stage ", prev, " sent step ",
                                            static_cast<uint64_t>(h.step_id), " while step ",
                                            step_id, " was expected (steps out of order)"));
  }
  return out;
}

absl::Status NcclStageLink::Send(uint64_t step_id, absl::Span<const float> hidden) {
  absl::MutexLock lock(&mu_);
  RETURN_IF_ERROR(Usable());
  if (rank() + 1 >= world_size()) {
    return absl::FailedPreconditionError("NCCL stage link: the last stage has no next stage");
  }
  absl::Status s = Post(step_id, absl::OkStatus(), hidden, absl::Now() + options_.send_timeout);
  return s.ok() ? s : Break(s);
}

absl::Status NcclStageLink::SendError(uint64_t step_id, const absl::Status& error) {
  absl::MutexLock lock(&mu_);
  RETURN_IF_ERROR(Usable());
  if (rank() + 1 >= world_size()) {
    return absl::FailedPreconditionError("NCCL stage link: the last stage has no next stage");
  }
  const absl::Status sent = error.ok() ? absl::InternalError("failed with an OK status") : error;
  absl::Status s = Post(step_id, sent, {}, absl::Now() + options_.send_timeout);
  return s.ok() ? s : Break(s);
}

absl::Status NcclStageLink::SendDevice(uint64_t step_id, const DeviceRows& rows) {
  absl::MutexLock lock(&mu_);
  RETURN_IF_ERROR(Usable());
  if (rank() + 1 >= world_size()) {
    return absl::FailedPreconditionError("NCCL stage link: the last stage has no next stage");
  }
  if (rows.data == nullptr || rows.device != device_->ordinal) {
    return absl::InvalidArgumentError(
        absl::StrCat("NCCL stage link: device rows on cuda:", rows.device,
                     ", the link is on cuda:", device_->ordinal));
  }
  absl::Status s = Post(step_id, absl::OkStatus(), {}, absl::Now() + options_.send_timeout, &rows);
  return s.ok() ? s : Break(s);
}

absl::StatusOr<std::vector<float>> NcclStageLink::Receive(uint64_t step_id, absl::Time deadline) {
  absl::MutexLock lock(&mu_);
  RETURN_IF_ERROR(Usable());
  if (rank() == 0) {
    return absl::FailedPreconditionError("NCCL stage link: the first stage has no previous stage");
  }
  absl::StatusOr<Delivery> got = Take(step_id, deadline, Keep::kHost);
  if (!got.ok()) return Break(got.status());
  if (!got->error.ok()) return got->error;
  return std::move(got->rows);
}

absl::StatusOr<StageRows> NcclStageLink::ReceiveRows(uint64_t step_id, absl::Time deadline) {
  absl::MutexLock lock(&mu_);
  RETURN_IF_ERROR(Usable());
  if (rank() == 0) {
    return absl::FailedPreconditionError("NCCL stage link: the first stage has no previous stage");
  }
  absl::StatusOr<Delivery> got = Take(step_id, deadline, Keep::kDevice);
  if (!got.ok()) return Break(got.status());
  if (!got->error.ok()) return got->error;
  StageRows out;
  out.host = std::move(got->rows);
  if (got->n_elems > 0 && got->width > 0) {
    DeviceRows rows;
    rows.data = std::shared_ptr<void>(device_->payload, [](void*) {});  // borrowed
    rows.device = device_->ordinal;
    rows.dtype = got->dtype;
    rows.width = got->width;  // the receiver checks the shape
    rows.rows = got->n_elems / rows.width;
    out.device = rows;
  }
  return out;
}

void NcclStageLink::Discard(uint64_t step_id) {
  absl::MutexLock lock(&mu_);
  if (rank() == 0 || !Usable().ok()) return;
  absl::StatusOr<Delivery> got = Take(step_id, absl::Now() + options_.discard_timeout, Keep::kNone);
  if (!got.ok()) Break(got.status()).IgnoreError();
}

}  // namespace xkv
