"""Build a tiny random-weight Llama with its own tokenizer, so real vLLM can run without a download.

How it works: a byte-level BPE tokenizer is trained offline (``tokenizers``) on text generated here
from a seeded word list, given Llama-3-style special tokens and chat template, and saved as a
Hugging Face tokenizer; a ``LlamaForCausalLM`` is built from a small config with a seeded torch
generator and saved as safetensors beside it. The weights are random, so the model's output is
noise, but vLLM treats it as any Llama: same scheduler, KV cache, metrics and wire format. The same
seed gives the same files, so runs are comparable.

Runs in the vLLM venv (it needs torch, transformers and tokenizers), as a module or a script:
``.vllm-venv/bin/python tests/vllm_support/build_tiny_model.py OUT_DIR``. The heavy imports sit
inside the functions, so the constants here can be imported from the project's own venv.
"""

from __future__ import annotations

import argparse
import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

BOS = "<|begin_of_text|>"
EOS = "<|end_of_text|>"
START_HEADER = "<|start_header_id|>"
END_HEADER = "<|end_header_id|>"
EOT = "<|eot_id|>"
SPECIAL_TOKENS = [BOS, EOS, START_HEADER, END_HEADER, EOT]

# Llama-3's layout: a header per message, each message closed by <|eot_id|>.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}"
    "{{ message['content'] | trim }}{{ '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{% endif %}"
)

_WORD_TEXT = (
    "the a an of to and in is that for it on with as was at by be this are from or have not "
    "server request token queue model cache prefix block batch decode prefill latency throughput "
    "fleet router policy weight priority deadline budget step engine memory prompt output user "
    "assistant system hello world answer question please thanks time first last next number "
    "fast slow small large short long many few every some each other same new old good bad "
    "run wait send read write start stop drop keep hold move count measure check retry fail"
)
_WORDS = _WORD_TEXT.split()
_PUNCT = [".", ",", "?", "!", ":", ";"]


@dataclass(frozen=True)
class TinyModelSpec:
    """Shape of the model; with these defaults a server starts in ~45 s and takes ~1.5 GiB."""

    hidden_size: int = 256
    intermediate_size: int = 512
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    vocab_size: int = 2048
    max_position_embeddings: int = 4096
    seed: int = 1234


def training_corpus(seed: int, n_lines: int = 4000) -> list[str]:
    """Deterministic English-like lines with digits and code-ish bits, so merges look natural."""
    rng = random.Random(seed)
    lines = []
    for i in range(n_lines):
        words = [rng.choice(_WORDS) for _ in range(rng.randint(4, 16))]
        words[0] = words[0].capitalize()
        line = " ".join(words) + rng.choice(_PUNCT)
        if i % 7 == 0:
            line += f" {rng.randint(0, 99999)} items in {rng.random():.3f} s"
        if i % 11 == 0:
            line = f"def f_{i}(x): return x * {rng.randint(1, 9)}  # {line}"
        lines.append(line)
    return lines


def build_tokenizer(spec: TinyModelSpec):  # -> tokenizers.Tokenizer
    """Train a byte-level BPE: every byte is in the alphabet, so any text encodes."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=spec.vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(training_corpus(spec.seed), trainer)
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(
                single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
            ),
        ]
    )
    return tok


def _save_tokenizer(tok, spec: TinyModelSpec, out: Path) -> None:
    from transformers import PreTrainedTokenizerFast

    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOT,
        pad_token=EOS,
        model_max_length=spec.max_position_embeddings,
    )
    hf_tok.chat_template = CHAT_TEMPLATE
    hf_tok.save_pretrained(out)


def _save_model(tok, spec: TinyModelSpec, out: Path) -> None:
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=tok.get_vocab_size(),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_hidden_layers,
        num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_key_value_heads,
        max_position_embeddings=spec.max_position_embeddings,
        bos_token_id=tok.token_to_id(BOS),
        eos_token_id=[tok.token_to_id(EOS), tok.token_to_id(EOT)],
        pad_token_id=tok.token_to_id(EOS),
        tie_word_embeddings=False,
        torch_dtype="float32",
    )
    torch.manual_seed(spec.seed)
    model = LlamaForCausalLM(config).to(torch.float32).eval()
    model.save_pretrained(out, safe_serialization=True)
    GenerationConfig(
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
    ).save_pretrained(out)


def build_tiny_model(out_dir: str | Path, spec: TinyModelSpec | None = None) -> Path:
    """Write config.json, model.safetensors and tokenizer files into ``out_dir``; return it."""
    spec = spec or TinyModelSpec()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(spec)
    _save_tokenizer(tok, spec, out)
    _save_model(tok, spec, out)
    (out / "tiny_model_spec.json").write_text(json.dumps(asdict(spec), indent=2) + "\n")
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", help="directory to write the model into")
    parser.add_argument("--seed", type=int, default=TinyModelSpec.seed)
    parser.add_argument("--vocab-size", type=int, default=TinyModelSpec.vocab_size)
    args = parser.parse_args(argv)
    spec = TinyModelSpec(seed=args.seed, vocab_size=args.vocab_size)
    print(build_tiny_model(args.out_dir, spec))


if __name__ == "__main__":
    main()
