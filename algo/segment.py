"""Step segmentation on token ids.

A reasoning step ends at the token whose text *completes* a delimiter (default "\\n"). Boundaries are
found on token ids and per-token texts, never by decoding and re-tokenizing, so the spans index
exactly the tokens the policy sampled. With byte-level BPE a delimiter can merge with its neighbours
(".\\n\\n" or "\\n\\n" is one token); mapping each token to its byte range in the concatenated text
handles that.

Everything works on **bytes**: per-token texts may be given as `str` (UTF-8 encoded here) or `bytes`.
Byte-level BPE tokens can hold part of a multi-byte UTF-8 character; decoding a single token to `str`
would turn that into U+FFFD and shift offsets, so pass raw bytes for such tokenizers
(`byte_level_token_bytes` turns a byte-level vocabulary into them). Special tokens (eos, padding)
should map to b"" so they join the step before them.

Edge cases (all defined, all tested):
- empty response -> [];  no delimiter -> one span over the whole response;
- trailing delimiter -> no empty extra step;
- consecutive delimiters ("\\n\\n" with delimiter "\\n", or two "\\n" tokens) -> a span holding nothing
  but delimiters and whitespace joins the step before it (or, at the very start, the step after it);
- response truncated mid-step -> the partial last step is a step;
- a token that completes two delimiters ends one step;
- a token holding a delimiter followed by more text (e.g. "\\nThe") ends the step, and its tail stays
  in that step (token granularity: a step boundary can only fall between tokens).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

TokenText = Callable[[int], str | bytes] | Sequence[str] | Sequence[bytes]

_WHITESPACE = b" \t\r\n\x0b\x0c"


def _lookup(token_text: TokenText) -> Callable[[int], bytes]:
    """Normalise the three accepted forms of `token_text` into id -> bytes."""

    def as_bytes(tok_id: int, text: str | bytes) -> bytes:
        if isinstance(text, bytes):
            return text
        if isinstance(text, str):
            return text.encode("utf-8")
        raise TypeError(f"token_text for id {tok_id} is {type(text).__name__}, expected str or bytes")

    if callable(token_text):
        return lambda i: as_bytes(i, token_text(i))

    def from_table(i: int) -> bytes:
        if not 0 <= i < len(token_text):
            raise ValueError(f"token id {i} is outside the token_text table (size {len(token_text)})")
        return as_bytes(i, token_text[i])

    return from_table


def _delimiter_end_tokens(texts: list[bytes], delim: bytes) -> list[int]:
    """Indices of the tokens that complete a delimiter occurrence (sorted, unique)."""
    joined = b"".join(texts)
    owner = []  # owner[byte offset] = index of the token holding that byte
    for i, t in enumerate(texts):
        owner.extend([i] * len(t))
    ends: list[int] = []
    pos = joined.find(delim)
    while pos != -1:
        tok = owner[pos + len(delim) - 1]
        if not ends or ends[-1] != tok:  # one token completing two delimiters ends one step
            ends.append(tok)
        pos = joined.find(delim, pos + len(delim))
    return ends


def _content_free(texts: list[bytes], start: int, end: int, delim: bytes) -> bool:
    """True when tokens [start, end) hold only delimiters and whitespace (nothing to reason about)."""
    chunk = b"".join(texts[start:end]).replace(delim, b"")
    return chunk.strip(_WHITESPACE) == b""


def split_steps(response_ids: Sequence[int], token_text: TokenText, delimiter: str = "\n") -> list[tuple[int, int]]:
    """Cut a response into steps: contiguous, non-empty [start, end) token ranges covering it.

    `token_text` is a per-id table (list of str or bytes, built once from the tokenizer) or a
    callable id -> str | bytes. See the module docstring for the edge cases.
    """
    if not delimiter:
        raise ValueError("delimiter must be a non-empty string")
    n = len(response_ids)
    if n == 0:
        return []
    lookup = _lookup(token_text)
    texts = [lookup(int(i)) for i in response_ids]
    delim = delimiter.encode("utf-8")

    cuts = [e + 1 for e in _delimiter_end_tokens(texts, delim)]
    if not cuts or cuts[-1] != n:
        cuts.append(n)  # partial last step (truncated, or no trailing delimiter)
    raw = list(zip([0] + cuts[:-1], cuts, strict=True))

    spans: list[tuple[int, int]] = []
    pending_start: int | None = None  # content-free spans before the first real step
    for start, end in raw:
        if _content_free(texts, start, end, delim):
            if spans:
                spans[-1] = (spans[-1][0], end)
            elif pending_start is None:
                pending_start = start
            continue
        if pending_start is not None:
            start, pending_start = pending_start, None
        spans.append((start, end))
    if not spans:  # the whole response is delimiters / whitespace: still one step
        spans.append((0, n))
    return spans


def _byte_level_alphabet() -> dict[str, int]:
    """The GPT-2 byte-level alphabet: printable char -> byte value.

    Byte-level BPE writes each byte as a printable character: the printable Latin-1 bytes stand for
    themselves and the rest (controls, space, ...) are shifted to 256 + n in byte order.
    """
    printable = set(range(ord("!"), ord("~") + 1)) | set(range(0xA1, 0xAD)) | set(range(0xAE, 0x100))
    table: dict[str, int] = {}
    shifted = 0
    for b in range(256):
        if b in printable:
            table[chr(b)] = b
        else:
            table[chr(256 + shifted)] = b
            shifted += 1
    return table


def byte_level_token_bytes(id_to_token: Sequence[str], special_ids: Iterable[int] = ()) -> list[bytes]:
    """Raw bytes of every token of a byte-level BPE vocabulary (GPT-2 / Qwen / Llama-3 style).

    `id_to_token[i]` is the vocabulary string of id i (e.g. `tokenizer.convert_ids_to_tokens`);
    ids in `special_ids` map to b"" so eos / padding join the step before them.
    A token whose string is not in the byte alphabet (an added token) is UTF-8 encoded as is.
    """
    alphabet = _byte_level_alphabet()
    specials = set(special_ids)
    out = []
    for i, tok in enumerate(id_to_token):
        if i in specials:
            out.append(b"")
        elif all(ch in alphabet for ch in tok):
            out.append(bytes(alphabet[ch] for ch in tok))
        else:
            out.append(tok.encode("utf-8"))
    return out
