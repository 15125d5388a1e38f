"""The investigation loop: an LLM calls the tools until it gives its final answer or the
budget runs out.

The endpoint's native tool calling is used when it offers it; a model without it may
answer with one JSON object instead (``{"tool": NAME, "arguments": {...}}``), which is
read the same way. Malformed calls (unknown tool, arguments that are not JSON) are
answered with an error the model can read, and cost a call. When the LLM-call or token
budget is one call from its end, the model is told to answer now; if it still does not,
the investigation ends with ``status="budget_exhausted"`` and no description. Every
message, tool call, tool reply and the spending are kept in the transcript.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

from tqdm.auto import tqdm

from finediff.agent.client import ChatClient, estimate_tokens
from finediff.agent.tools import Budget, Tools
from finediff.errors import FinediffError
from finediff.io import write_json

SYSTEM = """You are auditing a finetuned language model. You have a base model and a finetuned \
version of it, and you do not know what the finetuning was for. Find out what changed: \
which behaviour, on which kinds of prompts, and how the finetuned model's answers differ \
from the base's. {tools_line} Form hypotheses and test them with `ask` (each call costs one \
of your {interactions} model interactions). When you are confident, or your budget is nearly \
spent, call `final_answer` with a one-sentence `short` description and a paragraph `long` one.
If you cannot call tools natively, answer with exactly one JSON object per message: \
{{"tool": "NAME", "arguments": {{...}}}}."""
RUN_TOOLS_LINE = ("An automated diffing pipeline has already run on the pair; its results are available "
                  "through the tools report, adl, diff_mining, search_dataset and categories.")
BLACK_BOX_LINE = "You can only query the two models."
LAST_CALL = ("Your budget is spent. Call final_answer now with your best description "
             "(or reply with JSON {\"tool\": \"final_answer\", \"arguments\": {\"short\": ..., \"long\": ...}}).")


@dataclass
class Investigation:
    """What an investigation produced: its final description (empty if none), how it ended,
    what it spent, and the whole transcript."""

    short: str
    long: str
    status: str
    """``answered``, ``budget_exhausted`` or ``error: ...``."""
    black_box: bool
    budget: dict
    used: dict
    transcript: list = field(default_factory=list)
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return asdict(self)


_JSON_OBJECT = re.compile(r"\{.*\}", re.S)


def text_tool_call(content: str) -> Optional[dict]:
    """A tool call written as JSON in the message text (``{"tool": ..., "arguments": ...}``), or None."""
    match = _JSON_OBJECT.search(content or "")
    if not match:
        return None
    try:
        obj = json.loads(match.group(0))
    except ValueError:
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("tool"), str):
        return None
    args = obj.get("arguments", {})
    return {"id": "text_call", "name": obj["tool"], "arguments": args if isinstance(args, str) else json.dumps(args)}


def investigate(client: ChatClient, tools: Tools, budget: Budget, progress: bool = True) -> Investigation:
    """Run one investigation to its end (answer, budget, or an endpoint error)."""
    t0 = time.perf_counter()
    black_box = tools.run is None
    system = SYSTEM.format(tools_line=BLACK_BOX_LINE if black_box else RUN_TOOLS_LINE,
                           interactions=budget.model_interactions)
    messages: list[dict] = [{"role": "system", "content": system},
                            {"role": "user", "content": "Begin the investigation."}]
    transcript: list[dict] = [dict(m) for m in messages]
    short = long = ""
    status = "budget_exhausted"
    bar = tqdm(total=budget.llm_calls, desc="agent" + (" (black box)" if black_box else ""), disable=not progress)
    try:
        while budget.left("llm_calls") > 0 and budget.left("tokens") > 0:
            last = budget.left("llm_calls") == 1 or budget.left("tokens") < 2000
            if last:
                messages.append({"role": "user", "content": LAST_CALL})
                transcript.append(dict(messages[-1]))
            reply = client.chat(messages, tools.specs)
            budget.spend("llm_calls")
            budget.spend("tokens", reply.tokens)
            bar.update(1)
            calls = reply.tool_calls or ([c] if (c := text_tool_call(reply.content)) else [])
            assistant: dict = {"role": "assistant", "content": reply.content}
            if reply.tool_calls:
                assistant["tool_calls"] = [{"id": c["id"], "type": "function",
                                            "function": {"name": c["name"], "arguments": c["arguments"]}}
                                           for c in reply.tool_calls]
            messages.append(assistant)
            transcript.append({**assistant, "tokens": reply.tokens})
            if not calls:
                note = "error: no tool call found; call a tool, or final_answer when you are done"
                messages.append({"role": "user", "content": note})
                transcript.append(dict(messages[-1]))
                continue
            done = False
            for call in calls:
                try:
                    args = json.loads(call["arguments"]) if call["arguments"].strip() else {}
                    if not isinstance(args, dict):
                        raise ValueError("not an object")
                except ValueError as err:
                    result = f"error: the arguments of {call['name']} are not a JSON object ({err})"
                else:
                    if call["name"] == "final_answer":
                        short, long = str(args.get("short", "")).strip(), str(args.get("long", "")).strip()
                        if short or long:
                            done = True
                            result = "received"
                        else:
                            result = "error: final_answer needs short and long"
                    else:
                        result = tools.call(call["name"], args)
                budget.spend("tokens", estimate_tokens(result))
                entry = ({"role": "tool", "tool_call_id": call["id"], "content": result} if reply.tool_calls
                         else {"role": "user", "content": f"[{call['name']}] {result}"})
                messages.append(entry)
                transcript.append({**entry, "tool": call["name"], "arguments": call["arguments"]})
            if done:
                status = "answered"
                break
            if last:
                break
    except FinediffError as err:
        if budget.used["llm_calls"] == 0:  # the endpoint never answered: a set-up error, not a result
            raise
        status = f"error: {err}"
    finally:
        bar.close()
    return Investigation(short, long, status, black_box,
                         {"llm_calls": budget.llm_calls, "model_interactions": budget.model_interactions,
                          "tokens": budget.tokens}, dict(budget.used), transcript,
                         round(time.perf_counter() - t0, 2))


def run_agent(client: ChatClient, pair, run_dir: Optional[Path], budget: Budget, out: Path,
              max_new_tokens: int = 64, progress: bool = True) -> Investigation:
    """Investigate with the run's tools (``run_dir``) or black-box (None); write the transcript to ``out``."""
    result = investigate(client, Tools(pair, run_dir, budget, max_new_tokens), budget, progress)
    write_json(out, result.as_dict())
    return result


def transcript_markdown(inv: dict, max_chars: int = 1500) -> str:
    """A saved investigation (``Investigation.as_dict()``) as markdown, for people to read."""
    used, budget = inv["used"], inv["budget"]
    lines = [f"**{'Black-box agent' if inv['black_box'] else 'Agent'}**: status `{inv['status']}`; spent "
             + ", ".join(f"{used[k]} of {budget[k]} {k.replace('_', ' ')}" for k in budget), ""]
    for m in inv["transcript"]:
        text = (m.get("content") or "").strip()
        text = text if len(text) <= max_chars else text[:max_chars] + " [...]"
        if m["role"] == "tool" or m.get("tool"):
            lines.append(f"*tool `{m.get('tool')}`*:\n```\n{text}\n```")
        else:
            calls = "; ".join(f"`{c['function']['name']}({c['function']['arguments']})`"
                              for c in m.get("tool_calls", []))
            lines.append(f"*{m['role']}*: {text}" + (f" -> {calls}" if calls else ""))
        lines.append("")
    lines.append(f"**Short**: {inv['short'] or '-'}\n\n**Long**: {inv['long'] or '-'}")
    return "\n".join(lines)
