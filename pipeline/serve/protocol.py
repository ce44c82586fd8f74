"""The OpenAI chat-completions wire format: requests checked against what this server really does, and responses,
stream chunks and errors shaped as OpenAI shapes them, so that the official clients work unchanged.

A parameter this server cannot honour (`n > 1`, `logprobs`, `tools`, a JSON `response_format`, a penalty, a name it
does not know) is a 400, never silently dropped: a client that asked for it would otherwise trust an answer that
ignored it. Pure Python: no web framework is needed to check a request.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field

ROLES = ("system", "developer", "user", "assistant")
# Informational fields a client may send; they change nothing about the answer, so accepting them is honest.
HARMLESS = ("user", "metadata", "prompt_cache_key", "safety_identifier")
# Fields that are fine at their neutral value and a 400 at any other (value -> is it neutral).
NEUTRAL = {
    "n": lambda v: v in (None, 1),
    "logprobs": lambda v: v in (None, False),
    "top_logprobs": lambda v: v in (None, 0),
    "presence_penalty": lambda v: v in (None, 0, 0.0),
    "frequency_penalty": lambda v: v in (None, 0, 0.0),
    "logit_bias": lambda v: v in (None, {}),
    "tools": lambda v: v in (None, []),
    "functions": lambda v: v in (None, []),
    "tool_choice": lambda v: v in (None, "none"),
    "function_call": lambda v: v in (None, "none"),
    "parallel_tool_calls": lambda v: v is None,
    "response_format": lambda v: v is None or v == {"type": "text"},
    "store": lambda v: v in (None, False),
    "service_tier": lambda v: v in (None, "auto", "default"),
    "modalities": lambda v: v in (None, ["text"]),
    "audio": lambda v: v is None,
    "prediction": lambda v: v is None,
    "reasoning_effort": lambda v: v is None,
    "web_search_options": lambda v: v is None,
    "verbosity": lambda v: v is None,
}
HANDLED = ("model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "stop", "stream",
           "stream_options", "seed")


class ApiError(Exception):
    """An error the client gets as OpenAI sends it: `{"error": {"message", "type", "param", "code"}}`."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


@dataclass(frozen=True)
class Limits:
    max_tokens: int = 512  # the most tokens one answer may ask for
    max_stop: int = 4  # as OpenAI: at most four stop sequences


@dataclass
class ChatRequest:
    messages: list[dict]  # [{"role", "content": str}], roles as the chat template knows them
    max_tokens: int | None = None  # None: as many as the limit and the context leave
    temperature: float = 0.0  # greedy unless asked otherwise (OpenAI's default is 1; a store answers reproducibly)
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    stream: bool = False
    include_usage: bool = False
    seed: int | None = None

    @property
    def question(self) -> str:
        """What a library routes on: the last user turn."""
        return next((m["content"] for m in reversed(self.messages) if m["role"] == "user"), "")


def _bad(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, param=param, code=code)


def _number(body: dict, name: str, default: float, low: float, high: float, *, low_open: bool = False) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _bad(f"{name} must be a number", name, "invalid_type")
    if value < low or value > high or (low_open and value == low):
        span = f"({low}, {high}]" if low_open else f"[{low}, {high}]"
        raise _bad(f"{name} is {value}; it must be in {span}", name, "invalid_value")
    return float(value)


def _content(message: dict, i: int) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: text only (this student reads no images or audio)
        parts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise _bad(f"messages[{i}].content: only text parts are supported, not {kind!r}",
                           f"messages[{i}].content", "unsupported_content")
            parts.append(part["text"])
        return "".join(parts)
    raise _bad(f"messages[{i}].content must be a string or a list of text parts", f"messages[{i}].content",
               "invalid_type")


def _messages(value) -> list[dict]:
    if not isinstance(value, list) or not value:
        raise _bad("messages must be a non-empty list of {role, content} objects", "messages", "invalid_type")
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict):
            raise _bad(f"messages[{i}] must be an object", f"messages[{i}]", "invalid_type")
        role = m.get("role")
        if role not in ROLES:
            raise _bad(f"messages[{i}].role {role!r} is not supported (tools are not); use one of {', '.join(ROLES)}",
                       f"messages[{i}].role", "invalid_value")
        if m.get("tool_calls") or m.get("function_call") or m.get("audio"):
            raise _bad(f"messages[{i}]: tool calls and audio are not supported", f"messages[{i}]", "unsupported")
        # Chat templates know "system"; OpenAI's newer "developer" role means the same to a local model.
        out.append({"role": "system" if role == "developer" else role, "content": _content(m, i)})
    return out


def _stop(value, limits: Limits) -> list[str]:
    if value is None:
        return []
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
        raise _bad("stop must be a non-empty string or a list of them", "stop", "invalid_type")
    if len(stops) > limits.max_stop:
        raise _bad(f"stop holds {len(stops)} sequences; at most {limits.max_stop}", "stop", "invalid_value")
    return stops


def _max_tokens(body: dict, limits: Limits) -> int | None:
    name = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(f"{name} must be an integer", name, "invalid_type")
    if not 1 <= value <= limits.max_tokens:
        raise _bad(f"{name} is {value}; this server allows 1 to {limits.max_tokens} (--max-tokens-limit)", name,
                   "invalid_value")
    return value


def parse_chat(raw: bytes, model_id: str, limits: Limits) -> ChatRequest:
    """The request body checked: a ChatRequest, or the ApiError the client should get."""
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise _bad("We could not parse the JSON body of your request: it is not valid JSON.") from None
    if not isinstance(body, dict):
        raise _bad("the request body must be a JSON object")
    for name, neutral in NEUTRAL.items():
        if name in body and not neutral(body[name]):
            raise _bad(f"{name}={json.dumps(body[name])[:80]} is not supported by this server", name, "unsupported_parameter")
    unknown = sorted(k for k in body if k not in HANDLED and k not in NEUTRAL and k not in HARMLESS)
    if unknown:
        raise _bad(f"Unrecognized request argument supplied: {unknown[0]}", unknown[0], "unsupported_parameter")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _bad("model is required (GET /v1/models lists it)", "model", "invalid_type")
    if model != model_id:
        raise ApiError(404, f"The model {model!r} does not exist here; this server serves {model_id!r}",
                       param="model", code="model_not_found")
    stream = body.get("stream")
    if stream not in (None, True, False):
        raise _bad("stream must be a boolean", "stream", "invalid_type")
    options = body.get("stream_options")
    if options is not None:
        if not stream:
            raise _bad("stream_options is only allowed with stream=true", "stream_options", "invalid_value")
        if not isinstance(options, dict) or set(options) - {"include_usage"}:
            raise _bad("stream_options supports only include_usage", "stream_options", "unsupported_parameter")
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise _bad("seed must be an integer", "seed", "invalid_type")
    return ChatRequest(
        messages=_messages(body.get("messages")), max_tokens=_max_tokens(body, limits),
        temperature=_number(body, "temperature", 0.0, 0.0, 2.0), top_p=_number(body, "top_p", 1.0, 0.0, 1.0, low_open=True),
        stop=_stop(body.get("stop"), limits), stream=bool(stream),
        include_usage=bool((options or {}).get("include_usage")), seed=seed)


# ------------------------------------------------------------------------------------------------- responses
def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex[:24]}"


def _usage(prompt: int, completion: int) -> dict:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def completion_body(cid: str, model_id: str, tag: dict, text: str, finish: str, prompt: int, completion: int) -> dict:
    return {"id": cid, "object": "chat.completion", "created": int(time.time()), "model": model_id,
            "system_fingerprint": tag["fingerprint"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text, "refusal": None},
                         "logprobs": None, "finish_reason": finish}],
            "usage": _usage(prompt, completion), "seal_tt": tag["seal_tt"]}


def chunk_body(cid: str, model_id: str, tag: dict, delta: dict | None, finish: str | None = None,
               usage: tuple[int, int] | None = None) -> dict:
    """One stream chunk; `delta` None with `usage` is the closing usage chunk (no choices), as OpenAI sends it."""
    body = {"id": cid, "object": "chat.completion.chunk", "created": int(time.time()), "model": model_id,
            "system_fingerprint": tag["fingerprint"], "seal_tt": tag["seal_tt"],
            "choices": [] if delta is None else [{"index": 0, "delta": delta, "logprobs": None,
                                                   "finish_reason": finish}]}
    if usage is not None:
        body["usage"] = _usage(*usage)
    return body


def sse(data: dict | str) -> bytes:
    return f"data: {data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)}\n\n".encode()


def models_body(model_id: str, created: int) -> dict:
    return {"object": "list", "data": [model_entry(model_id, created)]}


def model_entry(model_id: str, created: int) -> dict:
    return {"id": model_id, "object": "model", "created": created, "owned_by": "seal-tt"}
