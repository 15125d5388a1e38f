"""A local OpenAI-compatible chat endpoint over any model finediff can load, so the agent
and the grader run with no hosted model and no network:

    python -m finediff.agent.local_server embedded:smollm2 --port 8080
    OPENAI_API_KEY=local python evaluate.py task=agent ... agent.base_url=http://127.0.0.1:8080/v1 agent.model=local

It answers greedily (or sampled when the request asks for a temperature) under the model's
chat template. It has no native tool calling: the tool list goes into the system message,
and the agent loop reads a JSON tool call from the reply's text
(:func:`finediff.agent.loop.text_tool_call`). Tool replies and earlier tool calls are given
back to the model as ordinary turns. How well a model investigates depends on the model;
a small one mostly shows that the machinery runs.
"""

from __future__ import annotations

import argparse
import json
import threading
from typing import Optional

import torch

from finediff.agent.script_server import ChatServer
from finediff.errors import FinediffError, exit_on_user_error
from finediff.models import load_model, load_tokenizer


def plain_messages(messages: list[dict], tools: Optional[list[dict]] = None) -> list[dict]:
    """OpenAI chat messages as turns any chat template takes: tool results become user
    turns, tool calls become JSON in the assistant's text, the tool list joins the system
    message, and consecutive turns of one role are merged."""
    out: list[dict] = []
    for m in messages:
        role, text = m.get("role", "user"), m.get("content") or ""
        if role == "tool":
            role, text = "user", f"[tool result] {text}"
        for call in m.get("tool_calls") or []:
            fn = call.get("function", {})
            text += "\n" + json.dumps({"tool": fn.get("name"), "arguments": json.loads(fn.get("arguments") or "{}")})
        if role not in ("system", "user", "assistant"):
            role = "user"
        if out and out[-1]["role"] == role:
            out[-1]["content"] += "\n\n" + text.strip()
        else:
            out.append({"role": role, "content": text.strip()})
    if tools:
        lines = [f"- {t['function']['name']}: {t['function'].get('description', '')} "
                 f"arguments: {json.dumps(t['function'].get('parameters', {}).get('properties', {}))}"
                 for t in tools if t.get("type") == "function"]
        listing = "Tools (reply with one JSON object {\"tool\": NAME, \"arguments\": {...}}):\n" + "\n".join(lines)
        if out and out[0]["role"] == "system":
            out[0]["content"] += "\n\n" + listing
        else:
            out.insert(0, {"role": "system", "content": listing})
    return out


class LocalChatServer(ChatServer):
    """Serves ``model_name`` (anything :func:`finediff.models.load_model` takes) on
    127.0.0.1; at most ``max_new_tokens`` per reply whatever the request asks."""

    def __init__(self, model_name: str = "embedded:smollm2", port: int = 0, max_new_tokens: int = 256,
                 key: Optional[str] = None, max_context: int = 2048):
        super().__init__(key, port)
        self.tokenizer = load_tokenizer(model_name)
        self.model = load_model(model_name)
        self.max_new_tokens = max_new_tokens
        self.max_context = min(max_context, getattr(self.model.config, "max_position_embeddings", None) or max_context)
        if self.max_context <= max_new_tokens:
            raise FinediffError(f"{model_name}: a context of {self.max_context} tokens leaves no room for "
                                f"{max_new_tokens} new ones")
        self._generate_lock = threading.Lock()  # one generation at a time

    def prompt_ids(self, messages: list[dict], tools: Optional[list[dict]]) -> list[int]:
        turns = plain_messages(messages, tools)
        try:
            text = self.tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
        except Exception:  # a template without a system role: the system text opens the first user turn
            if turns and turns[0]["role"] == "system" and len(turns) > 1:
                turns = [{"role": turns[1]["role"], "content": turns[0]["content"] + "\n\n" + turns[1]["content"]}] \
                    + turns[2:]
            text = self.tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return ids[-(self.max_context - self.max_new_tokens):]  # the newest context when it is too long

    @torch.no_grad()
    def answer(self, body: dict, n: int) -> bytes:
        ids = self.prompt_ids(body.get("messages", []), body.get("tools"))
        limit = min(int(body.get("max_tokens") or self.max_new_tokens), self.max_new_tokens)
        temperature = float(body.get("temperature") or 0.0)
        kwargs = dict(max_new_tokens=limit, pad_token_id=self.tokenizer.pad_token_id,
                      do_sample=temperature > 0)
        if temperature > 0:
            kwargs["temperature"] = temperature
        with self._generate_lock:
            out = self.model.generate(input_ids=torch.tensor([ids]), **kwargs)[0, len(ids):]
        text = self.tokenizer.decode(out, skip_special_tokens=True).strip()
        return self.completion(n, body, {"role": "assistant", "content": text}, len(ids) + len(out))


def main() -> None:
    parser = argparse.ArgumentParser(description="Serve a local model as an OpenAI-compatible chat endpoint.")
    parser.add_argument("model", nargs="?", default="embedded:smollm2")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--key", default=None, help="require this bearer key (default: any)")
    args = parser.parse_args()
    try:
        server = LocalChatServer(args.model, args.port, args.max_new_tokens, args.key)
    except OSError as err:  # the port is taken
        raise SystemExit(f"finediff: error: cannot serve on 127.0.0.1:{args.port}: {err.strerror}") from None
    except Exception as err:
        exit_on_user_error(err)
    server.serve()


if __name__ == "__main__":
    main()
