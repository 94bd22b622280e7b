"""``kind: llm`` and ``kind: agent``: chat completions through the official
``openai`` client, streamed token by token, against any OpenAI-compatible
endpoint (OpenAI, vLLM, Ollama, llama.cpp, LiteLLM, ...).

An ``llm`` node makes one model call; an ``agent`` node loops: the model asks
for tools, the agent runs them (python callables, HTTP requests, registered
workflows) and sends their results back, until the model answers. Both
report usage under OpenTelemetry's GenAI names and one ``api_call`` event per
model call; docs/runners.md tells the params, outputs, events and errors.

The API key is read where the node runs, from the environment variable
``params.api_key_env`` names, and never leaves the process: not in an event,
a log, the output, an error or the usage.

``openai`` takes a third of a second to import: it is imported (off the event
loop) when the first model call is made, not when the runners are built.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import importlib
import inspect
import json
import math
import os
import re
import threading
import time
import weakref
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema

from executors.base import NodeContext, NodeError, NodeTask, describe_error
from executors.http_runner import check_request, http_call, retry_after_ms
from executors.runners import resolve_callable

BASE_URL_ENV = "STATEPIPE_LLM_BASE_URL"
PRICES_ENV = "STATEPIPE_LLM_PRICES"
DEFAULT_KEY_ENV = "OPENAI_API_KEY"
# Sent when the default variable is unset: local servers want no key, but the
# openai client wants one.
PLACEHOLDER_KEY = "statepipe-no-key"
DEFAULT_TIMEOUT_MS = 600_000  # the openai client's own default
DEFAULT_MAX_STEPS = 10
MAX_CLIENTS_PER_LOOP = 32
SERVER_MESSAGE_CHARS = 500  # of a server's error message, in the node's error

MODEL_PARAMS = (
    "model",
    "base_url",
    "api_key_env",
    "messages",
    "prompt",
    "system",
    "temperature",
    "max_tokens",
    "top_p",
    "stop",
    "seed",
    "tools",
    "tool_choice",
    "response_format",
    "timeout_ms",
    "price",
    "extra_body",
    "headers",
)
AGENT_PARAMS = (*MODEL_PARAMS, "max_steps")
TOOL_KINDS = ("callable", "http", "workflow")
TOOL_KEYS = ("name", "description", "parameters", *TOOL_KINDS, "version")
# The request fields an http tool may fix; the model's arguments are the body
# (or, for GET, HEAD and DELETE, the query).
HTTP_TOOL_FIXED = ("json", "body")
QUERY_METHODS = ("GET", "HEAD", "DELETE")
RESPONSE_FORMATS = ("text", "json_object", "json_schema")
TOOL_CHOICES = ("none", "auto", "required")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
TOOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_FENCED = re.compile(r"^```[A-Za-z0-9_-]*\s*\n(.*?)\n?```\s*$", re.DOTALL)


# ------------------------------------------------------------------ params


def _is_template(value: Any) -> bool:
    return isinstance(value, str) and "{{" in value


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _is_whole(value: Any) -> bool:
    # Numbers in params cross protobuf as floats: 100.0 is 100.
    return _is_number(value) and value == int(value)


def _whole_ints(value: Any) -> Any:
    """`value` with whole floats as ints (servers refuse max_tokens 100.0)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, Mapping):
        return {k: _whole_ints(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_whole_ints(v) for v in value]
    return value


def _check_schema(schema: Any, where: str) -> None:
    if not isinstance(schema, Mapping):
        raise ValueError(f"{where} must be a JSON Schema (an object)")
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    try:
        cls.check_schema(schema)
    except jsonschema.SchemaError as err:
        at = "/".join(map(str, err.absolute_path)) or "(root)"
        raise ValueError(f"{where} is not a valid JSON Schema at {at}: {err.message}") from None


def check_model_params(params: Mapping[str, Any], kind: str, *, templates: bool) -> None:
    """Raises ValueError naming the field when `params` cannot make a model call.

    With `templates`, a value that is still a template (a string holding
    ``{{``) passes: it is checked again once rendered.
    """

    def loose(value: Any) -> bool:
        return templates and _is_template(value)

    if "api_key" in params:
        raise ValueError(
            "params.api_key is not accepted (the key would be stored with every run): put the "
            "key in an environment variable where the node runs and name it in params.api_key_env"
        )
    known = AGENT_PARAMS if kind == "agent" else MODEL_PARAMS
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise ValueError(
            f"params.{unknown[0]} is not a param of kind {kind}; known: {', '.join(known)}"
        )

    model = params.get("model")
    if model is None or model == "":
        raise ValueError("params.model is required")
    if not isinstance(model, str):
        raise ValueError(f"params.model must be a string, not {type(model).__name__}")

    base_url = params.get("base_url")
    if base_url is not None and not loose(base_url):
        if not isinstance(base_url, str):
            raise ValueError("params.base_url must be a string")
        parts = urlsplit(base_url)
        if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
            raise ValueError(f"params.base_url {base_url!r} must be an http:// or https:// URL")

    key_env = params.get("api_key_env")
    if key_env is not None and not (isinstance(key_env, str) and ENV_NAME.match(key_env)):
        raise ValueError(
            f"params.api_key_env must name an environment variable (like OPENAI_API_KEY), "
            f"not {key_env!r}"
        )

    messages = params.get("messages")
    if messages is not None and not loose(messages):
        if not isinstance(messages, list):
            raise ValueError("params.messages must be a list of {role, content} objects")
        for i, message in enumerate(messages):
            if loose(message):
                continue
            if not isinstance(message, Mapping):
                raise ValueError(f"params.messages[{i}] must be a {{role, content}} object")
            if not isinstance(message.get("role"), str) or not message.get("role"):
                raise ValueError(f"params.messages[{i}].role is required (system, user, ...)")
    for name in ("prompt", "system"):
        value = params.get(name)
        if value is not None and not isinstance(value, str) and templates:
            raise ValueError(f"params.{name} must be text")
    if not messages and params.get("prompt") in (None, ""):
        raise ValueError("params.prompt or params.messages is required")

    for name in ("temperature", "top_p"):
        value = params.get(name)
        if value is not None and not loose(value) and not _is_number(value):
            raise ValueError(f"params.{name} must be a number, not {value!r}")
    for name in ("max_tokens", "timeout_ms"):
        value = params.get(name)
        if value is not None and not loose(value) and not (_is_whole(value) and value > 0):
            raise ValueError(f"params.{name} must be a positive whole number, not {value!r}")
    seed = params.get("seed")
    if seed is not None and not loose(seed) and not _is_whole(seed):
        raise ValueError(f"params.seed must be a whole number, not {seed!r}")
    stop = params.get("stop")
    if stop is not None and not loose(stop):
        stops = stop if isinstance(stop, list) else [stop]
        if not all(isinstance(s, str) for s in stops):
            raise ValueError("params.stop must be a string or a list of strings")

    tool_choice = params.get("tool_choice")
    if tool_choice is not None and not loose(tool_choice):
        if not (tool_choice in TOOL_CHOICES or isinstance(tool_choice, Mapping)):
            raise ValueError(
                f"params.tool_choice must be one of {', '.join(TOOL_CHOICES)} or an object "
                '({"type": "function", "function": {"name": ...}})'
            )

    response_format = params.get("response_format")
    if response_format is not None and not loose(response_format):
        _check_response_format(response_format)

    price = params.get("price")
    if price is not None and not loose(price):
        _check_price(price, "params.price")

    extra_body = params.get("extra_body")
    if extra_body is not None and not loose(extra_body) and not isinstance(extra_body, Mapping):
        raise ValueError("params.extra_body must be an object (merged into the request body)")
    headers = params.get("headers")
    if headers is not None and not loose(headers):
        if not isinstance(headers, Mapping):
            raise ValueError("params.headers must be an object of header names to values")
        for name, value in headers.items():
            if str(name).lower() in ("authorization", "api-key", "x-api-key"):
                raise ValueError(
                    f"params.headers.{name}: keys do not belong in params (they are stored "
                    "with every run); name the environment variable in params.api_key_env"
                )
            if not isinstance(value, str) and not loose(value):
                raise ValueError(f"params.headers.{name} must be a string")

    tools = params.get("tools")
    if tools is not None and not loose(tools):
        if kind == "agent":
            _check_agent_tools(tools, templates=templates)
        else:
            _check_openai_tools(tools, templates=templates)
    elif kind == "agent" and tools is None:
        raise ValueError("params.tools is required: the tools the agent may call")

    if kind == "agent":
        max_steps = params.get("max_steps")
        if max_steps is not None and not loose(max_steps):
            if not (_is_whole(max_steps) and max_steps >= 1):
                raise ValueError(f"params.max_steps must be a positive integer, not {max_steps!r}")


def _check_response_format(value: Any) -> None:
    if not isinstance(value, Mapping) or value.get("type") not in RESPONSE_FORMATS:
        raise ValueError(
            'params.response_format must be {"type": "json_object"}, {"type": "json_schema", '
            '"json_schema": {"name": ..., "schema": {...}}} or {"type": "text"}'
        )
    if value["type"] == "json_schema":
        spec = value.get("json_schema")
        if not isinstance(spec, Mapping):
            raise ValueError(
                "params.response_format.json_schema is required with type json_schema: "
                '{"name": ..., "schema": {...}}'
            )
        if "schema" in spec:
            _check_schema(spec["schema"], "params.response_format.json_schema.schema")


def _check_price(value: Any, where: str) -> None:
    if not isinstance(value, Mapping):
        raise ValueError(f"{where} must be {{input_per_million, output_per_million}}")
    for name in ("input_per_million", "output_per_million"):
        number = value.get(name, 0)
        if not _is_number(number) or number < 0:
            raise ValueError(f"{where}.{name} must be a number of at least 0, not {number!r}")
    unknown = sorted(set(value) - {"input_per_million", "output_per_million"})
    if unknown:
        raise ValueError(f"{where}.{unknown[0]} is not a price field")


def _tool_label(i: int, tool: Any, name: Any) -> str:
    return f"params.tools[{i}]" + (f" ({name})" if isinstance(name, str) and name else "")


def _check_openai_tools(tools: Any, *, templates: bool) -> None:
    if not isinstance(tools, list):
        raise ValueError("params.tools must be a list of function tools")
    for i, tool in enumerate(tools):
        if templates and _is_template(tool):
            continue
        if not isinstance(tool, Mapping):
            raise ValueError(f"params.tools[{i}] must be a function tool object")
        if tool.get("type", "function") != "function":
            raise ValueError(f"params.tools[{i}].type must be 'function'")
        function = tool.get("function")
        name = function.get("name") if isinstance(function, Mapping) else None
        where = _tool_label(i, tool, name)
        if not isinstance(function, Mapping) or not isinstance(name, str) or not name:
            raise ValueError(f"{where} needs function.name (and function.parameters)")
        if "parameters" not in function:
            raise ValueError(f"{where} needs a JSON Schema in function.parameters")
        _check_schema(function["parameters"], f"{where}.function.parameters")


def _check_agent_tools(tools: Any, *, templates: bool) -> None:
    if not isinstance(tools, list) or not tools:
        raise ValueError(
            "params.tools must be a non-empty list of {name, description, parameters, "
            "callable | http | workflow}"
        )
    seen: set[str] = set()
    for i, tool in enumerate(tools):
        if templates and _is_template(tool):
            continue
        if not isinstance(tool, Mapping):
            raise ValueError(f"params.tools[{i}] must be an object")
        name = tool.get("name")
        where = _tool_label(i, tool, name)
        if not isinstance(name, str) or not TOOL_NAME.match(name):
            raise ValueError(
                f"{where}.name is required: 1 to 64 letters, digits, _ or - (not {name!r})"
            )
        if name in seen:
            raise ValueError(f"{where}: another tool has the name {name!r}")
        seen.add(name)
        unknown = sorted(set(tool) - set(TOOL_KEYS))
        if unknown:
            raise ValueError(
                f"{where}.{unknown[0]} is not a tool field; known: {', '.join(TOOL_KEYS)}"
            )
        if "parameters" not in tool:
            raise ValueError(f"{where} needs a JSON Schema in parameters")
        _check_schema(tool["parameters"], f"{where}.parameters")
        description = tool.get("description")
        if description is not None and not isinstance(description, str):
            raise ValueError(f"{where}.description must be text")
        kinds = [k for k in TOOL_KINDS if k in tool]
        if len(kinds) != 1:
            raise ValueError(
                f"{where} needs exactly one of callable, http or workflow"
                + (f" (it has {' and '.join(kinds)})" if kinds else "")
            )
        if "version" in tool and "workflow" not in tool:
            raise ValueError(f"{where}.version goes with workflow only")
        target = tool[kinds[0]]
        if kinds[0] == "callable":
            if not isinstance(target, str) or ":" not in target:
                raise ValueError(f"{where}.callable must be a string 'package.module:function'")
        elif kinds[0] == "workflow":
            if not isinstance(target, str) or not target:
                raise ValueError(f"{where}.workflow must name a registered workflow")
            version = tool.get("version")
            if version is not None and not isinstance(version, str | int | float):
                raise ValueError(f"{where}.version must be text")
        else:
            if not isinstance(target, Mapping):
                raise ValueError(f"{where}.http must be a request {{method, url, headers, ...}}")
            fixed = [k for k in HTTP_TOOL_FIXED if k in target]
            if fixed:
                raise ValueError(
                    f"{where}.http.{fixed[0]}: the model's arguments are the request's body "
                    "(or its query for GET); leave it out"
                )
            check_request(target, f"{where}.http")


# ------------------------------------------------------------------ openai, lazily

_OPENAI: Any = None


async def _openai() -> Any:
    """The openai module, imported in a thread the first time (it is slow to import)."""
    global _OPENAI
    if _OPENAI is None:
        _OPENAI = await asyncio.to_thread(_import_openai)
    return _OPENAI


def _import_openai() -> Any:
    module = importlib.import_module("openai")
    # The client loads these on its first call, on the event loop (~0.2 s): load them here.
    importlib.import_module("openai.resources.chat.completions")
    importlib.import_module("openai.types.chat")
    return module


# One cache per event loop: a client's connections belong to its loop.
_CLIENTS: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, collections.OrderedDict[tuple[str, str, float], Any]
] = weakref.WeakKeyDictionary()
_CLIENTS_LOCK = threading.Lock()
_CLOSING: set[asyncio.Task[Any]] = set()


def _client(module: Any, base_url: str | None, api_key: str, timeout_s: float) -> Any:
    """The AsyncOpenAI client for (base_url, key, timeout) on this loop, made once:
    connections are kept and reused. max_retries=0: statepipe's retry policy decides."""
    loop = asyncio.get_running_loop()
    key = (base_url or "", api_key, timeout_s)
    with _CLIENTS_LOCK:
        clients = _CLIENTS.get(loop)
        if clients is None:
            clients = _CLIENTS[loop] = collections.OrderedDict()
        client = clients.get(key)
        if client is not None and not client.is_closed():
            clients.move_to_end(key)
            return client
        client = module.AsyncOpenAI(
            api_key=api_key, base_url=base_url, max_retries=0, timeout=timeout_s
        )
        clients[key] = client
        while len(clients) > MAX_CLIENTS_PER_LOOP:
            _, old = clients.popitem(last=False)
            _close_later(loop, old)
        return client


def _close_later(loop: asyncio.AbstractEventLoop, client: Any) -> None:
    task = loop.create_task(client.close())
    _CLOSING.add(task)
    task.add_done_callback(_CLOSING.discard)


def close_clients() -> None:
    """Closes the cached clients (from any thread; those of closed loops are dropped)."""
    with _CLIENTS_LOCK:
        entries = [(loop, list(clients.values())) for loop, clients in _CLIENTS.items()]
        _CLIENTS.clear()
    try:
        current = asyncio.get_running_loop()
    except RuntimeError:
        current = None
    for loop, clients in entries:
        if loop.is_closed():
            continue
        for client in clients:
            if loop is current:
                _close_later(loop, client)
            elif loop.is_running():
                future = asyncio.run_coroutine_threadsafe(client.close(), loop)
                with contextlib.suppress(Exception):
                    future.result(timeout=2)


# ------------------------------------------------------------------ prices

_PRICES: dict[str, tuple[int, dict[str, Any]]] = {}  # path -> (mtime_ns, table)


def price_table() -> dict[str, Any]:
    """The table the file named by STATEPIPE_LLM_PRICES holds (JSON or YAML:
    model -> {input_per_million, output_per_million}); {} without one.

    Raises:
        ValueError: the file cannot be read or holds no such table.
    """
    path = os.environ.get(PRICES_ENV)
    if not path:
        return {}
    try:
        mtime = os.stat(path).st_mtime_ns
    except OSError as err:
        raise ValueError(f"{PRICES_ENV}={path}: {err.strerror}") from None
    cached = _PRICES.get(path)
    if cached is not None and cached[0] == mtime:
        return cached[1]
    text = Path(path).read_text()
    try:
        table = json.loads(text)
    except ValueError:
        import yaml

        try:
            table = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise ValueError(f"{PRICES_ENV}={path} is neither JSON nor YAML: {err}") from None
    if not isinstance(table, Mapping):
        raise ValueError(f"{PRICES_ENV}={path} must map model names to prices")
    for model, price in table.items():
        _check_price(price, f"{PRICES_ENV}: {model}")
    _PRICES[path] = (mtime, dict(table))
    return _PRICES[path][1]


def _price_for(
    ctx: NodeContext, params: Mapping[str, Any], models: tuple[str, ...]
) -> Mapping[str, Any] | None:
    if params.get("price") is not None:
        return params["price"]
    try:
        table = price_table()
    except (OSError, ValueError) as err:
        ctx.log(f"no cost recorded: {err}", level="warning")
        return None
    for model in models:
        if model and model in table:
            return table[model]
    return None


def _cost(price: Mapping[str, Any] | None, input_tokens: Any, output_tokens: Any) -> float | None:
    if price is None or not (_is_number(input_tokens) or _is_number(output_tokens)):
        return None
    return (
        (input_tokens or 0) * float(price.get("input_per_million", 0))
        + (output_tokens or 0) * float(price.get("output_per_million", 0))
    ) / 1_000_000


# ------------------------------------------------------------------ one model call


@dataclasses.dataclass
class ToolCall:
    """A tool call the model made, assembled from its deltas."""

    id: str
    name: str
    arguments_text: str

    @property
    def arguments(self) -> Any:
        """The arguments parsed, or their raw text when they are not JSON."""
        if not self.arguments_text.strip():
            return {}
        try:
            return json.loads(self.arguments_text)
        except ValueError:
            return self.arguments_text


@dataclasses.dataclass
class Completion:
    """What one streamed model call gave."""

    text: str
    tool_calls: list[ToolCall]
    finish_reason: str | None
    response_model: str
    input_tokens: int | None
    output_tokens: int | None
    ttft_s: float | None
    duration_s: float
    chunks: int
    cost: float | None = None


@dataclasses.dataclass
class ModelCall:
    """The settings of a node's model calls, resolved where it runs."""

    client: Any
    module: Any
    model: str
    request: dict[str, Any]  # all but messages
    address: str  # host[:port], for messages and server.address
    host: str
    port: int | None
    timeout_ms: int
    key: str  # only to scrub it from messages, never sent anywhere else
    key_env: str
    key_given: bool  # False: the placeholder went (the variable was unset)
    params: Mapping[str, Any]


async def model_call(ctx: NodeContext, params: Mapping[str, Any], tools: list[Any]) -> ModelCall:
    """Resolves base_url, the key and the client; `tools` are OpenAI function tools."""
    module = await _openai()
    explicit = params.get("api_key_env")
    key_env = explicit or DEFAULT_KEY_ENV
    key = os.environ.get(key_env) or ""
    if not key and explicit:
        raise NodeError(
            f"params.api_key_env: environment variable {key_env!r} is not set where this node runs",
            retryable=False,
        )
    base_url = params.get("base_url") or os.environ.get(BASE_URL_ENV) or None
    timeout_ms = int(params.get("timeout_ms") or DEFAULT_TIMEOUT_MS)
    client = _client(module, base_url, key or PLACEHOLDER_KEY, timeout_ms / 1000)
    parts = urlsplit(str(client.base_url))
    host = parts.hostname or ""
    port = parts.port
    address = f"{host}:{port}" if port else host

    request: dict[str, Any] = {
        "model": params["model"],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    for name in ("temperature", "max_tokens", "top_p", "stop", "seed", "response_format"):
        if params.get(name) is not None:
            request[name] = params[name]
    if tools:
        request["tools"] = tools
        if params.get("tool_choice") is not None:
            request["tool_choice"] = params["tool_choice"]
    if params.get("extra_body"):
        request["extra_body"] = dict(params["extra_body"])
    if params.get("headers"):
        request["extra_headers"] = {str(k): str(v) for k, v in params["headers"].items()}
    return ModelCall(
        client,
        module,
        str(params["model"]),
        request,
        address,
        host,
        port,
        timeout_ms,
        key,
        key_env,
        bool(key),
        params,
    )


def _iso_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _one_line(text: str) -> str:
    return " ".join(text.split())


class _Stream:
    """The state of one streamed call, for its result and its error messages."""

    def __init__(self, call: ModelCall) -> None:
        self.call = call
        self.chunks = 0
        self.tokens = 0
        self.parts: list[str] = []
        self.calls: dict[int, ToolCall] = {}
        self.finish_reason: str | None = None
        self.response_model = ""
        self.input_tokens: int | None = None
        self.output_tokens: int | None = None
        self.first_at: float | None = None
        self.announced = 0  # tool calls below this index had their tool_call event

    def progress(self) -> str:
        tokens = f"{self.tokens} token" + ("" if self.tokens == 1 else "s")
        chunks = f"{self.chunks} chunk" + ("" if self.chunks == 1 else "s")
        return f"after {chunks}, {tokens}"


async def stream_completion(
    ctx: NodeContext,
    call: ModelCall,
    messages: list[dict[str, Any]],
    *,
    step: int | None = None,
    announce_tool_calls: bool = True,
) -> Completion:
    """One streamed chat completion: tokens as they come, tool calls once
    whole (as tool_call events when `announce_tool_calls`), one api_call event.

    Raises:
        NodeError: the call failed (see docs/runners.md for which are retryable).
    """
    state = _Stream(call)
    started_at = _iso_now()
    started = time.perf_counter()
    error: NodeError | None = None
    try:
        async with asyncio.timeout(call.timeout_ms / 1000):
            stream = await call.client.chat.completions.create(messages=messages, **call.request)
            async with stream:
                await _consume(ctx, state, stream, started, step, announce_tool_calls)
    except asyncio.CancelledError:
        _api_call(ctx, call, state, started_at, started, step, "cancelled", None)
        raise
    except Exception as err:
        error = _call_error(call, state, err)
    duration = time.perf_counter() - started
    if error is None and state.finish_reason is None:
        error = NodeError(
            f"{_where(call)}: the stream ended without a finish_reason {state.progress()}",
            retryable=True,
        )
    cost = None
    if error is None:
        models = (state.response_model, call.model)
        cost = _cost(_price_for(ctx, call.params, models), state.input_tokens, state.output_tokens)
    _api_call(ctx, call, state, started_at, started, step, str(error) if error else None, cost)
    if error is not None:
        raise error
    if announce_tool_calls and state.calls:
        _announce(ctx, state, max(state.calls) + 1, step)
    ttft = None if state.first_at is None else state.first_at - started
    return Completion(
        "".join(state.parts),
        [state.calls[i] for i in sorted(state.calls)],
        state.finish_reason,
        state.response_model or call.model,
        state.input_tokens,
        state.output_tokens,
        ttft,
        duration,
        state.chunks,
        cost,
    )


async def _consume(
    ctx: NodeContext,
    state: _Stream,
    stream: Any,
    started: float,
    step: int | None,
    announce: bool,
) -> None:
    token = ctx.token
    async for chunk in stream:
        state.chunks += 1
        if chunk.model and not state.response_model:
            state.response_model = chunk.model
        usage = chunk.usage
        if usage is not None:
            state.input_tokens = usage.prompt_tokens
            state.output_tokens = usage.completion_tokens
        for choice in chunk.choices or ():
            if choice.index:
                continue  # n > 1 is not asked for; keep the first choice only
            delta = choice.delta
            if delta is not None:
                content = delta.content
                if content:
                    if state.first_at is None:
                        state.first_at = time.perf_counter()
                    state.tokens += 1
                    state.parts.append(content)
                    # Each delta goes out the moment it arrives.
                    if step is None:
                        token(content)
                    else:
                        token(content, step=step)
                if delta.tool_calls:
                    if state.first_at is None:
                        state.first_at = time.perf_counter()
                    for piece in delta.tool_calls:
                        index = piece.index if piece.index is not None else len(state.calls)
                        if announce and index > state.announced:
                            # A later call started: the earlier ones are whole.
                            _announce(ctx, state, index, step)
                        _add_piece(state, index, piece)
            if choice.finish_reason:
                state.finish_reason = choice.finish_reason


def _add_piece(state: _Stream, index: int, piece: Any) -> None:
    entry = state.calls.get(index)
    if entry is None:
        entry = state.calls[index] = ToolCall("", "", "")
    if piece.id:
        entry.id = piece.id
    function = piece.function
    if function is not None:
        if function.name:
            if not entry.name:
                entry.name = function.name
            elif function.name != entry.name:
                entry.name += function.name
        if function.arguments:
            entry.arguments_text += function.arguments


def _announce(ctx: NodeContext, state: _Stream, upto: int, step: int | None) -> None:
    """tool_call events for the whole calls not announced yet with indexes below `upto`."""
    for index in sorted(i for i in state.calls if state.announced <= i < upto):
        call = state.calls[index]
        extra = {} if step is None else {"step": step}
        ctx.tool_call(call.name, arguments=call.arguments, call_id=call.id, **extra)
    state.announced = max(state.announced, upto)


def _where(call: ModelCall) -> str:
    return f"model {call.model!r} at {call.address}"


def _scrub(text: str, call: ModelCall) -> str:
    if call.key and len(call.key) >= 4:
        text = text.replace(call.key, "***")
    return text


def _server_message(err: Any) -> str:
    body = getattr(err, "body", None)
    if isinstance(body, Mapping):
        message = body.get("message") or body.get("detail") or body.get("error")
        text = message if isinstance(message, str) else json.dumps(body, default=str)
    elif isinstance(body, str) and body:
        text = body
    else:
        response = getattr(err, "response", None)
        try:
            text = response.text if response is not None else ""
        except Exception:  # a streamed body not read
            text = ""
        text = text or ""
    text = _one_line(text)
    if len(text) > SERVER_MESSAGE_CHARS:
        text = text[:SERVER_MESSAGE_CHARS] + "..."
    return text


def _call_error(call: ModelCall, state: _Stream, err: Exception) -> NodeError:
    """The one-line NodeError for a failed call (never the key, never a traceback)."""
    module = call.module
    where = _where(call)
    if isinstance(err, NodeError):
        return err
    if isinstance(err, module.APIStatusError):
        status = err.status_code
        response = err.response
        reason = getattr(response, "reason_phrase", "") or ""
        message = f"{where}: HTTP {status} {reason}".rstrip()
        server = _server_message(err)
        if server and server != reason:
            message += f": {server}"
        if status == 401 and not call.key_given:
            message += (
                f" (no key was sent: the environment variable {call.key_env} is not set "
                "where this node runs; set it, or name another in params.api_key_env)"
            )
        message = _scrub(message, call)
        if status in (408, 409, 429) or status >= 500:
            headers = response.headers
            wait = 0
            raw_ms = headers.get("retry-after-ms")
            if raw_ms:
                with contextlib.suppress(ValueError):
                    wait = max(0, int(float(raw_ms)))
            if not wait:
                wait = retry_after_ms(headers.get("retry-after"))
            return NodeError(message, retryable=True, retry_after_ms=wait)
        return NodeError(message, retryable=False)
    if isinstance(err, TimeoutError | module.APITimeoutError) or _is_httpx_timeout(err):
        return NodeError(
            f"{where}: timed out after {call.timeout_ms} ms {state.progress()}", retryable=True
        )
    if isinstance(err, module.APIConnectionError):
        cause = err.__cause__ or err.__context__
        reason = _one_line(str(cause)) if cause is not None and str(cause) else str(err)
        return NodeError(_scrub(f"{where}: cannot connect: {reason}", call), retryable=True)
    if isinstance(err, module.APIError):
        # An error event inside the stream.
        server = _server_message(err) or str(err)
        return NodeError(
            _scrub(f"{where}: the server sent an error {state.progress()}: {server}", call),
            retryable=True,
        )
    if isinstance(err, json.JSONDecodeError):
        return NodeError(
            f"{where}: chunk {state.chunks + 1} of the stream is not valid JSON ({err.msg}), "
            f"{state.progress()}",
            retryable=True,
        )
    if _is_httpx_error(err):
        reason = _one_line(str(err)) or type(err).__name__
        return NodeError(
            _scrub(f"{where}: the stream was cut {state.progress()}: {reason}", call),
            retryable=True,
        )
    return NodeError(
        _scrub(f"{where}: the call failed {state.progress()}: {describe_error(err)}", call),
        retryable=True,
    )


def _is_httpx_error(err: BaseException) -> bool:
    import httpx

    return isinstance(err, httpx.HTTPError | httpx.StreamError)


def _is_httpx_timeout(err: BaseException) -> bool:
    import httpx

    return isinstance(err, httpx.TimeoutException)


def _api_call(
    ctx: NodeContext,
    call: ModelCall,
    state: _Stream,
    started_at: str,
    started: float,
    step: int | None,
    error: str | None,
    cost: float | None,
) -> None:
    """The api_call event of one model call (the console's trace shows it)."""
    duration = time.perf_counter() - started
    data: dict[str, Any] = {
        "gen_ai.operation.name": "chat",
        "gen_ai.request.model": call.model,
        "server.address": call.host,
    }
    if call.port:
        data["server.port"] = call.port
    if state.response_model:
        data["gen_ai.response.model"] = state.response_model
    if state.input_tokens is not None:
        data["gen_ai.usage.input_tokens"] = state.input_tokens
    if state.output_tokens is not None:
        data["gen_ai.usage.output_tokens"] = state.output_tokens
    if state.finish_reason:
        data["gen_ai.response.finish_reasons"] = [state.finish_reason]
    if state.first_at is not None:
        data["gen_ai.server.time_to_first_token"] = state.first_at - started
    data["gen_ai.server.request.duration"] = duration
    if cost is not None:
        data["gen_ai.usage.cost"] = cost
    if step is not None:
        data["step"] = step
    data.update(
        started_at=started_at,
        duration_ms=round(duration * 1000, 3),
        chunks=state.chunks,
        tokens=state.tokens,
        error=error,
    )
    ctx.emit("api_call", message=f"chat {call.model}", **data)


def completion_usage(completion: Completion, model: str) -> dict[str, Any]:
    """The usage of one call that adds up over calls (tokens, duration, cost)."""
    usage: dict[str, Any] = {
        "gen_ai.request.model": model,
        "gen_ai.response.model": completion.response_model,
        "gen_ai.server.request.duration": completion.duration_s,
    }
    if completion.input_tokens is not None:
        usage["gen_ai.usage.input_tokens"] = completion.input_tokens
    if completion.output_tokens is not None:
        usage["gen_ai.usage.output_tokens"] = completion.output_tokens
    if completion.cost is not None:
        usage["gen_ai.usage.cost"] = completion.cost
    return usage


def _set_rates(ctx: NodeContext, generating_s: float) -> None:
    output = ctx.usage.get("gen_ai.usage.output_tokens")
    if _is_number(output) and generating_s > 0:
        ctx.set_usage(**{"gen_ai.usage.output_tokens_per_second": output / generating_s})


# ------------------------------------------------------------------ messages and output


def _content(value: Any) -> Any:
    """Message content: text and content-part lists as they are, other JSON as text."""
    if value is None or isinstance(value, str | list):
        return value
    return json.dumps(value, ensure_ascii=False)


def build_messages(params: Mapping[str, Any]) -> list[dict[str, Any]]:
    """params.system, then params.messages, then params.prompt as a user message."""
    messages: list[dict[str, Any]] = []
    if params.get("system") not in (None, ""):
        messages.append({"role": "system", "content": _content(params["system"])})
    for message in params.get("messages") or []:
        entry = dict(message)
        if "content" in entry:
            entry["content"] = _content(entry["content"])
        messages.append(entry)
    if params.get("prompt") not in (None, ""):
        messages.append({"role": "user", "content": _content(params["prompt"])})
    return messages


def final_output(completion: Completion, params: Mapping[str, Any]) -> Any:
    """The node's output: the text; the parsed JSON with response_format; or
    {content, tool_calls} when the model ended asking for tools."""
    if completion.tool_calls:
        return {
            "content": completion.text or None,
            "tool_calls": [
                {"id": c.id, "name": c.name, "arguments": c.arguments}
                for c in completion.tool_calls
            ],
        }
    response_format = params.get("response_format") or {}
    kind = response_format.get("type") if isinstance(response_format, Mapping) else None
    if kind not in ("json_object", "json_schema"):
        return completion.text
    text = completion.text.strip()
    fenced = _FENCED.match(text)  # some local models wrap JSON in ``` fences
    if fenced:
        text = fenced.group(1).strip()
    try:
        value = json.loads(text)
    except ValueError as err:
        start = _one_line(completion.text)[:80]
        cut = (
            " (finish_reason length: raise params.max_tokens)"
            if (completion.finish_reason == "length")
            else ""
        )
        raise NodeError(
            f"the model's answer is not valid JSON ({err.msg} at character {err.pos}){cut}; "
            f"it starts with {start!r}",
            retryable=True,
        ) from None
    schema = (response_format.get("json_schema") or {}).get("schema")
    if kind == "json_schema" and isinstance(schema, Mapping):
        error = jsonschema.exceptions.best_match(_validator(schema).iter_errors(value))
        if error is not None:
            raise NodeError(
                f"the model's JSON does not match response_format.json_schema.schema at "
                f"{_path(error, 'output')}: {error.message}",
                retryable=True,
            )
    return value


def _validator(schema: Mapping[str, Any]) -> Any:
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    return cls(schema)


def _path(error: Any, root: str = "arguments") -> str:
    return root + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)


def _checked_params(params: Mapping[str, Any], kind: str) -> dict[str, Any]:
    """The rendered params, checked again (templates are values now)."""
    rendered = _whole_ints(dict(params))
    try:
        check_model_params(rendered, kind, templates=False)
    except ValueError as err:
        raise NodeError(str(err), retryable=False) from None
    return rendered


def _openai_tools(tools: Any) -> list[dict[str, Any]]:
    return [
        {"type": "function", **{k: v for k, v in tool.items() if k != "type"}}
        for tool in tools or []
    ]


# ------------------------------------------------------------------ the llm runner


class LlmRunner:
    """``kind: llm``: one streamed chat completion (see docs/runners.md)."""

    kind = "llm"

    def validate(self, params: Mapping[str, Any]) -> None:
        check_model_params(params, self.kind, templates=True)

    async def run(self, task: NodeTask, ctx: NodeContext) -> Any:
        params = _checked_params(task.params, self.kind)
        call = await model_call(ctx, params, _openai_tools(params.get("tools")))
        completion = await stream_completion(ctx, call, build_messages(params))
        ctx.add_usage(**completion_usage(completion, call.model))
        usage: dict[str, Any] = {"gen_ai.response.finish_reasons": [completion.finish_reason]}
        if completion.ttft_s is not None:
            usage["gen_ai.server.time_to_first_token"] = completion.ttft_s
        ctx.set_usage(**usage)
        _set_rates(ctx, completion.duration_s - (completion.ttft_s or 0))
        return final_output(completion, params)

    def close(self) -> None:
        close_clients()


# ------------------------------------------------------------------ the agent runner


@dataclasses.dataclass
class _Tool:
    name: str
    spec: Mapping[str, Any]
    validator: Any
    where: str


class AgentRunner:
    """``kind: agent``: the model calls tools until it answers (see docs/runners.md)."""

    kind = "agent"

    def validate(self, params: Mapping[str, Any]) -> None:
        check_model_params(params, self.kind, templates=True)

    async def run(self, task: NodeTask, ctx: NodeContext) -> Any:
        params = _checked_params(task.params, self.kind)
        tools = {
            tool["name"]: _Tool(
                tool["name"],
                tool,
                _validator(tool["parameters"]),
                _tool_label(i, tool, tool["name"]),
            )
            for i, tool in enumerate(params["tools"])
        }
        definitions = [
            {
                "type": "function",
                "function": {
                    "name": tool.name,
                    **(
                        {"description": tool.spec["description"]}
                        if tool.spec.get("description")
                        else {}
                    ),
                    "parameters": tool.spec["parameters"],
                },
            }
            for tool in tools.values()
        ]
        call = await model_call(ctx, params, definitions)
        max_steps = int(params.get("max_steps") or DEFAULT_MAX_STEPS)
        messages = build_messages(params)
        reasons: list[Any] = []
        generating = 0.0
        invoked = 0
        try:
            for step in range(1, max_steps + 1):
                completion = await stream_completion(
                    ctx, call, messages, step=step, announce_tool_calls=False
                )
                ctx.add_usage(**completion_usage(completion, call.model))
                reasons.append(completion.finish_reason)
                if step == 1 and completion.ttft_s is not None:
                    ctx.set_usage(**{"gen_ai.server.time_to_first_token": completion.ttft_s})
                generating += completion.duration_s - (completion.ttft_s or 0)
                if not completion.tool_calls:
                    return final_output(completion, params)
                if step == max_steps:
                    names = ", ".join(c.name for c in completion.tool_calls)
                    raise NodeError(
                        f"the agent reached params.max_steps ({max_steps}) without a final "
                        f"answer: model call {step} still asked for tools ({names})",
                        retryable=False,
                    )
                calls = [
                    dataclasses.replace(c, id=c.id or f"call_{step}_{i}")
                    for i, c in enumerate(completion.tool_calls)
                ]
                messages.append(
                    {
                        "role": "assistant",
                        "content": completion.text or None,
                        "tool_calls": [
                            {
                                "id": c.id,
                                "type": "function",
                                "function": {"name": c.name, "arguments": c.arguments_text or "{}"},
                            }
                            for c in calls
                        ],
                    }
                )
                results = await _all(self._invoke(ctx, tools, c, step) for c in calls)
                invoked += len(calls)
                messages += [
                    {"role": "tool", "tool_call_id": c.id, "content": content}
                    for c, content in zip(calls, results, strict=True)
                ]
            raise AssertionError("unreachable")  # the loop returns or raises
        finally:
            ctx.set_usage(
                **{
                    "gen_ai.response.finish_reasons": reasons,
                    "agent.steps": len(reasons),
                    "agent.tool_calls": invoked,
                }
            )
            _set_rates(ctx, generating)

    async def _invoke(
        self, ctx: NodeContext, tools: dict[str, _Tool], call: ToolCall, step: int
    ) -> str:
        """Runs one tool call; its result as the text the model gets back
        (an error text when it cannot run or fails: the model may mend it)."""
        started_at = _iso_now()
        started = time.perf_counter()
        arguments: Any = call.arguments
        result: Any = None
        error: str | None = None
        try:
            tool = tools.get(call.name)
            if tool is None:
                known = ", ".join(tools)
                raise _ToolRefused(f"unknown tool {call.name!r}; the tools are: {known}")
            if call.arguments_text.strip():
                try:
                    arguments = json.loads(call.arguments_text)
                except ValueError as err:
                    raise _ToolRefused(
                        f"the arguments are not valid JSON ({err.msg} at character {err.pos})"
                    ) from None
            else:
                arguments = {}
            invalid = jsonschema.exceptions.best_match(tool.validator.iter_errors(arguments))
            if invalid is not None:
                raise _ToolRefused(
                    f"the arguments do not match the tool's parameters schema at "
                    f"{_path(invalid)}: {invalid.message}"
                )
            result = await self._run_tool(ctx, tool, arguments, call.id)
        except _ToolRefused as err:
            error = str(err)
        except NodeError as err:
            if isinstance(err, _Fatal):
                raise
            error = str(err)
        except Exception as err:
            error = describe_error(err)
        duration_ms = round((time.perf_counter() - started) * 1000, 3)
        ctx.tool_call(
            call.name,
            arguments=arguments,
            result=result,
            error=error,
            call_id=call.id,
            step=step,
            started=started_at,
            started_at=started_at,
            duration_ms=duration_ms,
        )
        if error is not None:
            return f"error: {error}"
        if isinstance(result, str):
            return result
        return json.dumps(result, ensure_ascii=False, default=str)

    async def _run_tool(self, ctx: NodeContext, tool: _Tool, arguments: Any, call_id: str) -> Any:
        spec = tool.spec
        if "callable" in spec:
            try:
                fn = await resolve_callable(spec["callable"])
            except NodeError as err:
                raise _Fatal(f"{tool.where}: {err}", retryable=False) from None
            if not isinstance(arguments, Mapping):
                raise _ToolRefused("the arguments must be a JSON object")
            if inspect.iscoroutinefunction(fn):
                return await fn(**arguments)
            result = await asyncio.to_thread(fn, **arguments)
            if inspect.isawaitable(result):
                result = await result
            return result
        if "http" in spec:
            request = dict(spec["http"])
            method = str(request.get("method", "GET")).upper()
            if method in QUERY_METHODS:
                if not isinstance(arguments, Mapping):
                    raise _ToolRefused("the arguments must be a JSON object (the query)")
                query = dict(request.get("query") or {})
                for name, value in arguments.items():
                    query[name] = (
                        value
                        if isinstance(value, str | int | float | bool)
                        or (isinstance(value, list) and all(_is_scalar(v) for v in value))
                        else json.dumps(value)
                    )
                request["query"] = query
            else:
                request["json"] = arguments
            response = await http_call(ctx, request)
            return response["body"]
        version = spec.get("version")
        return await ctx.run_workflow(
            spec["workflow"],
            arguments,
            version="" if version is None else str(_whole_ints(version)),
            key=call_id,
        )


async def _all(calls: Any) -> list[Any]:
    """Runs the coroutines at once; their results in order. When one fails (or
    this is cancelled) the others are cancelled, not left running."""
    tasks = [asyncio.ensure_future(c) for c in calls]
    try:
        return await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


def _is_scalar(value: Any) -> bool:
    return isinstance(value, str | int | float | bool)


class _ToolRefused(Exception):
    """A tool call that cannot run as the model made it: the model is told."""


class _Fatal(NodeError):
    """A tool that cannot run at all (its callable does not import): the node fails."""
