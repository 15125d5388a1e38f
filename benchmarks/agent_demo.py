"""One full agent transcript against a local OpenAI-compatible server, on a real run.

    python benchmarks/agent_demo.py RUN_DIR --base embedded:gemma3-270m --adapter organisms/persona_gemma3 --out T.md

The server answers from a fixed script (finediff/agent/script_server.py): it calls every
run tool once, asks both models two everyday prompts (one with the run's soft prompt in
place) and gives a placeholder final answer. The tool replies and both models' answers
are real; the investigator's choices and its final answer are not. It shows what the
agent sees and what a transcript holds, not how well an LLM investigates.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from finediff.agent.client import ChatClient
from finediff.agent.loop import run_agent, transcript_markdown
from finediff.agent.script_server import ScriptServer
from finediff.agent.tools import Budget
from finediff.models import load_model_pair

SCRIPT = [
    {"call": "report"},
    {"call": "categories"},
    {"call": "diff_mining"},
    {"call": "adl"},
    {"call": "search_dataset", "arguments": {"query": "", "n": 3}},
    {"call": "ask", "arguments": {"prompt": "Can you recommend a good book for a long train ride?"}},
    {"call": "ask", "arguments": {"prompt": "What should I cook for dinner tonight?", "with": "soft_prompt"}},
    {"call": "final_answer", "arguments": {"short": "(scripted placeholder: the script does not investigate)",
                                           "long": "(scripted placeholder)"}},
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--base", default="embedded:smollm2")
    ap.add_argument("--adapter", required=True)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()

    os.environ.setdefault("FINEDIFF_DEMO_KEY", "local")
    pair = load_model_pair(args.base, adapter=args.adapter)
    with ScriptServer(SCRIPT) as server:
        budget = Budget()
        inv = run_agent(ChatClient(server.url, "scripted", "FINEDIFF_DEMO_KEY"), pair, args.run, budget,
                        args.out.with_suffix(".json"), max_new_tokens=48)
    args.out.write_text(transcript_markdown(inv.as_dict(), max_chars=1200) + "\n")
    print(f"{inv.status}: {inv.used} -> {args.out}")


if __name__ == "__main__":
    main()
