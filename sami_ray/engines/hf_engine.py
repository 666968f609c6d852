"""Plain transformers behind the engine protocol: the reference for vLLM's numbers and the fallback backend."""

from __future__ import annotations

import torch

from ..config import EngineOptions
from ..sami.loss import token_logprobs
from .base import Generation, SamplingSpec, encode_pair, encode_prompt, prompt_seeds

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class HFEngine:
    def __init__(self, model_path: str, options: EngineOptions | None = None, score_batch: int = 16):
        from transformers import AutoTokenizer

        o = options or EngineOptions()
        self.dtype = _DTYPES.get(o.dtype, torch.float32)
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.score_batch = score_batch
        self.version = 0
        self.model = self._load(model_path)

    def _load(self, path: str):
        from transformers import AutoModelForCausalLM

        self.model_path = str(path)
        return AutoModelForCausalLM.from_pretrained(path, dtype=self.dtype).to(self.device).eval()

    @torch.no_grad()
    def generate(self, prompts: list[str], spec: SamplingSpec, seeds: list[int] | None = None
                 ) -> list[list[Generation]]:
        eos = self.tokenizer.eos_token_id
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else eos
        out = []
        # One prompt at a time with its own seed: the same prompt and seed give the same answer in any batch.
        for prompt, seed in zip(prompts, prompt_seeds(spec, len(prompts), seeds), strict=True):
            # The prompt's ids as vLLM makes them from text (BOS first when the tokenizer adds one): the ids scored.
            ids = torch.tensor([encode_prompt(self.tokenizer, prompt)], device=self.device)
            torch.manual_seed(seed)
            sample = dict(do_sample=True, temperature=spec.temperature, top_p=spec.top_p) \
                if spec.temperature > 0 else dict(do_sample=False)
            gen = self.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=spec.max_tokens,
                                      num_return_sequences=spec.n, pad_token_id=pad,
                                      stop_strings=list(spec.stop) or None,
                                      tokenizer=self.tokenizer if spec.stop else None, **sample)
            outs = []
            for row in gen[:, ids.shape[1]:].tolist():
                ended = eos in row
                tokens = row[:row.index(eos)] if ended else row
                text = self.tokenizer.decode(tokens, skip_special_tokens=True)
                text, stopped = _cut_at_stop(text, spec.stop)
                outs.append(Generation(text, not (ended or stopped) and len(row) >= spec.max_tokens, len(tokens)))
            out.append(outs)
        return out

    @torch.no_grad()
    def score(self, prompts: list[str], responses: list[str]) -> list[list[float]]:
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        pairs = [encode_pair(self.tokenizer, p, r) for p, r in zip(prompts, responses, strict=True)]
        out: list[list[float]] = [[] for _ in pairs]
        todo = [i for i, (_, r) in enumerate(pairs) if r]
        for start in range(0, len(todo), self.score_batch):
            chunk = todo[start:start + self.score_batch]
            seqs = [pairs[i][0] + pairs[i][1] for i in chunk]
            width = max(map(len, seqs))
            ids = torch.zeros(len(seqs), width, dtype=torch.long)
            mask = torch.zeros(len(seqs), width, dtype=torch.long)
            for row, s in enumerate(seqs):
                ids[row, :len(s)] = torch.tensor(s)
                mask[row, :len(s)] = 1
            logits = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).logits
            lp = token_logprobs(logits[:, :-1].float(), ids[:, 1:].to(self.device)).cpu()
            for row, i in enumerate(chunk):
                p, r = pairs[i]
                out[i] = lp[row, len(p) - 1:len(p) + len(r) - 1].tolist()
        return out

    def load_weights(self, path: str) -> int:
        self.model = self._load(path)
        self.version += 1
        return self.version


def _cut_at_stop(text: str, stops: list[str]) -> tuple[str, bool]:
    cuts = [text.index(s) for s in stops if s in text]
    return (text[:min(cuts)], True) if cuts else (text, False)
