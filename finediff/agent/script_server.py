"""A real OpenAI-compatible HTTP server on 127.0.0.1 that answers from a script.

It speaks the same protocol as any chat endpoint (``POST /v1/chat/completions``, bearer
key, tool calls), so the agent loop runs against it exactly as against a hosted model; the
replies come from a list given in advance. The tests drive the agent with it, and
``python -m finediff.agent.script_server SCRIPT.json`` serves a JSON script for a dry run
of ``evaluate.py task=agent`` without a paid endpoint.

A script entry is an assistant message (``{"content": ..., "tool_calls": [...]}``), or a
shorthand ``{"call": NAME, "arguments": {...}}`` for one tool call, and may carry
``"delay": seconds`` (to test timeouts), ``"raw": text`` (sent as the body as it is, to
test malformed replies) or ``"status": code`` (an HTTP error status for that reply, to test
errors and retries). After the script ends every reply is ``"(script ended)"``.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Optional


def message(entry: dict, n: int) -> dict:
    if "call" in entry:
        return {"role": "assistant", "content": entry.get("content", ""), "tool_calls": [{
            "id": f"call_{n}", "type": "function",
            "function": {"name": entry["call"], "arguments": json.dumps(entry.get("arguments", {}))
                         if not isinstance(entry.get("arguments"), str) else entry["arguments"]}}]}
    return {"role": "assistant", **{k: v for k, v in entry.items() if k in ("content", "tool_calls")}}


class ChatServer:
    """An OpenAI-compatible ``POST .../chat/completions`` server on 127.0.0.1 (a free port
    unless ``port`` is given); subclasses say how to answer (:meth:`answer`).
    ``with Server(...) as server: ... server.url ... server.requests``"""

    def __init__(self, key: Optional[str] = None, port: int = 0):
        self.key, self.requests = key, []
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_POST(self):
                try:
                    body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                except ValueError:
                    return self._send(400, b'{"error": "the body is not JSON"}')
                if outer.key and self.headers.get("Authorization") != f"Bearer {outer.key}":
                    return self._send(401, b'{"error": "bad key"}')
                if not self.path.endswith("/chat/completions"):
                    return self._send(404, b'{"error": "not found"}')
                with outer._lock:
                    n = len(outer.requests)
                    outer.requests.append(body)
                reply = outer.answer(body, n)
                self._send(*(reply if isinstance(reply, tuple) else (200, reply)))

            def _send(self, code: int, data: bytes):
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (a timeout test)
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def answer(self, body: dict, n: int) -> bytes | tuple[int, bytes]:
        """The response body to request number ``n`` (or ``(HTTP status, body)``)."""
        raise NotImplementedError

    @staticmethod
    def completion(n: int, body: dict, msg: dict, tokens: int) -> bytes:
        return json.dumps({"id": f"chatcmpl-{n}", "object": "chat.completion", "model": body.get("model"),
                           "choices": [{"index": 0, "message": msg, "finish_reason": "stop"}],
                           "usage": {"total_tokens": tokens}}).encode()

    def __enter__(self):
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def serve(self) -> None:
        """Serve until Ctrl-C (the command-line entry points)."""
        with self:
            print(f"serving {self.url} (key: {'required' if self.key else 'any'}); Ctrl-C to stop", flush=True)
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                pass


class ScriptServer(ChatServer):
    """Answers from ``script``, one entry per request."""

    def __init__(self, script: list[dict], key: Optional[str] = None):
        super().__init__(key)
        self.script = list(script)

    def answer(self, body: dict, n: int) -> bytes:
        entry = self.script[n] if n < len(self.script) else {"content": "(script ended)"}
        time.sleep(float(entry.get("delay", 0)))
        if "raw" in entry:
            data = entry["raw"].encode()
        else:
            data = self.completion(n, body, message(entry, n), 50 + len(json.dumps(body)) // 4)
        return (int(entry["status"]), data) if "status" in entry else data


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit("usage: python -m finediff.agent.script_server SCRIPT.json")
    ScriptServer(json.loads(open(sys.argv[1]).read())).serve()


if __name__ == "__main__":
    main()
