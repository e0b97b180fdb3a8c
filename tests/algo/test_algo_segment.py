"""Step segmentation: a character tokenizer for every edge case, and a real byte-level BPE."""

import random

import pytest

from algo.segment import byte_level_token_bytes, split_steps


def char_ids(text, vocab):
    """A character tokenizer: one id per character, growing the vocab as needed."""
    ids = []
    for ch in text:
        if ch not in vocab:
            vocab.append(ch)
        ids.append(vocab.index(ch))
    return ids


def texts_of(spans, tokens):
    return ["".join(tokens[s:e]) for s, e in spans]


# ------------------------------------------------------------------ character tokenizer edge cases


def test_empty_response_has_no_steps():
    assert split_steps([], ["a", "\n"]) == []


def test_no_delimiter_is_one_step():
    vocab = []
    ids = char_ids("abc", vocab)
    assert split_steps(ids, vocab) == [(0, 3)]


def test_two_steps_with_trailing_delimiter_no_empty_extra_step():
    vocab = []
    ids = char_ids("ab\ncd\n", vocab)
    # "ab\n" = tokens 0..2, "cd\n" = tokens 3..5; nothing after the last "\n"
    assert split_steps(ids, vocab) == [(0, 3), (3, 6)]


def test_truncated_mid_step_keeps_partial_last_step():
    vocab = []
    ids = char_ids("ab\ncd", vocab)
    assert split_steps(ids, vocab) == [(0, 3), (3, 5)]


def test_two_delimiter_tokens_in_a_row_join_the_step_before():
    vocab = []
    ids = char_ids("ab\n\ncd", vocab)
    # raw cuts after token 2 and token 3 would give a step "\n" alone; it joins "ab\n"
    spans = split_steps(ids, vocab)
    assert spans == [(0, 4), (4, 6)]
    assert texts_of(spans, [vocab[i] for i in ids]) == ["ab\n\n", "cd"]


def test_token_completing_two_delimiters_ends_one_step():
    tokens = ["ab", "\n\n", "cd"]  # table: id i -> tokens[i]
    assert split_steps([0, 1, 2], tokens) == [(0, 2), (2, 3)]


def test_whitespace_between_delimiters_is_not_a_step():
    tokens = ["a\n", " \n", "b"]
    assert split_steps([0, 1, 2], tokens) == [(0, 2), (2, 3)]


def test_leading_delimiter_joins_the_first_step():
    vocab = []
    ids = char_ids("\nab\ncd", vocab)
    assert split_steps(ids, vocab) == [(0, 4), (4, 6)]


def test_response_of_only_delimiters_is_one_step():
    vocab = []
    ids = char_ids("\n\n\n", vocab)
    assert split_steps(ids, vocab) == [(0, 3)]


def test_multichar_delimiter_split_across_tokens():
    tokens = ["a", "\n", "\n", "b", "\n", "c"]
    # delimiter "\n\n" is completed by token 2; the single "\n" at token 4 is not a delimiter
    assert split_steps(range(6), tokens, delimiter="\n\n") == [(0, 3), (3, 6)]


def test_delimiter_followed_by_text_in_one_token_ends_the_step_there():
    tokens = ["a", ".\nThe", " end"]
    assert split_steps([0, 1, 2], tokens) == [(0, 2), (2, 3)]


def test_callable_and_bytes_with_partial_utf8():
    # "→" is e2 86 92: split over two tokens, the second also carrying the delimiter
    table = {0: b"x \xe2\x86", 1: b"\x92\n", 2: b"y"}
    spans = split_steps([0, 1, 2], table.__getitem__)
    assert spans == [(0, 2), (2, 3)]
    assert b"".join(table[i] for i in (0, 1)).decode("utf-8") == "x →\n"


def test_special_token_with_empty_text_joins_last_step():
    tokens = ["a", "\n", "b", ""]  # id 3 plays eos, mapped to ""
    assert split_steps([0, 1, 2, 3], tokens) == [(0, 2), (2, 4)]


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="token id 7"):
        split_steps([0, 7], ["a", "b"])
    with pytest.raises(ValueError, match="delimiter"):
        split_steps([0], ["a"], delimiter="")
    with pytest.raises(TypeError, match="id 0"):
        split_steps([0], lambda i: 3)


def test_random_responses_give_valid_spans():
    # invariants on random token strings: contiguous, covering, non-empty; every step but the last
    # ends on a token holding "\n"; each step has content unless it is the only one
    rng = random.Random(0)
    tokens = ["a", "b", "\n", "\n\n", ".\n", " ", "c.\n\n", ""]
    for _ in range(300):
        ids = [rng.randrange(len(tokens)) for _ in range(rng.randrange(0, 15))]
        spans = split_steps(ids, tokens)
        if not ids:
            assert spans == []
            continue
        assert spans[0][0] == 0 and spans[-1][1] == len(ids)
        assert all(s < e for s, e in spans)
        assert all(spans[i][1] == spans[i + 1][0] for i in range(len(spans) - 1))
        for s, e in spans[:-1]:
            assert "\n" in "".join(tokens[i] for i in ids[s:e])
        if len(spans) > 1:
            for s, e in spans:
                assert "".join(tokens[i] for i in ids[s:e]).strip() != ""


# ------------------------------------------------------------------ a real byte-level BPE

# Qwen2 / Llama-3 style split: punctuation keeps its trailing newlines, so ".\n\n" is one pre-token
# and BPE can merge it into one token.
PRETOKEN_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def corpus():
    rng = random.Random(1)
    docs = []
    for _ in range(300):
        a, b = rng.randrange(10), rng.randrange(10)
        docs.append(
            f"Step 1: {a} + {b} = {a + b}.\n\nStep 2: {a + b} * 2 = {2 * (a + b)}.\n\n"
            f"The answer is {2 * (a + b)}.\nCheck → done.\n"
        )
    return docs


@pytest.fixture(scope="module")
def bpe():
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKEN_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=["<|endoftext|>"],
        show_progress=False,
    )
    tok.train_from_iterator(corpus(), trainer)
    vocab = [tok.id_to_token(i) for i in range(tok.get_vocab_size())]
    eos = tok.token_to_id("<|endoftext|>")
    return tok, byte_level_token_bytes(vocab, special_ids=[eos]), eos


def test_bpe_token_bytes_concatenate_to_the_text(bpe):
    tok, table, _ = bpe
    text = "Step 1: 3 + 4 = 7.\n\nCheck ∑ → ok.\n"  # "∑" never seen: split into byte tokens
    ids = tok.encode(text).ids
    assert b"".join(table[i] for i in ids) == text.encode("utf-8")


def test_bpe_merged_delimiters_split_into_expected_steps(bpe):
    tok, table, eos = bpe
    steps = ["Step 1: 3 + 4 = 7.\n\n", "Step 2: 7 * 2 = 14.\n\n", "The answer is 14."]
    ids = tok.encode("".join(steps)).ids
    pieces = [table[i] for i in ids]
    # the premise: the delimiter merged with its neighbours (".\n\n" or "\n\n" is one token)
    assert any(b"\n" in p and p != b"\n" for p in pieces)
    for delimiter in ("\n", "\n\n"):
        spans = split_steps(ids, table, delimiter=delimiter)
        assert [tok.decode(ids[s:e]) for s, e in spans] == steps
    # eos (mapped to b"") joins the last step instead of making a step of its own
    spans = split_steps(ids + [eos], table)
    assert len(spans) == 3 and spans[-1][1] == len(ids) + 1


def test_bpe_multibyte_text_and_truncation(bpe):
    tok, table, _ = bpe
    steps = ["Check ∑ → done.\n", "Step 2: 5 * 2 = 1"]  # second step truncated mid-number
    ids = tok.encode("".join(steps)).ids
    spans = split_steps(ids, table)
    assert [tok.decode(ids[s:e]) for s, e in spans] == steps
