"""A minimal client for any OpenAI-compatible chat endpoint (``POST {base_url}/chat/completions``).

Standard library only (``urllib``): no SDK, nothing is contacted unless an agent task is
configured. The key comes from an environment variable named in the config, never from
the config itself. Every failure is a :class:`~finediff.errors.FinediffError` with one
line that says what went wrong: unreachable endpoint, missing key, timeout, HTTP error,
or a reply that is not a chat completion.
"""

from __future__ import annotations

import json
import os
import socket
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any, Optional

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
    holding the key, and a per-request timeout in seconds."""

    base_url: str
    model: str
    api_key_env: str = "OPENAI_API_KEY"
    timeout: float = 120.0
    temperature: float = 0.0

    def __post_init__(self):
        if not self.base_url or not str(self.base_url).startswith(("http://", "https://")):
            raise FinediffError(f"agent.base_url must be an http(s) URL of an OpenAI-compatible endpoint, "
                                f"got {self.base_url!r}")
        if not self.model:
            raise FinediffError("agent.model is not set: name the model the endpoint serves")
        if not os.environ.get(self.api_key_env):
            raise FinediffError(f"the agent's API key is missing: set the environment variable {self.api_key_env} "
                                "(agent.api_key_env names it; any non-empty value for a local server)")

    def chat(self, messages: list[dict], tools: Optional[list[dict]] = None,
             max_tokens: int = 1024) -> ChatReply:
        body: dict[str, Any] = {"model": self.model, "messages": messages, "temperature": self.temperature,
                                "max_tokens": max_tokens}
        if tools:
            body["tools"] = tools
        url = self.base_url.rstrip("/") + "/chat/completions"
        request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST", headers={
            "Content-Type": "application/json", "Authorization": f"Bearer {os.environ[self.api_key_env]}"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as err:
            detail = err.read()[:200].decode(errors="replace").replace("\n", " ")
            raise FinediffError(f"agent endpoint {url} answered HTTP {err.code}: {detail}") from None
        except (socket.timeout, TimeoutError):
            raise FinediffError(f"agent endpoint {url} did not answer within {self.timeout:g} s "
                                "(agent.timeout)") from None
        except urllib.error.URLError as err:
            if isinstance(err.reason, (socket.timeout, TimeoutError)):
                raise FinediffError(f"agent endpoint {url} did not answer within {self.timeout:g} s "
                                    "(agent.timeout)") from None
            raise FinediffError(f"agent endpoint {url} is unreachable: {err.reason}") from None
        return parse_reply(raw, url)


def parse_reply(raw: bytes, url: str = "the endpoint") -> ChatReply:
    """The first choice of a chat completion; a one-line error for anything else."""
    try:
        data = json.loads(raw)
        message = data["choices"][0]["message"]
    except (ValueError, KeyError, IndexError, TypeError):
        raise FinediffError(f"{url} did not return a chat completion: {raw[:120]!r}") from None
    calls = []
    for call in message.get("tool_calls") or []:
        fn = call.get("function") or {}
        calls.append({"id": call.get("id") or f"call_{len(calls)}", "name": fn.get("name", ""),
                      "arguments": fn.get("arguments") or "{}"})
    content = message.get("content") or ""
    usage = data.get("usage") or {}
    tokens = int(usage.get("total_tokens") or 0) or estimate_tokens(content, calls)
    return ChatReply(content=content, tool_calls=calls, tokens=tokens)


def estimate_tokens(*parts: Any) -> int:
    """About four characters a token, for endpoints that report no usage."""
    return max(1, len(json.dumps(parts, default=str)) // 4)
