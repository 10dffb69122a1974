"""A tiny Llama-style model and its tokenizer, built locally and saved like a real one.

No weights can be downloaded, so the tests and the benchmark build this model themselves
(a byte-level BPE tokenizer trained on a few hundred made-up lines, a randomly initialised
two-layer Llama with a fixed seed) and load it through the same ``model_path`` code path a
real model directory takes.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

# A chat template in the style of the common ones: system first, then each turn, then the
# assistant's header when a generation prompt is asked for. Tools are listed when given.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% if tools %}<tools>{% for tool in tools %}{{ tool | tojson }}{% endfor %}</tools>\n"
    "{% endif %}"
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}</s>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

_TEXT = (
    "the a of and to in is that for it as was with be by on not this are or from at which "
    "but have an they you were her his one all we can there been if more when will would "
    "who so no time up out about into than them only some could new other then two first "
    "model batch token prompt engine request result cache prefix system user assistant"
)
_WORDS = _TEXT.split()


def _corpus(lines: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(_WORDS) for _ in range(rng.randint(4, 16))) for _ in range(lines)]


def _tokenizer(seed: int) -> Any:
    """A byte-level BPE tokenizer trained on the made-up corpus."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=["<unk>", "<s>", "</s>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    bpe.train_from_iterator(_corpus(400, seed), trainer=trainer)
    fast: Any = PreTrainedTokenizerFast  # an untyped constructor
    tokenizer = fast(
        tokenizer_object=bpe,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
    )
    return tokenizer


def build_tiny_model(directory: Path, *, seed: int = 0) -> Path:
    """Train the tokenizer, build the model, save both to ``directory``; return it."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = _tokenizer(seed)
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(directory)

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(directory)
    return directory


def build_tiny_embedding_model(
    directory: Path, *, pooling: str = "mean", seed: int = 0, max_length: int = 512
) -> Path:
    """A tiny BERT encoder saved as a sentence-transformers directory (``modules.json`` and
    ``1_Pooling/config.json`` naming ``pooling``: cls, mean, max or lasttoken)."""
    import json

    import torch
    from transformers import BertConfig, BertModel

    tokenizer = _tokenizer(seed)
    tokenizer.save_pretrained(directory)
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=max_length,
        pad_token_id=tokenizer.pad_token_id,
    )
    BertModel(config).save_pretrained(directory)
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {
            "idx": 1,
            "name": "1",
            "path": "1_Pooling",
            "type": "sentence_transformers.models.Pooling",
        },
    ]
    (directory / "modules.json").write_text(json.dumps(modules))
    (directory / "1_Pooling").mkdir(exist_ok=True)
    modes = ("cls_token", "mean_tokens", "max_tokens", "lasttoken")
    names = {"cls": "cls_token", "mean": "mean_tokens", "max": "max_tokens"}
    chosen = names.get(pooling, pooling)
    pooling_config = {"word_embedding_dimension": 64}
    pooling_config |= {f"pooling_mode_{mode}": mode == chosen for mode in modes}
    (directory / "1_Pooling" / "config.json").write_text(json.dumps(pooling_config))
    return directory
