"""A client for any OpenAI-compatible chat endpoint (``POST {base_url}/chat/completions``).

The transport is the ``openai`` package's client: it sends the request, and it retries a
failed one (a connection error, a timeout, HTTP 408/409/429/5xx) ``max_retries`` times
with exponential backoff. Nothing is contacted unless an agent task calls :meth:`ChatClient.chat`.
The key comes from an environment variable named in the config, never from the config
itself. Every failure is a :class:`~finediff.errors.FinediffError` with one line that
names the endpoint and says what went wrong: unreachable endpoint, missing key, timeout,
HTTP error, or a reply that is not a chat completion.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Optional

import openai

from finediff.errors import FinediffError


@dataclass
class ChatReply:
    """One assistant message: its text, its tool calls (``name``, ``arguments`` text, ``id``)
    and the tokens the endpoint reports (or an estimate when it reports none)."""

    content: str
    tool_calls: list[dict] = field(default_factory=list)
    tokens: int = 0


@dataclass
class ChatClient:
    """``base_url`` (e.g. ``http://127.0.0.1:8080/v1``), ``model``, the environment variable
    holding the key, a per-request timeout in seconds, and how many times a failed request
    is retried (with backoff) before its error is raised."""

    base_url: str
    model: str
    api_key_env: str = "OPENAI_API_KEY"
    timeout: float = 120.0
    max_retries: int = 2
    temperature: float = 0.0
    _client: Any = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self):
        if not self.base_url or not str(self.base_url).startswith(("http://", "https://")):
            raise FinediffError(f"agent.base_url must be an http(s) URL of an OpenAI-compatible endpoint, "
                                f"got {self.base_url!r}")
        if not self.model:
            raise FinediffError("agent.model is not set: name the model the endpoint serves")
        if not os.environ.get(self.api_key_env):
            raise FinediffError(f"the agent's API key is missing: set the environment variable {self.api_key_env} "
                                "(agent.api_key_env names it; any non-empty value for a local server)")
        if isinstance(self.max_retries, bool) or not isinstance(self.max_retries, int) or self.max_retries < 0:
            raise FinediffError(f"agent.max_retries must be an integer >= 0, got {self.max_retries!r}")
        # builds the client only: no request is sent until chat()
        self._client = openai.OpenAI(base_url=self.base_url, api_key=os.environ[self.api_key_env],
                                     timeout=self.timeout, max_retries=self.max_retries)

    @property
    def url(self) -> str:
        return self.base_url.rstrip("/") + "/chat/completions"

    def chat(self, messages: list[dict], tools: Optional[list[dict]] = None,
             max_tokens: int = 1024) -> ChatReply:
        url = self.url
        extra: dict[str, Any] = {"tools": tools} if tools else {}
        try:
            completion = self._client.chat.completions.create(
                model=self.model, messages=messages, temperature=self.temperature, max_tokens=max_tokens, **extra)
        except openai.APITimeoutError:  # before APIConnectionError: it is one
            tries = f"; tried {self.max_retries + 1} times" if self.max_retries else ""
            raise FinediffError(f"agent endpoint {url} did not answer within {self.timeout:g} s "
                                f"(agent.timeout{tries})") from None
        except openai.APIConnectionError as err:
            reason = " ".join(str(err.__cause__ or err).split()) or type(err.__cause__ or err).__name__
            raise FinediffError(f"agent endpoint {url} is unreachable: {reason}") from None
        except openai.APIStatusError as err:
            detail = " ".join(err.response.text[:200].split())
            raise FinediffError(f"agent endpoint {url} answered HTTP {err.status_code}: {detail}") from None
        except openai.APIResponseValidationError as err:
            raise FinediffError(f"{url} did not return a chat completion: {' '.join(str(err).split())}") from None
        except json.JSONDecodeError as err:  # a 200 whose body is not JSON
            raise FinediffError(f"{url} did not return a chat completion: {err.doc[:120]!r}") from None
        except openai.OpenAIError as err:
            raise FinediffError(f"agent endpoint {url}: {' '.join(str(err).split())}") from None
        return read_completion(completion, url)


def read_completion(completion: Any, url: str = "the endpoint") -> ChatReply:
    """The first choice of a chat completion (as the openai client returns it); a one-line
    error for anything else (the client returns an unvalidated object or text for a body
    that is not one)."""
    try:
        message = completion.choices[0].message
        if message is None:
            raise TypeError("no message")
    except (AttributeError, IndexError, KeyError, TypeError):
        shown = completion.to_json(indent=None) if hasattr(completion, "to_json") else str(completion)
        raise FinediffError(f"{url} did not return a chat completion: {shown[:120]!r}") from None
    calls = []
    for call in message.tool_calls or []:
        fn = getattr(call, "function", None)
        calls.append({"id": call.id or f"call_{len(calls)}", "name": (fn.name if fn else None) or "",
                      "arguments": (fn.arguments if fn else None) or "{}"})
    content = message.content or ""
    usage = getattr(completion, "usage", None)
    tokens = int((usage.total_tokens if usage else 0) or 0) or estimate_tokens(content, calls)
    return ChatReply(content=content, tool_calls=calls, tokens=tokens)


def estimate_tokens(*parts: Any) -> int:
    """About four characters a token, for endpoints that report no usage."""
    return max(1, len(json.dumps(parts, default=str)) // 4)
