"""Thin Python client over the xkv.v1 gRPC stubs: streaming generation and the Admin API."""
from __future__ import annotations

import dataclasses
from typing import Iterable, Iterator, Mapping, Optional, Sequence, Union

import grpc

try:
    from xkv_client._proto.xkv.v1 import admin_pb2, admin_pb2_grpc
    from xkv_client._proto.xkv.v1 import generation_pb2, generation_pb2_grpc
except ImportError as e:  # pragma: no cover - only without generated stubs
    raise ImportError(
        "xkv_client's gRPC stubs are missing: install the package (pip install clients/python) "
        "or run clients/python/generate.sh") from e

Text = Union[str, bytes]


class XkvError(Exception):
    """A failed call: `code` is the grpc.StatusCode, `details` the server's message."""

    def __init__(self, code: grpc.StatusCode, details: str):
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details


@dataclasses.dataclass
class GenerateChunk:
    """One streamed response: a text delta and its token ids; `usage` only on the last one."""
    text: str
    token_ids: list
    usage: Optional[generation_pb2.Usage] = None
    request_id: str = ""


def _utf8(value: Text) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else bytes(value)


def _rpc_error(e: grpc.RpcError) -> XkvError:
    return XkvError(e.code(), e.details() or "")


def build_kv_policy(policy: Optional[str] = None, *, retention: Optional[float] = None,
                    budget_tokens: Optional[int] = None, budget_bytes: Optional[int] = None,
                    budget_fraction: Optional[float] = None,
                    profile_mode: Optional[str] = None) -> generation_pb2.KvPolicySpec:
    """A KvPolicySpec; at most one of retention / budget_* (the server checks it)."""
    spec = generation_pb2.KvPolicySpec()
    if policy is not None:
        spec.policy = policy
    if profile_mode is not None:
        spec.profile_mode = profile_mode
    if retention is not None:
        spec.retention = retention
    if budget_tokens is not None:
        spec.budget_tokens = budget_tokens
    if budget_bytes is not None:
        spec.budget_bytes = budget_bytes
    if budget_fraction is not None:
        spec.budget_fraction = budget_fraction
    return spec


def build_request(prompt: Optional[Text] = None, *,
                  messages: Optional[Sequence[Mapping[str, Text]]] = None,
                  max_tokens: Optional[int] = None, temperature: float = 0.0,
                  top_p: Optional[float] = None, top_k: int = 0, seed: int = 0,
                  stop: Iterable[Text] = (), ignore_eos: bool = False,
                  kv_policy: Optional[generation_pb2.KvPolicySpec] = None,
                  request_id: str = "") -> generation_pb2.GenerateRequest:
    """A GenerateRequest from a raw prompt or chat `messages` ([{"role", "content"}]).

    Strings are sent as UTF-8; bytes are sent as given (the server rejects invalid UTF-8 with
    INVALID_ARGUMENT). Unset max_tokens / top_p take the service defaults.
    """
    if (prompt is None) == (messages is None):
        raise ValueError("pass exactly one of prompt or messages")
    r = generation_pb2.GenerateRequest()
    if messages is not None:
        for m in messages:
            r.chat.messages.add(role=m["role"], content=_utf8(m["content"]))
        if not messages:
            r.chat.SetInParent()
    else:
        r.prompt = _utf8(prompt)
    if max_tokens is not None:
        r.max_tokens = max_tokens
    r.sampling.temperature = temperature
    if top_p is not None:
        r.sampling.top_p = top_p
    r.sampling.top_k = top_k
    r.sampling.seed = seed
    r.sampling.stop.extend(_utf8(s) for s in stop)
    r.ignore_eos = ignore_eos
    if kv_policy is not None:
        r.kv_policy.CopyFrom(kv_policy)
    r.request_id = request_id
    return r


class XkvClient:
    """The public Generation service.

    >>> client = XkvClient("127.0.0.1:50051")
    >>> for chunk in client.generate("The capital of France is", max_tokens=8):
    ...     print(chunk.text, end="")
    """

    def __init__(self, address: str, *, channel: Optional[grpc.Channel] = None,
                 timeout: Optional[float] = None):
        self._channel = channel or grpc.insecure_channel(address)
        self._owns_channel = channel is None
        self._stub = generation_pb2_grpc.GenerationStub(self._channel)
        self.timeout = timeout  # default deadline in seconds for every call; None = none

    def close(self) -> None:
        if self._owns_channel:
            self._channel.close()

    def __enter__(self) -> "XkvClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def generate_request(self, request: generation_pb2.GenerateRequest, *,
                         timeout: Optional[float] = None) -> Iterator[GenerateChunk]:
        """Streams a prepared GenerateRequest. Closing the iterator early cancels the request."""
        call = self._stub.Generate(request, timeout=timeout if timeout is not None
                                   else self.timeout)
        try:
            for resp in call:
                yield GenerateChunk(text=resp.text, token_ids=list(resp.token_ids),
                                    usage=resp.usage if resp.HasField("usage") else None,
                                    request_id=resp.request_id)
        except grpc.RpcError as e:
            raise _rpc_error(e) from None
        finally:
            call.cancel()  # no-op when the stream already ended

    def generate(self, prompt: Optional[Text] = None, *, timeout: Optional[float] = None,
                 policy: Optional[str] = None, retention: Optional[float] = None,
                 budget_tokens: Optional[int] = None, budget_bytes: Optional[int] = None,
                 budget_fraction: Optional[float] = None, profile_mode: Optional[str] = None,
                 **kwargs) -> Iterator[GenerateChunk]:
        """Streams a generation; keyword arguments as build_request, plus a KV policy override
        (policy, retention | budget_tokens | budget_bytes | budget_fraction, profile_mode)."""
        kv = None
        if any(v is not None for v in (policy, retention, budget_tokens, budget_bytes,
                                       budget_fraction, profile_mode)):
            kv = build_kv_policy(policy, retention=retention, budget_tokens=budget_tokens,
                                 budget_bytes=budget_bytes, budget_fraction=budget_fraction,
                                 profile_mode=profile_mode)
        request = build_request(prompt, kv_policy=kv, **kwargs)
        return self.generate_request(request, timeout=timeout)

    def complete(self, prompt: Optional[Text] = None, **kwargs):
        """The whole answer: (text, token_ids, usage)."""
        text, ids, usage = [], [], None
        for chunk in self.generate(prompt, **kwargs):
            text.append(chunk.text)
            ids.extend(chunk.token_ids)
            usage = chunk.usage or usage
        return "".join(text), ids, usage


class AdminClient:
    """The Admin service (its own port); `token` is sent as 'authorization: Bearer <token>'."""

    def __init__(self, address: str, token: Optional[str] = None, *,
                 channel: Optional[grpc.Channel] = None, timeout: Optional[float] = 60.0):
        self._channel = channel or grpc.insecure_channel(address)
        self._owns_channel = channel is None
        self._stub = admin_pb2_grpc.AdminStub(self._channel)
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self.timeout = timeout

    def close(self) -> None:
        if self._owns_channel:
            self._channel.close()

    def __enter__(self) -> "AdminClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _call(self, method, request):
        try:
            return method(request, metadata=self._metadata, timeout=self.timeout)
        except grpc.RpcError as e:
            raise _rpc_error(e) from None

    def set_retention_target(self, retention: float) -> admin_pb2.SetRetentionTargetResponse:
        return self._call(self._stub.SetRetentionTarget,
                          admin_pb2.SetRetentionTargetRequest(retention=retention))

    def set_policy(self, policy: Optional[str] = None, **target) -> admin_pb2.SetPolicyResponse:
        """policy plus at most one of retention / budget_* and profile_mode; unset keeps."""
        return self._call(self._stub.SetPolicy,
                          admin_pb2.SetPolicyRequest(policy=build_kv_policy(policy, **target)))

    def get_config(self) -> admin_pb2.ServiceConfig:
        return self._call(self._stub.GetConfig, admin_pb2.GetConfigRequest()).config

    def get_allocation(self) -> admin_pb2.GetAllocationResponse:
        return self._call(self._stub.GetAllocation, admin_pb2.GetAllocationRequest())

    def get_cluster_status(self) -> admin_pb2.GetClusterStatusResponse:
        return self._call(self._stub.GetClusterStatus, admin_pb2.GetClusterStatusRequest())

    def replan(self, dry_run: bool = False) -> admin_pb2.ReplanResponse:
        return self._call(self._stub.Replan, admin_pb2.ReplanRequest(dry_run=dry_run))

    def drain(self, resume: bool = False, timeout_ms: int = 0) -> admin_pb2.DrainResponse:
        return self._call(self._stub.Drain,
                          admin_pb2.DrainRequest(resume=resume, timeout_ms=timeout_ms))
