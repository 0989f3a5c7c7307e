"""The demo translator: a tiny MarianMT model laid out like Helsinki-NLP/opus-mt-zh-en (the
translator Danqing suggests for English-only models): ``config.json``, the weights, two
SentencePiece models (``source.spm`` for Chinese, ``target.spm`` for English) and the shared
``vocab.json``, trained here on a few phrases so everything is offline. Its weights are random:
its "English" is made of real English pieces in a random order, enough to see that the text the
encoder gets is the translator's output."""

from __future__ import annotations

import io
import json
from pathlib import Path

DEMO_TRANSLATOR = "danqing-demo-opus-mt-zh-en"

_PHRASES = json.loads((Path(__file__).with_name("phrases.json")).read_text(encoding="utf-8"))
_ZH, _EN = _PHRASES["zh"], _PHRASES["en"]


def _spm(sentences: list[str], vocab_size: int) -> bytes:
    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(sentences * 20), model_writer=model, vocab_size=vocab_size,
                                   character_coverage=1.0, model_type="unigram", hard_vocab_limit=False,
                                   minloglevel=2)
    return model.getvalue()


def save_demo_translator(folder: Path, seed: int = 41) -> Path:
    import torch
    import sentencepiece as spm
    from transformers import MarianConfig, MarianMTModel, MarianTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "source.spm").write_bytes(_spm(_ZH, 120))
    (folder / "target.spm").write_bytes(_spm(_EN, 120))
    vocab = {"</s>": 0, "<unk>": 1, "<pad>": 2}
    for name in ("source.spm", "target.spm"):
        processor = spm.SentencePieceProcessor(model_file=str(folder / name))
        for i in range(processor.get_piece_size()):
            vocab.setdefault(processor.id_to_piece(i), len(vocab))
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    tokenizer = MarianTokenizer(str(folder / "source.spm"), str(folder / "target.spm"), str(folder / "vocab.json"),
                                source_lang="zh", target_lang="en")
    tokenizer.save_pretrained(folder)
    torch.manual_seed(seed)
    config = MarianConfig(vocab_size=len(vocab), d_model=32, encoder_layers=2, decoder_layers=2,
                          encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64,
                          max_position_embeddings=128, pad_token_id=vocab["<pad>"], eos_token_id=vocab["</s>"],
                          decoder_start_token_id=vocab["<pad>"], forced_eos_token_id=vocab["</s>"])
    model = MarianMTModel(config)
    model.generation_config.max_length = 12  # a random model rambles: keep its "English" short
    model.generation_config.num_beams = 1
    # Only English pieces come out (the vocabulary is shared, as opus-mt's is).
    chinese = [[i] for piece, i in vocab.items() if any(0x4E00 <= ord(c) <= 0x9FFF for c in piece)]
    model.generation_config.bad_words_ids = [[vocab["<pad>"]], *chinese]
    model.save_pretrained(folder, safe_serialization=True)
    return folder
