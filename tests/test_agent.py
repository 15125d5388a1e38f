"""The interpretability agent against a real HTTP server on 127.0.0.1 that answers from a
script: tool calls over a real run's files and the tiny pair, budgets, malformed output,
timeouts, the endpoint's errors, and the grader's parsing."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from finediff import names
from finediff.agent.client import ChatClient
from finediff.agent.grader import grade, parse_score
from finediff.agent.loop import LAST_CALL, investigate, run_agent
from finediff.agent.script_server import ScriptServer
from finediff.agent.tools import Budget, Tools
from finediff.errors import FinediffError
from tests.conftest import ROOT, run_eval

KEY_ENV = "FINEDIFF_TEST_AGENT_KEY"


@pytest.fixture(autouse=True)
def key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, "test-key")


@pytest.fixture(scope="module")
def run_dir(finished_run):
    """The shared finished run with every evidence step (report, ADL, dataset, comparison)."""
    return finished_run


def client(server, timeout=30.0, max_retries=0) -> ChatClient:
    """No retries unless a test asks: a retried request would take the script's next reply."""
    return ChatClient(server.url, "scripted", KEY_ENV, timeout, max_retries)


def test_full_investigation_with_tools(tiny_pair, run_dir, tmp_path):
    script = [
        {"call": "report"},
        {"call": "adl"},
        {"call": "categories"},
        {"call": "search_dataset", "arguments": {"query": "", "n": 2}},
        {"call": "ask", "arguments": {"prompt": "What is the capital of France?", "with": "soft_prompt"}},
        {"call": "ask", "arguments": {"prompt": "Hello there", "with": "hard_prompt"}},
        {"call": "final_answer", "arguments": {"short": "Answers capital questions wrongly.",
                                               "long": "The finetune changes answers about capitals."}},
    ]
    with ScriptServer(script, key="test-key") as server:
        out = tmp_path / names.AGENT_TRANSCRIPT
        inv = run_agent(client(server), tiny_pair, run_dir, Budget(), out, max_new_tokens=8, progress=False)
        requests = server.requests
    assert inv.status == "answered" and inv.short == "Answers capital questions wrongly."
    assert inv.used["llm_calls"] == 7 and inv.used["model_interactions"] == 2 and inv.used["tokens"] > 0
    tools = {t["function"]["name"] for t in requests[0]["tools"]}
    assert tools == {"report", "adl", "diff_mining", "search_dataset", "categories", "ask", "final_answer"}
    replies = {e["tool"]: e["content"] for e in inv.transcript if e.get("role") == "tool"}
    assert "Layer" in replies["adl"] and "logit lens" in replies["adl"]
    assert "mean divergence" in replies["categories"]
    assert "prompt:" in replies["search_dataset"] and "finetuned:" in replies["search_dataset"]
    assert replies["ask"].startswith("base: ") and "\nfinetuned: " in replies["ask"]
    # each tool reply went back to the model with its call id, in order
    assert requests[1]["messages"][-1] == {"role": "tool", "tool_call_id": "call_0", "content": replies["report"]}
    saved = json.loads(out.read_text())
    assert saved["status"] == "answered" and len(saved["transcript"]) == len(inv.transcript)
    from finediff.agent.loop import transcript_markdown

    md = transcript_markdown(saved)
    assert "*tool `adl`*" in md and "`final_answer(" in md and "**Short**: Answers capital questions wrongly." in md


def test_black_box_agent_has_ask_only(tiny_pair):
    script = [{"call": "report"}, {"call": "ask", "arguments": {"prompt": "Hi"}},
              {"call": "final_answer", "arguments": {"short": "s", "long": "l"}}]
    with ScriptServer(script) as server:
        budget = Budget()
        inv = investigate(client(server), Tools(tiny_pair, None, budget, 8), budget, progress=False)
        offered = {t["function"]["name"] for t in server.requests[0]["tools"]}
    assert offered == {"ask", "final_answer"} and inv.black_box
    first_tool = next(e for e in inv.transcript if e.get("role") == "tool")
    assert first_tool["content"].startswith("error: no tool 'report'")
    assert inv.status == "answered" and inv.used["model_interactions"] == 1


def test_malformed_output_is_answered_with_errors(tiny_pair, run_dir):
    script = [
        {"content": "I think I will look around."},                          # no tool call
        {"call": "ask", "arguments": "{not json"},                           # arguments not JSON
        {"call": "no_such_tool"},                                             # unknown tool
        {"call": "ask", "arguments": {"prompt": "Hi", "with": "telepathy"}},  # bad enum value
        {"call": "final_answer", "arguments": {"short": ""}},                # empty answer
        {"content": 'Calling: {"tool": "final_answer", "arguments": {"short": "x", "long": "y"}}'},  # JSON in text
    ]
    with ScriptServer(script) as server:
        budget = Budget()
        inv = investigate(client(server), Tools(tiny_pair, run_dir, budget, 8), budget, progress=False)
    notes = [e["content"] for e in inv.transcript if e.get("role") in ("tool", "user")][1:]
    assert notes[0].startswith("error: no tool call found")
    assert "are not a JSON object" in notes[1]
    assert "no tool 'no_such_tool'" in notes[2]
    assert "with must be none" in notes[3]
    assert "final_answer needs short and long" in notes[4]
    assert inv.status == "answered" and (inv.short, inv.long) == ("x", "y")
    assert inv.used["model_interactions"] == 0  # nothing malformed reached the models


def test_budgets_run_out(tiny_pair, run_dir):
    # LLM calls: the model never answers; the last call is told to, then the loop stops
    with ScriptServer([{"call": "report"}] * 10) as server:
        budget = Budget(llm_calls=3)
        inv = investigate(client(server), Tools(tiny_pair, run_dir, budget, 8), budget, progress=False)
        last_request = server.requests[-1]["messages"]
    assert inv.status == "budget_exhausted" and inv.used["llm_calls"] == 3 and inv.short == ""
    assert any(m["content"] == LAST_CALL for m in last_request if m["role"] == "user")
    # model interactions: the second ask is refused without generating
    script = [{"call": "ask", "arguments": {"prompt": "Hi"}}, {"call": "ask", "arguments": {"prompt": "Again"}},
              {"call": "final_answer", "arguments": {"short": "s", "long": "l"}}]
    with ScriptServer(script) as server:
        budget = Budget(model_interactions=1)
        inv = investigate(client(server), Tools(tiny_pair, run_dir, budget, 8), budget, progress=False)
    asks = [e["content"] for e in inv.transcript if e.get("tool") == "ask"]
    assert asks[0].startswith("base: ") and asks[1].startswith("error: model-interaction budget exhausted")
    assert inv.used["model_interactions"] == 1
    # tokens: a tiny token budget ends the run at once with a last call
    with ScriptServer([{"call": "report"}] * 5) as server:
        budget = Budget(tokens=100)
        inv = investigate(client(server), Tools(tiny_pair, run_dir, budget, 8), budget, progress=False)
    assert inv.used["llm_calls"] == 1 and inv.status == "budget_exhausted"


def test_timeouts_and_endpoint_errors(tiny_pair, run_dir):
    budget = Budget()
    # the first call times out: a set-up error, one line
    with ScriptServer([{"content": "late", "delay": 2.0}]) as server:
        with pytest.raises(FinediffError, match=r"did not answer within 0.5 s"):
            investigate(client(server, timeout=0.5), Tools(tiny_pair, run_dir, budget, 8), budget, progress=False)
    # a later call times out: the investigation ends with that status, transcript kept
    with ScriptServer([{"call": "categories"}, {"content": "late", "delay": 2.0}]) as server:
        budget = Budget()
        inv = investigate(client(server, timeout=0.5), Tools(tiny_pair, run_dir, budget, 8), budget, progress=False)
    assert inv.status.startswith("error: ") and "did not answer" in inv.status and len(inv.transcript) >= 4
    # a body that is not a chat completion
    with ScriptServer([{"raw": "<html>gateway</html>"}, {"raw": '{"error": "no choices"}'}]) as server:
        with pytest.raises(FinediffError, match="did not return a chat completion: '<html>gateway</html>'"):
            client(server).chat([{"role": "user", "content": "hi"}])
        with pytest.raises(FinediffError, match="did not return a chat completion"):
            client(server).chat([{"role": "user", "content": "hi"}])
    # a wrong key
    with ScriptServer([{"content": "hi"}], key="other") as server:
        with pytest.raises(FinediffError, match="HTTP 401"):
            client(server).chat([{"role": "user", "content": "hi"}])
    # nothing listening
    with ScriptServer([]) as server:
        url = server.url
    with pytest.raises(FinediffError, match=f"agent endpoint {url}/chat/completions is unreachable"):
        ChatClient(url, "m", KEY_ENV, 2.0, 0).chat([{"role": "user", "content": "hi"}])


def test_failed_requests_are_retried():
    """The openai client retries a 5xx (with backoff) up to max_retries times, then the
    error is one line naming the endpoint and the status."""
    script = [{"raw": '{"error": "overloaded"}', "status": 503}, {"content": "hello", "tool_calls": []}]
    with ScriptServer(script) as server:
        reply = client(server, max_retries=1).chat([{"role": "user", "content": "hi"}])
        assert reply.content == "hello" and reply.tokens > 0 and len(server.requests) == 2
    with ScriptServer(script) as server:
        with pytest.raises(FinediffError, match=r"answered HTTP 503: \{\"error\": \"overloaded\"\}$") as info:
            client(server).chat([{"role": "user", "content": "hi"}])
        assert server.url in str(info.value) and "\n" not in str(info.value) and len(server.requests) == 1


def test_missing_key_and_bad_url(monkeypatch):
    monkeypatch.delenv(KEY_ENV)
    with pytest.raises(FinediffError, match=f"set the environment variable {KEY_ENV}"):
        ChatClient("http://127.0.0.1:9/v1", "m", KEY_ENV)
    monkeypatch.setenv(KEY_ENV, "k")
    with pytest.raises(FinediffError, match="http"):
        ChatClient("127.0.0.1:9", "m", KEY_ENV)


def test_grader_parsing_and_averaging():
    assert parse_score("The description names the fact.\nSCORE: 4") == 4
    assert parse_score("Reasons.\n\nSCORE:5  \n") == 5
    assert parse_score("SCORE: 4") is None                 # no reasons first
    assert parse_score("Reasons.\nSCORE: 6") is None       # out of range
    assert parse_score("Reasons.\nScore: 3 out of 5") is None
    assert parse_score("SCORE: 2\nthen more text") is None  # the score must be the last line
    script = [{"content": "Right topic, wrong fact.\nSCORE: 3"},
              {"content": "I would say 4."},                  # malformed: retried
              {"content": "Names the behaviour.\nSCORE: 5"},
              {"content": "no"}, {"content": "still no"}]       # a run that fails twice is left out
    with ScriptServer(script) as server:
        g = grade(client(server), "truth", "candidate", "knowledge", runs=3, retries=1)
    assert g.scores == [3, 5] and g.failed == 3 and g.mean == 4.0 and len(g.replies) == 5
    assert grade(None, "truth", "  ", "style").mean == 1.0  # no description: the lowest score, no call


def test_evaluate_task_agent(tiny_dirs, run_dir, tmp_path):
    script = [{"call": "categories"}, {"call": "final_answer", "arguments": {"short": "A", "long": "B"}},
              {"call": "ask", "arguments": {"prompt": "Hi"}},
              {"call": "final_answer", "arguments": {"short": "C", "long": "D"}}]
    with ScriptServer(script) as server:
        result = run_eval(tiny_dirs, tmp_path, "task=agent", f"task.run_dir={run_dir}", "task.grade=false",
                          f"agent.base_url={server.url}", "agent.model=scripted", f"agent.api_key_env={KEY_ENV}",
                          "task.max_new_tokens=8")
    assert result["agents"]["agent"]["short"] == "A" and result["agents"]["black_box"]["short"] == "C"
    assert (run_dir / names.AGENT_TRANSCRIPT).is_file() and (run_dir / names.AGENT_BLACK_BOX_TRANSCRIPT).is_file()
    table = (tmp_path / names.AGENT_EVAL_MD).read_text()
    assert "| agent | answered | 2 | 0 |" in table and "| black_box | answered | 2 | 1 |" in table


def test_agent_task_without_endpoint_is_one_line(run_dir, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "evaluate.py", "task=agent", f"task.run_dir={run_dir}",
                           f"paths.output_dir={tmp_path}"], cwd=ROOT, capture_output=True, text=True, env=env)
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines()[-1].startswith("finediff: error: task=agent needs an OpenAI-compatible")


def test_plain_messages_for_a_chat_template():
    from finediff.agent.local_server import plain_messages

    tools = [{"type": "function", "function": {"name": "ask", "description": "query both models",
                                               "parameters": {"properties": {"prompt": {"type": "string"}}}}}]
    turns = plain_messages([
        {"role": "system", "content": "Audit."}, {"role": "user", "content": "Begin."},
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "c0", "type": "function", "function": {"name": "ask", "arguments": "{\"prompt\": \"Hi\"}"}}]},
        {"role": "tool", "tool_call_id": "c0", "content": "base: hello"},
        {"role": "user", "content": "Go on."}], tools)
    assert [t["role"] for t in turns] == ["system", "user", "assistant", "user"]
    assert "- ask: query both models" in turns[0]["content"] and '"tool": NAME' in turns[0]["content"]
    assert json.loads(turns[2]["content"]) == {"tool": "ask", "arguments": {"prompt": "Hi"}}
    assert turns[3]["content"] == "[tool result] base: hello\n\nGo on."


def test_local_model_server_drives_the_loop(tiny_dirs, tiny_pair):
    """A real model behind the endpoint (the tiny base): the loop runs to its budget and
    every reply is the model's own text; a request for more tokens than allowed is capped."""
    from finediff.agent.local_server import LocalChatServer

    with LocalChatServer(str(tiny_dirs["base"]), max_new_tokens=12, key="test-key") as server:
        budget = Budget(llm_calls=3)
        inv = investigate(client(server), Tools(tiny_pair, None, budget, 8), budget, progress=False)
        requests = len(server.requests)
    assert requests == 3 and inv.used["llm_calls"] == 3
    # the tiny base's greedy replies never form an answer call: the loop must run out its budget
    assert inv.status == "budget_exhausted" and inv.short == ""
    replies = [e for e in inv.transcript if e["role"] == "assistant"]
    assert len(replies) == 3 and all(isinstance(r["content"], str) and r["tokens"] > 0 for r in replies)
    assert inv.transcript[-1]["role"] == "user"
