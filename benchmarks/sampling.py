"""What an audit's generation costs: prompts per call, the sampler, teacher-forced batches.

    python benchmarks/sampling.py [--base embedded:gemma3-270m] [--adapter organisms/persona_gemma3]
                                  [--prompts 64] [--new-tokens 24]

On the everyday probe prompts, the finetuned model of the pair:

* greedy answers, 16 against 32 prompts per ``generate`` call;
* sampled answers (temperature 0.7, 32 per call): transformers' own sampling
  (``do_sample=True``: ``torch.multinomial`` draws a random number for every vocabulary
  token) against finediff's :class:`~finediff.generation.Sample` (the same top-k, top-p and
  temperature, one draw among the kept tokens);
* both models teacher-forced on the greedy answers, 8 against 16 answers per batch;
* an answer scored (greedy answer, then the divergence over it): the answer then both models
  teacher-forced on it (``greedy_32_s + teacher_forced_8_s``), against the answer with the
  finetuned logits its generation kept and only the base teacher-forced
  (:func:`~finediff.divergent_dataset.answered`), with the largest difference in a text's divergence;
* the chat template's shared system turn run once per batch (:func:`~finediff.divergence.final_hidden`,
  :func:`~finediff.generation.shared_prefix_batch`) against every row run whole, in the same run:
  greedy and sampled answers (how many of them are the same) and teacher forcing (``--shared-prefix``).

Prints wall times as JSON. The larger the vocabulary, the more the sampler matters.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from finediff import names
from finediff.data import REPO_ROOT, format_text, pad_rows
from finediff.divergence import token_divergence
from finediff.divergent_dataset import answered, teacher_forced
from finediff.generation import generate
from finediff.io import read_jsonl
from finediff.models import load_model_pair


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return round(time.perf_counter() - t, 2)


def shared_prefix(pair, prompts: list[str], kw: dict) -> dict:
    """Each path with the shared prefix run once (``_shared``) and every row run whole (``_whole``)."""
    import finediff.divergence as divergence

    model, tok, out, runs = pair.finetuned, pair.tokenizer, {}, {}
    on = divergence.SHARED_PREFIX_MIN
    for name, fn in (("greedy", lambda: generate(model, tok, prompts, **kw)),
                     ("sampled", lambda: generate(model, tok, prompts, do_sample=True, temperature=0.7,
                                                  **{**kw, "seed": 0})),
                     ("teacher_forced", lambda: [token_divergence(a, b) for a, b in
                                                 teacher_forced(pair, prompts, [i for _, i in runs["greedy_whole"]], 16)])):
        for mode, minimum in (("whole", 10 ** 9), ("shared", on)):
            divergence.SHARED_PREFIX_MIN = minimum
            result = []
            out[f"{name}_{mode}_s"] = timed(lambda: result.extend(fn()))
            runs[f"{name}_{mode}"] = result
        divergence.SHARED_PREFIX_MIN = on
        out[f"{name}_speedup"] = round(out[f"{name}_whole_s"] / out[f"{name}_shared_s"], 2)
    for name in ("greedy", "sampled"):
        out[f"{name}_same_answers"] = sum(a[1] == b[1] for a, b in zip(runs[f"{name}_whole"], runs[f"{name}_shared"]))
    out["teacher_forced_max_divergence_difference"] = max(
        float((a - b).abs().max()) for a, b in zip(runs["teacher_forced_whole"], runs["teacher_forced_shared"]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", default="embedded:gemma3-270m")
    ap.add_argument("--adapter", default="organisms/persona_gemma3")
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=24)
    ap.add_argument("--shared-prefix", action="store_true", help="only the shared-prefix comparison")
    args = ap.parse_args()
    pair = load_model_pair(args.base, adapter=str(REPO_ROOT / args.adapter))
    model, tok = pair.finetuned, pair.tokenizer
    prompts = [row["text"] for _, row in read_jsonl(REPO_ROOT / names.PROBES_FILE)][: args.prompts]
    kw = dict(max_new_tokens=args.new_tokens, seed=None, return_ids=True, progress=False)
    generate(model, tok, prompts[:2], **kw)  # warm-up
    out = {"base": args.base, "vocabulary": model.get_input_embeddings().weight.shape[0], "prompts": len(prompts),
           "new_tokens": args.new_tokens, "threads": torch.get_num_threads()}
    if args.shared_prefix:
        print(json.dumps({**out, **shared_prefix(pair, prompts, kw)}, indent=2))
        return
    answers = []
    out["greedy_16_s"] = timed(lambda: generate(model, tok, prompts, batch_size=16, **kw))
    out["greedy_32_s"] = timed(lambda: answers.extend(generate(model, tok, prompts, batch_size=32, **kw)))

    def transformers_sampling():  # generate()'s batches, sampled by transformers itself
        for start in range(0, len(prompts), 32):
            ids, mask = pad_rows([format_text(tok, p) for p in prompts[start:start + 32]], tok.pad_token_id, left=True)
            model.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=0.7, top_p=1.0,
                           max_new_tokens=args.new_tokens, pad_token_id=tok.pad_token_id)

    torch.manual_seed(0)
    out["sampled_transformers_s"] = timed(transformers_sampling)
    out["sampled_finediff_s"] = timed(lambda: generate(model, tok, prompts, batch_size=32, do_sample=True,
                                                       temperature=0.7, **{**kw, "seed": 0}))
    ids = [i for _, i in answers]
    for size in (8, 16):
        out[f"teacher_forced_{size}_s"] = timed(lambda: [token_divergence(a, b) for a, b in
                                                         teacher_forced(pair, prompts, ids, size)])
    old = [float(token_divergence(a, b).mean()) for a, b in teacher_forced(pair, prompts, ids, 8)]
    new = []
    out["answered_s"] = timed(lambda: new.extend(float(token_divergence(lf, lb).mean())
                                                 for _, _, lf, lb in answered(pair, prompts, args.new_tokens)))
    out["answered_speedup"] = round((out["greedy_32_s"] + out["teacher_forced_8_s"]) / out["answered_s"], 2)
    out["answered_max_divergence_difference"] = max(abs(a - b) for a, b in zip(old, new))
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
