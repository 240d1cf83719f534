#!/usr/bin/env python3
"""The HF `tokenizers` library as the reference for grpo's byte-level BPE tokenizer.

Commands
  generate OUTDIR
      Builds a deterministic corpus (seeded) of varied lines, trains byte-level BPE tokenizers on
      it with the library in the pre-tokenizer styles of GPT-2, Llama-3, Qwen2 and DeepSeek-V3,
      adds one that exercises every Split behaviour, and writes for each the tokenizer.json and
      the library's ids of every corpus line. See "Layout" below.
  check OUTDIR
      Loads OUTDIR/ours/byte_tokenizer.json (written by grpo's byte_tokenizer_json in the C++
      test) with tokenizers.Tokenizer.from_file and transformers' PreTrainedTokenizerFast and
      checks that both encode every corpus line to the ids grpo wrote in OUTDIR/ours/byte_ids.jsonl
      and decode them back. Exit 0 on pass, 1 on fail.
  bench OUTDIR [--repeat N]
      Times the library on the corpus, single-threaded (RAYON_NUM_THREADS=1): encode_batch,
      encode_batch_fast and a loop of encode, first pass (cold cache) and best warm pass, in MB/s.

Layout of OUTDIR
  corpus.jsonl               one JSON string per line (newlines inside texts survive)
  manifest.json              {"corpus": "corpus.jsonl", "lines": N, "tokenizers": [
                                {"name", "file", "ids", "decode_cases", "roundtrip"}]}
  NAME/tokenizer.json        the library's tokenizer
  NAME/ids.jsonl             per corpus line {"ids": encode(x, add_special_tokens=False),
                                              "special": encode(x, add_special_tokens=True)}
  NAME/decode_cases.jsonl    {"ids": random ids, "text": decode(ids), "skip": decode(ids, True)}
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time

# RAYON_NUM_THREADS must be set before the library starts its thread pool (bench).
if len(sys.argv) > 1 and sys.argv[1] == "bench":
    os.environ["RAYON_NUM_THREADS"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")

from tokenizers import (  # noqa: E402
    AddedToken,
    Regex,
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)

SEED = 20240607
N_LINES = 12000
VOCAB_SIZE = 3000

LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                  r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")
DEEPSEEK_V3_PATTERNS = [
    r"\p{N}{1,3}",
    "[\u4e00-\u9fa5\u3040-\u309f\u30a0-\u30ff]+",
    r"[!\"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+"
    r"| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
]

# ----------------------------------------------------------------------------------------------
# Corpus
# ----------------------------------------------------------------------------------------------

WORDS = """the of and to in is was that for on with as by at from his her it an be this are which or
had not but have were one all their they been has would when there who more will if can no so what
about out up into than them some could time only other new these two may then do first any now like
over such make our well years where most through after even much back because good each those
people Mr life world very between state still being under both last never long day great own same
little man men while here might old high another year small number part government without place
world house thought water form case point system program question during work however school group
money fact every real again given night hand change early certain mother water example reason
quickly slowly brown fox jumps lazy dog Tokenizer BPE merges vocabulary byte-level don't it's I'm
we'll they're you've she'd John's DON'T IT'S WE'LL THEY'RE YOU'VE SHE'D naïve café résumé coöperate
façade Zürich São Paulo Ærø Ångström œuvre straße Øresund""".split()

CODE_SNIPPETS = [
    "def {f}(x, y=None):\n\tif y is None:\n\t\treturn x * {n}\n\treturn x + y  # add\n",
    "for (int i = 0; i < {n}; ++i) {{\n    sum += a[i] * b[i];\n}}\n",
    "class {F}:\n    def __init__(self):\n        self.value = {n}\n\n    def get(self):\n        return self.value\n",
    "#include <vector>\nstd::vector<int64_t> {f}(const std::string& s) {{\n  return {{}};\n}}\n",
    "if (x != nullptr && x->size() > {n}) {{ throw std::runtime_error(\"{f}: bad\"); }}",
    "SELECT id, name FROM users WHERE age >= {n} ORDER BY name DESC;",
    "\t\t\tconst {f} = async () => {{ await fetch('/api/v1/{f}?q={n}'); }};\n",
    "    x = [{n}, {n}, {n}]\n    y = {{'a': 1, \"b\": 2}}\n    print(f\"{{x!r}} {{y}}\")\n",
    "fn {f}(v: &[u32]) -> Option<u32> {{ v.iter().copied().max() }} // rust\n",
    "$ grep -rn \"{f}\" src/ | wc -l\n{n}\n",
    "    \n\t\n  \t  {f}();   \n",
]

CJK = ["我们今天去公园散步，天气非常好。", "机器学习是人工智能的一个分支。", "这个模型的参数量是多少？",
       "東京は日本の首都です。", "ひらがなとカタカナ、そして漢字。", "今日はいい天気ですね！",
       "안녕하세요, 만나서 반갑습니다.", "한국어 문장도 포함합니다.", "深度求索发布了新模型。",
       "第一章　はじめに", "（括弧）「引用」『二重』【注】"]
ARABIC = ["مرحبا بالعالم", "اللغة العربية جميلة جدا", "هذا نص تجريبي للاختبار", "١٢٣٤٥٦٧٨٩٠ أرقام عربية",
          "كَتَبَ الطَّالِبُ الدَّرْسَ"]
HINDI = ["नमस्ते दुनिया", "हिन्दी भाषा में वाक्य", "क्षत्रिय ज्ञान श्री", "यह एक परीक्षण है।", "०१२३४५६७८९"]
OTHER = ["Привет, мир! Как дела?", "Γειά σου Κόσμε", "שלום עולם", "สวัสดีชาวโลก", "Xin chào thế giới",
         "Türkçe: ığüşöç İĞÜŞÖÇ", "ქართული ენა", "Հայերեն", "ᠮᠣᠩᠭᠣᠯ\u180eᠪᠢᠴᠢᠭ", "Ελληνικά ΣΊΣΥΦΟΣ"]
EMOJI = ["😀", "🎉", "👍", "👍🏽", "👋🏿", "👨\u200d👩\u200d👧\u200d👦", "🏳️\u200d🌈", "🇺🇸", "🇯🇵", "1️⃣", "❤️",
         "🧑🏾\u200d💻", "👩🏻\u200d🔬", "🤷\u200d♀️", "☕", "✨", "🦀", "🐍", "\u2764\ufe0f\u200d\U0001f525"]
COMBINING = ["e\u0301", "a\u0308", "n\u0303", "o\u0302\u0323", "Z\u0351\u036b\u0343\u036a\u0302\u036b\u033d",
             "a\u0300\u0301\u0302\u0303\u0304", "\u0915\u094d\u0937", "\u0e01\u0e34\u0e4a"]
SPACES = [" ", "  ", "\t", "\n", "\r\n", "\u00a0", "\u3000", "\u2028", "\u0085", "\u180e", "\u2003", "\u200b",
          "\u202f", "\ufeff", "\x0b", "\x0c"]
SPECIALS = ["<|im_start|>", "<|im_end|>", "<think>", "</think>", "<|endoftext|>", "<|begin_of_text|>",
            "<|eot_id|>", "<|start_header_id|>", "<mask>", "[SW]", "<R>", "<LR>", "think", "<｜begin▁of▁sentence｜>",
            "<|im_start", "<think", "</think", "<<think>>", "<|end", "<|", "|>"]
TLDS = ["com", "org", "io", "de", "co.uk", "ai"]
CONTRACTIONS = ["'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S", "'T", "'RE", "'Ve", "'LL", "'D", "'ſ", "’s",
                "''s", "' s"]
# Code points of stable Unicode blocks (assigned before Unicode 14, so that PCRE2 and the library's
# Oniguruma agree on their classes): Latin, Greek, Cyrillic, Hebrew, Arabic, Devanagari, Thai, CJK,
# kana, Hangul, symbols, box drawing, math, a few astral (emoji, math alphanumerics).
BLOCKS = [(0x20, 0x7e), (0xa1, 0x24f), (0x370, 0x3ff), (0x400, 0x4ff), (0x5d0, 0x5ea), (0x621, 0x64a),
          (0x660, 0x669), (0x900, 0x97f), (0xe01, 0xe5b), (0x2000, 0x206f), (0x2190, 0x22ff), (0x2500, 0x257f),
          (0x3040, 0x30ff), (0x4e00, 0x9fa5), (0xac00, 0xd7a3), (0xff01, 0xff5e), (0x1d400, 0x1d7ff),
          (0x1f300, 0x1f64f), (0x0, 0x1f)]


def prose(r: random.Random) -> str:
    out = []
    for _ in range(r.randint(3, 40)):
        w = r.choice(WORDS)
        if r.random() < 0.08:
            w = w.capitalize()
        if r.random() < 0.06:
            w += r.choice(CONTRACTIONS)
        out.append(w)
        if r.random() < 0.1:
            out.append(r.choice([",", ".", ";", ":", "!", "?", " -", " —", "...", "\""]))
    text = " ".join(out)
    return text[0].upper() + text[1:] + r.choice([".", "!", "?", "", " "])


def code(r: random.Random) -> str:
    parts = []
    for _ in range(r.randint(1, 4)):
        s = r.choice(CODE_SNIPPETS)
        parts.append(s.format(f=r.choice(["foo", "bar_baz", "compute", "getValue", "x1"]),
                              F=r.choice(["Foo", "ModelConfig", "Node"]), n=r.randint(0, 10 ** r.randint(1, 9))))
    return "".join(parts)


def digits(r: random.Random) -> str:
    kind = r.randint(0, 4)
    if kind == 0:
        return "".join(r.choice("0123456789") for _ in range(r.randint(20, 400)))
    if kind == 1:
        return f"{r.uniform(-1e6, 1e6):.{r.randint(0, 12)}f} and {r.randint(0, 10**15)}"
    if kind == 2:
        return f"+1 ({r.randint(100, 999)}) {r.randint(100, 999)}-{r.randint(1000, 9999)}"
    if kind == 3:
        return " ".join(str(r.randint(0, 10 ** r.randint(1, 12))) for _ in range(r.randint(2, 20)))
    return "3.14159265358979323846264338327950288419716939937510" * r.randint(1, 5) + "e-10"


def url(r: random.Random) -> str:
    host = r.choice(["example", "huggingface", "github", "docs.python", "a-b-c"])
    path = "/".join(r.choice(["api", "v1", "models", "deepseek-ai", "DeepSeek-R1", "blob", "main", "%20x"])
                    for _ in range(r.randint(0, 5)))
    q = f"?q={r.randint(0, 999)}&lang=en#sec-{r.randint(1, 9)}" if r.random() < 0.5 else ""
    scheme = r.choice(["https://", "http://", "ftp://", "www.", ""])
    mail = f" mail me at user.{r.randint(0, 99)}@{host}.{r.choice(TLDS)}" if r.random() < 0.3 else ""
    return f"See {scheme}{host}.{r.choice(TLDS)}/{path}{q}{mail}"


def whitespace(r: random.Random) -> str:
    parts = []
    for _ in range(r.randint(2, 12)):
        if r.random() < 0.5:
            parts.append(r.choice(SPACES) * r.randint(1, 60))
        else:
            parts.append(r.choice(WORDS + CJK + ARABIC))
    text = "".join(parts)
    if r.random() < 0.5:
        text += " " * r.randint(1, 30)
    if r.random() < 0.3:
        text += "\n" * r.randint(1, 5)
    return text


def multilingual(r: random.Random) -> str:
    pools = [CJK, ARABIC, HINDI, OTHER, EMOJI, COMBINING]
    out = []
    for _ in range(r.randint(2, 15)):
        out.append(r.choice(r.choice(pools)))
        out.append(r.choice(["", " ", " ", "\n", ", "]))
    return "".join(out)


def emoji(r: random.Random) -> str:
    return "".join(r.choice(EMOJI) + r.choice(["", "", " ", "!"]) for _ in range(r.randint(1, 20)))


def specials(r: random.Random) -> str:
    out = []
    for _ in range(r.randint(2, 12)):
        k = r.random()
        if k < 0.4:
            out.append(r.choice(SPECIALS))
        elif k < 0.7:
            out.append(r.choice(WORDS))
        else:
            out.append(r.choice([" ", "  ", "\n", "user\n", "assistant\n", "a", "_", "x", "1", "é", "中"]))
        if r.random() < 0.3:
            out.append(r.choice([" ", "   ", "\t"]))
    return "".join(out)


def chat(r: random.Random) -> str:
    q = prose(r)
    return (f"<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\n{q}<|im_end|>\n"
            f"<|im_start|>assistant\n<think>\nLet me think. {prose(r)}\n</think>\n\nThe answer is "
            f"{r.randint(0, 10**6)}.<|im_end|>")


def random_chars(r: random.Random) -> str:
    out = []
    for _ in range(r.randint(1, 80)):
        lo, hi = r.choice(BLOCKS)
        out.append(chr(r.randint(lo, hi)))
    return "".join(out)


FUZZ_PIECES = ["a", "Z", "é", "中", "ſ", "1", "23", "٣", "'", "'s", "'LL", "’", "-", ".", ",", "_", "(", "<", ">", "|",
               " ", "  ", "\t", "\n", "\r", "\r\n", "\u00a0", "\u0085", "\u180e", "\u2028", "\u3000", "\u200d",
               "\u0301", "\U0001f44d", "\U0001f3fd", "\ufe0f", "\x00", "\x7f", "\\", "\"", "x" * 30, "7" * 9]


def fuzz(r: random.Random) -> str:
    """Short runs of the pieces where pre-tokenizers and added tokens disagree most easily."""
    pool = FUZZ_PIECES + SPECIALS
    return "".join(r.choice(pool) for _ in range(r.randint(1, 40)))


def long_line(r: random.Random) -> str:
    gens = [prose, code, digits, url, multilingual, emoji, specials, whitespace]
    return " ".join(r.choice(gens)(r) for _ in range(r.randint(20, 80)))


GENERATORS = [(prose, 30), (code, 12), (digits, 6), (url, 5), (whitespace, 8), (multilingual, 10), (emoji, 4),
              (specials, 8), (chat, 4), (random_chars, 8), (fuzz, 8), (long_line, 1)]


def make_corpus() -> list[str]:
    r = random.Random(SEED)
    gens = [g for g, w in GENERATORS for _ in range(w)]
    lines = ["", " ", "\n", "  \n\n  ", "a", "<|im_start|>", "<|im_start|><|im_end|>", "'s", " 's", "\U0001f600",
             "ſ's 'ſ 'K", "x" * 5000, " " * 3000, "\n" * 500, "9" * 2000, "\t" * 700 + "end"]
    while len(lines) < N_LINES:
        g = r.choice(gens)
        text = g(r)
        if r.random() < 0.15:  # mix two kinds in one line
            text += r.choice(["", " ", "\n"]) + r.choice(gens)(r)
        lines.append(text)
    return lines


# ----------------------------------------------------------------------------------------------
# Tokenizers
# ----------------------------------------------------------------------------------------------


def byte_level(use_regex: bool, add_prefix_space: bool = False):
    return pre_tokenizers.ByteLevel(add_prefix_space=add_prefix_space, use_regex=use_regex)


def train(lines, pre_tokenizer, special_tokens, added_tokens, post_processor=None) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizer
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, min_frequency=2, show_progress=False,
                                  special_tokens=special_tokens,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(lines, trainer)
    if added_tokens:
        tok.add_tokens(added_tokens)
    if post_processor is not None:
        tok.post_processor = post_processor
    return tok


def build_tokenizers(lines):
    """(name, tokenizer.json text, roundtrip) for each style."""
    out = []

    # GPT-2: ByteLevel with its own regex; merges rewritten in the legacy "a b" form.
    gpt2 = train(lines, byte_level(True), [AddedToken("<|endoftext|>", special=True, normalized=False)],
                 [AddedToken("<think>", special=False), AddedToken("</think>", special=False),
                  AddedToken("[SW]", single_word=True, special=False), AddedToken("think", special=False)],
                 processors.ByteLevel(trim_offsets=False))
    j = json.loads(gpt2.to_str())
    j["model"]["merges"] = [" ".join(m) if isinstance(m, list) else m for m in j["model"]["merges"]]
    out.append(("gpt2", json.dumps(j, ensure_ascii=False), True))

    # Llama-3: Split(pattern, Isolated) + ByteLevel(use_regex=False), ignore_merges, BOS template.
    llama3_specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                       "<|eot_id|>"]
    llama3 = train(lines, pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated", invert=False), byte_level(False)]),
        [AddedToken(t, special=True, normalized=False) for t in llama3_specials], [])
    bos = llama3.token_to_id("<|begin_of_text|>")
    llama3.post_processor = processors.Sequence([
        processors.ByteLevel(add_prefix_space=True, trim_offsets=False, use_regex=True),
        processors.TemplateProcessing(single="<|begin_of_text|> $A",
                                      pair="<|begin_of_text|> $A <|begin_of_text|> $B:1",
                                      special_tokens=[("<|begin_of_text|>", bos)])])
    # Frequent pre-tokens that the merges split, added to the vocabulary without merges: with
    # ignore_merges they become single tokens (Llama-3's vocabulary has such words too).
    counts = {}
    for line in lines[:3000]:
        for piece, _ in llama3.pre_tokenizer.pre_tokenize_str(line):
            counts[piece] = counts.get(piece, 0) + 1
    j = json.loads(llama3.to_str())
    vocab = j["model"]["vocab"]
    whole = [p for p, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if p not in vocab][:50]
    for k, piece in enumerate(whole):
        vocab[piece] = len(vocab)
    j["model"]["ignore_merges"] = True
    out.append(("llama3", json.dumps(j, ensure_ascii=False), True))

    # Qwen2: Split(Qwen2 pattern) + ByteLevel(use_regex=False); <think> as non-special added tokens.
    qwen2 = train(lines, pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated", invert=False), byte_level(False)]),
        [AddedToken(t, special=True, normalized=False) for t in ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]],
        [AddedToken("<think>", special=False, normalized=False), AddedToken("</think>", special=False,
                                                                          normalized=False)],
        processors.ByteLevel(trim_offsets=False))
    out.append(("qwen2", qwen2.to_str(), True))

    # Qwen2 as shipped: the same pre-tokenizer behind an NFC normalizer. Not lossless: decoding
    # gives the NFC form of lines with decomposed characters.
    qwen2_nfc = Tokenizer(models.BPE())
    qwen2_nfc.normalizer = normalizers.NFC()
    qwen2_nfc.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated", invert=False), byte_level(False)])
    qwen2_nfc.decoder = decoders.ByteLevel()
    qwen2_nfc.train_from_iterator(lines, trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE, min_frequency=2, show_progress=False,
        special_tokens=[AddedToken(t, special=True, normalized=False) for t in ["<|endoftext|>", "<|im_start|>"]],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    qwen2_nfc.add_tokens([AddedToken("caf\u00e9", special=False, normalized=True)])
    out.append(("qwen2_nfc", qwen2_nfc.to_str(), False))

    # DeepSeek-V3: three Splits (digits, CJK, the rest) + ByteLevel(use_regex=False).
    dsv3 = train(lines, pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(p), behavior="isolated", invert=False) for p in DEEPSEEK_V3_PATTERNS]
        + [byte_level(False)]),
        [AddedToken(t, special=True, normalized=False) for t in ["<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"]],
        [AddedToken("<think>", special=False), AddedToken("</think>", special=False)],
        processors.TemplateProcessing(single="<｜begin▁of▁sentence｜> $A",
                                      special_tokens=[("<｜begin▁of▁sentence｜>", 0)]))
    out.append(("deepseek_v3", dsv3.to_str(), True))

    # Every Split behaviour, invert, a String pattern, empty regex matches, add_prefix_space, added
    # tokens with lstrip/rstrip, and a template with a suffix, on GPT-2's model. Not lossless
    # (Removed, lstrip, rstrip), so no round trip.
    beh = Tokenizer.from_str(gpt2.to_str())
    beh.add_special_tokens([AddedToken("<mask>", lstrip=True, special=True, normalized=False)])
    beh.add_tokens([AddedToken("<R>", rstrip=True, special=False),
                    AddedToken("<LR>", lstrip=True, rstrip=True)])
    beh.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(", ", behavior="merged_with_next"),
        pre_tokenizers.Split(Regex(r"\p{P}"), behavior="merged_with_previous"),
        pre_tokenizers.Split(Regex(r"\p{N}"), behavior="contiguous"),
        pre_tokenizers.Split(Regex(r"\t+"), behavior="removed"),
        pre_tokenizers.Split(Regex(r"\p{L}+"), behavior="isolated", invert=True),
        pre_tokenizers.Split(Regex(r"[ab]*"), behavior="isolated"),
        pre_tokenizers.Split(Regex(r"\s"), behavior="removed", invert=True),
        byte_level(True, add_prefix_space=True)])
    beh.post_processor = processors.TemplateProcessing(single="$A <|endoftext|>",
                                                       special_tokens=[("<|endoftext|>", 0)])
    out.append(("split_behaviors", beh.to_str(), False))
    return out


def write_jsonl(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def generate(outdir: str) -> None:
    t0 = time.time()
    os.makedirs(outdir, exist_ok=True)
    lines = make_corpus()
    write_jsonl(os.path.join(outdir, "corpus.jsonl"), lines)
    manifest = {"corpus": "corpus.jsonl", "lines": len(lines), "tokenizers": []}
    r = random.Random(SEED + 1)
    for name, text, roundtrip in build_tokenizers(lines):
        folder = os.path.join(outdir, name)
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, "tokenizer.json")
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        tok = Tokenizer.from_file(path)  # the ids come from the file as written (ignore_merges etc.)
        plain = tok.encode_batch(lines, add_special_tokens=False)
        special = tok.encode_batch(lines, add_special_tokens=True)
        write_jsonl(os.path.join(folder, "ids.jsonl"),
                    [{"ids": a.ids, "special": b.ids} for a, b in zip(plain, special)])
        if roundtrip:
            bad = [i for i, (x, e) in enumerate(zip(lines, plain))
                   if tok.decode(e.ids, skip_special_tokens=False) != x]
            if bad:
                raise SystemExit(f"{name}: the library itself does not round-trip line {bad[0]}")
        if json.loads(text)["model"].get("ignore_merges"):
            j = json.loads(text)
            j["model"]["ignore_merges"] = False
            without = Tokenizer.from_str(json.dumps(j)).encode_batch(lines, add_special_tokens=False)
            changed = sum(a.ids != b.ids for a, b in zip(plain, without))
            print(f"{name}: ignore_merges changes the ids of {changed} lines")
        vocab = tok.get_vocab_size(with_added_tokens=True)
        cases = []
        for _ in range(400):
            ids = [r.randrange(vocab) for _ in range(r.randint(1, 24))]
            cases.append({"ids": ids, "text": tok.decode(ids, skip_special_tokens=False),
                          "skip": tok.decode(ids, skip_special_tokens=True)})
        for e in plain[:200]:
            cases.append({"ids": e.ids, "text": tok.decode(e.ids, skip_special_tokens=False),
                          "skip": tok.decode(e.ids, skip_special_tokens=True)})
        write_jsonl(os.path.join(folder, "decode_cases.jsonl"), cases)
        manifest["tokenizers"].append({"name": name, "file": f"{name}/tokenizer.json", "ids": f"{name}/ids.jsonl",
                                       "decode_cases": f"{name}/decode_cases.jsonl", "roundtrip": roundtrip,
                                       "vocab_size": vocab})
        print(f"{name}: vocab {vocab}, {sum(len(e.ids) for e in plain)} tokens")
    with open(os.path.join(outdir, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
    print(f"wrote {len(lines)} lines and {len(manifest['tokenizers'])} tokenizers to {outdir} "
          f"in {time.time() - t0:.1f}s")


def check(outdir: str) -> int:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    from transformers import PreTrainedTokenizerFast

    lines = read_jsonl(os.path.join(outdir, "corpus.jsonl"))
    ours_dir = os.path.join(outdir, "ours")
    path = os.path.join(ours_dir, "byte_tokenizer.json")
    ours = read_jsonl(os.path.join(ours_dir, "byte_ids.jsonl"))
    specials = json.load(open(os.path.join(ours_dir, "byte_specials.json")))
    if len(ours) != len(lines):
        print(f"FAIL: {len(ours)} id lists for {len(lines)} lines")
        return 1
    tok = Tokenizer.from_file(path)
    fast = PreTrainedTokenizerFast(tokenizer_file=path)
    failures = 0
    for i, (text, ids) in enumerate(zip(lines, ours)):
        theirs = tok.encode(text, add_special_tokens=False).ids
        theirs_fast = fast(text, add_special_tokens=False)["input_ids"]
        if theirs != ids or theirs_fast != ids:
            failures += 1
            if failures <= 5:
                print(f"FAIL line {i} {text[:200]!r}\n  ours       {ids[:60]}\n  tokenizers {theirs[:60]}\n"
                      f"  transformers {theirs_fast[:60]}")
        if tok.decode(ids, skip_special_tokens=False) != text:
            failures += 1
            if failures <= 5:
                print(f"FAIL decode line {i} {text[:200]!r}")
    for k, s in enumerate(specials):
        if tok.token_to_id(s) != 256 + k or fast.convert_tokens_to_ids(s) != 256 + k:
            failures += 1
            print(f"FAIL special token {s!r}: id {tok.token_to_id(s)}, expected {256 + k}")
    if tok.get_vocab_size(with_added_tokens=True) != 256 + len(specials):
        failures += 1
        print(f"FAIL vocab size {tok.get_vocab_size(with_added_tokens=True)}, expected {256 + len(specials)}")
    if failures:
        print(f"FAIL: {failures} mismatches")
        return 1
    print(f"ok: tokenizers and transformers encode {len(lines)} lines to the ids grpo wrote and decode them back")
    return 0


def bench(outdir: str, repeat: int) -> None:
    import tokenizers

    lines = read_jsonl(os.path.join(outdir, "corpus.jsonl"))
    nbytes = sum(len(x.encode("utf-8")) for x in lines)
    manifest = json.load(open(os.path.join(outdir, "manifest.json")))
    print(f"tokenizers {tokenizers.__version__}, RAYON_NUM_THREADS={os.environ.get('RAYON_NUM_THREADS')}, "
          f"{len(lines)} lines, {nbytes / 1e6:.2f} MB")

    def timed(fn):
        t = time.perf_counter()
        fn()
        return time.perf_counter() - t

    for entry in manifest["tokenizers"]:
        if entry["name"] == "split_behaviors":
            continue
        path = os.path.join(outdir, entry["file"])
        modes = {
            "encode_batch": lambda tok: tok.encode_batch(lines, add_special_tokens=False),
            "encode_batch_fast": lambda tok: tok.encode_batch_fast(lines, add_special_tokens=False),
            "encode loop": lambda tok: [tok.encode(x, add_special_tokens=False) for x in lines],
        }
        for mode, fn in modes.items():
            tok = Tokenizer.from_file(path)
            cold = timed(lambda: fn(tok))
            warm = min(timed(lambda: fn(tok)) for _ in range(repeat))
            print(f"{entry['name']:12s} {mode:18s} cold {nbytes / cold / 1e6:7.2f} MB/s   "
                  f"warm {nbytes / warm / 1e6:7.2f} MB/s")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("generate").add_argument("outdir")
    sub.add_parser("check").add_argument("outdir")
    b = sub.add_parser("bench")
    b.add_argument("outdir")
    b.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    if args.cmd == "generate":
        generate(args.outdir)
        return 0
    if args.cmd == "check":
        return check(args.outdir)
    bench(args.outdir, args.repeat)
    return 0


if __name__ == "__main__":
    sys.exit(main())
